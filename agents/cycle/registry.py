"""Who is on the feeder: the agents that registered, their health and their transformers' limits.

An agent's callback URL is checked when it is new or changed, never at a heartbeat: it must not be
the grid agent's own host and port, nor plain HTTP beyond loopback while TLS is on, and
``GET {url}/health`` must answer ok within ``--probe-timeout-s``. An agent unheard of for
``--stale-after-s`` is unhealthy; for ``--forget-after-s``, forgotten with its metrics series (it
heartbeats anyway, so a host that comes back registers again).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from agents.common.errors import BadRequestError, CallbackUrlError
from agents.common.scenario import Scenario
from agents.common.settings import GridSettings
from agents.common.tls import PLAIN_HTTP_REFUSED, is_loopback, plain_http_beyond_loopback
from agents.cycle.peers import PeerCallError
from models.schemas import AgentRecord, AgentReport, AgentStatus, StartedFrom

logger = logging.getLogger(__name__)

#: Hosts that bind every interface: a grid agent bound to one is reached at any of this machine's names.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class Registry:
    """Registered agents by id, and the limits of every transformer they sit on.

    ``probe(url)`` checks that ``GET {url}/health`` answers ok (raising PeerCallError if not);
    ``on_forget(peers)`` drops the metrics series of forgotten agent ids and batch URLs;
    ``clock`` is the wall clock of registrations and heartbeats (tests move it).
    """

    def __init__(
        self,
        settings: GridSettings,
        scenario: Scenario,
        probe: Callable[[str], Awaitable[None]] | None = None,
        on_forget: Callable[[list[str]], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.scenario = scenario
        self.records: dict[str, AgentRecord] = {}
        self.probe = probe
        self.on_forget = on_forget
        self.clock = clock or now
        self._limits = {t.id: (t.rating_kw, t.reverse_limit_kw or t.rating_kw) for t in scenario.transformers}
        own = settings.host.lower()
        self._own_hosts = {own, socket.gethostname().lower()} if own in WILDCARD_HOSTS else {own}
        self._refused: set[str] = set()  # URLs refused and not accepted since, so a retry is not logged again
        self._afresh: set[str] = set()  # agents that said they joined the running feeder afresh, told once each
        #: The latest simulated time a registration or heartbeat reported, with its step length: the feeder's
        #: clock for a grid agent that has not stepped its agents yet (restarted, with agents still running).
        self.latest_reported: tuple[datetime, float] | None = None

    async def admit(self, reports: Iterable[tuple[str, AgentReport]]) -> list[AgentRecord]:
        """Register agents, or take their heartbeats, after checking each new or changed callback URL once.

        An agent hosted by a process that serves batches is checked at the process's batch URL, so a
        ``POST /registrations`` of a whole process costs one probe. Any refusal refuses the whole
        request with a CallbackUrlError (422) naming each URL and why; nothing is registered then.
        """
        reports = list(reports)
        for agent_id, report in reports:
            self._check_id(agent_id, report)
        urls = list(dict.fromkeys(url for agent_id, report in reports for url in self._urls_to_check(agent_id, report)))
        refusals = {url: reason for url in urls if (reason := self.refusal(url)) is not None}
        to_probe = [url for url in urls if url not in refusals]
        if to_probe:
            limit = asyncio.Semaphore(self.settings.max_concurrency)

            async def probed(url: str) -> str | None:
                async with limit:
                    return await self._probe_reason(url)

            for url, reason in zip(to_probe, await asyncio.gather(*(probed(url) for url in to_probe)), strict=True):
                if reason is not None:
                    refusals[url] = reason
        if refusals:
            told = logger.debug if refusals.keys() <= self._refused else logger.warning  # once, not every retry
            told("refused a registration: %s", "; ".join(f"{u}: {r}" for u, r in refusals.items()))
            if len(self._refused) > 1000:  # bounded, whatever callers send
                self._refused.clear()
            self._refused.update(refusals)
            raise CallbackUrlError(refusals, self.settings.agent_id)
        self._refused.difference_update(urls)
        return [self.register(agent_id, report) for agent_id, report in reports]

    def register(self, agent_id: str, report: AgentReport) -> AgentRecord:
        """Record an agent's registration or heartbeat (``admit`` checks its URL first)."""
        self._check_id(agent_id, report)
        known = self.records.get(agent_id)
        if known is None or not known.healthy or known.url != report.url:
            logger.info(
                "agent %s (%s) registered at %s on %s",
                agent_id,
                report.status.agent_type.value,
                report.url,
                report.status.transformer_id,
            )
        fields = {
            "agent_type": report.status.agent_type,
            "url": report.url.rstrip("/"),
            "batch_url": report.batch_url.rstrip("/") if report.batch_url else None,
            "transformer_id": report.status.transformer_id,
            "bus": report.status.bus,
            "healthy": True,
            "last_seen": self.clock(),
            "last_status": report.status,
        }
        self.note_start(agent_id, report.status)
        reported = report.status.timestamp
        if reported is not None:
            reported = reported.replace(tzinfo=None)  # the data's local clock, whatever offset a client sent
            if self.latest_reported is None or reported > self.latest_reported[0]:
                self.latest_reported = (reported, report.status.step_s)
        if known is None:
            self.records[agent_id] = known = AgentRecord(agent_id=agent_id, **fields)
        else:  # in place, so that a cycle in flight holding this record sees the heartbeat
            for name, value in fields.items():
                setattr(known, name, value)
        return known

    def note_start(self, agent_id: str, status: AgentStatus) -> None:
        """Warn once when an agent says it joined the running feeder afresh, its saved state lost.

        Such an agent first registers saying ``start`` (it has not heard the feeder's clock yet), so one
        that is restarted afresh again is told again.
        """
        if status.started_from is not StartedFrom.feeder:
            self._afresh.discard(agent_id)
        elif agent_id not in self._afresh:
            self._afresh.add(agent_id)
            # a batch answer leaves the note out (models.schemas.BATCH_STATUS_EXCLUDE); a registration carries it
            when = status.timestamp.isoformat() if status.timestamp is not None else "its first step"
            note = status.start_note or f"started afresh at the feeder's step {when} (its /status names what it lacked)"
            logger.warning("agent %s joined the running feeder afresh, not from saved state: %s", agent_id, note[:500])

    def agents(self) -> list[AgentRecord]:
        """Every registered agent; one unheard of for ``stale_after_s`` counts as unhealthy, for ``forget_after_s``
        is forgotten."""
        moment = self.clock()
        self._forget_older_than(moment, self.settings.forget_after_s)
        for record in self.records.values():
            if record.healthy and (moment - record.last_seen).total_seconds() > self.settings.stale_after_s:
                record.healthy = False
        return list(self.records.values())

    def limits(self, transformer_id: str) -> tuple[float, float]:
        """(rating_kw, reverse_limit_kw) of a transformer; unrated ones take the settings'."""
        if transformer_id in self._limits:
            return self._limits[transformer_id]
        rating = self.settings.transformer_rating_kw
        return rating, self.settings.reverse_limit_kw or rating

    def transformer_ids(self) -> list[str]:
        """The scenario's transformers, then any other that an agent names, in order of first mention."""
        ids = {t.id: None for t in self.scenario.transformers}
        ids.update({r.transformer_id: None for r in self.records.values()})
        return list(ids)

    def _forget_older_than(self, moment: datetime, age_s: float) -> None:
        gone = [r for r in self.records.values() if (moment - r.last_seen).total_seconds() > age_s]
        if not gone:
            return
        for record in gone:
            del self.records[record.agent_id]
            self._afresh.discard(record.agent_id)
            logger.info("forgot agent %s at %s: unheard of for over %g s", record.agent_id, record.url, age_s)
        if self.on_forget is not None:
            still_hosting = {r.batch_url for r in self.records.values()}
            batch_urls = {r.batch_url for r in gone if r.batch_url and r.batch_url not in still_hosting}
            self.on_forget([*(r.agent_id for r in gone), *sorted(batch_urls)])

    def _check_id(self, agent_id: str, report: AgentReport) -> None:
        if report.status.agent_id != agent_id:
            raise BadRequestError(
                f"status.agent_id {report.status.agent_id!r} does not match the path's {agent_id!r}",
                self.settings.agent_id,
            )

    def _urls_to_check(self, agent_id: str, report: AgentReport) -> list[str]:
        """The base URLs to check for this report: none when the agent's URLs are unchanged (a heartbeat)."""
        url = report.url.rstrip("/")
        batch_url = report.batch_url.rstrip("/") if report.batch_url else None
        known = self.records.get(agent_id)
        if known is not None and known.url == url and known.batch_url == batch_url:
            return []
        if batch_url is None:
            return [url]
        return [batch_url] if url == batch_url or url.startswith(batch_url + "/") else [batch_url, url]

    def refusal(self, url: str) -> str | None:
        """Why ``url`` cannot be a callback URL without calling it, or None."""
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            return "the port is not a number from 0 to 65535"
        host = (parts.hostname or "").lower()
        if not host:
            return "it names no host"
        if port == self.settings.port and (
            host in self._own_hosts
            or (is_loopback(host) and (is_loopback(self.settings.host) or self.settings.host in WILDCARD_HOSTS))
        ):
            return f"it is the grid agent's own address ({self.settings.host}:{self.settings.port})"
        if self.settings.tls_on and plain_http_beyond_loopback(url):
            return PLAIN_HTTP_REFUSED
        return None

    async def _probe_reason(self, url: str) -> str | None:
        """None when ``GET {url}/health`` answers ok in time, else why not."""
        if self.probe is None:
            return None
        try:
            await self.probe(url)
        except PeerCallError as exc:
            return f"GET {url}/health failed ({exc.kind}: {exc})"
        return None


def now() -> datetime:
    """Wall-clock time, timezone-aware (registrations and heartbeats are real time, not simulated)."""
    return datetime.now(UTC)
