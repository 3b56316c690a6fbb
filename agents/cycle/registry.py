"""Who is on the feeder: the agents that registered, their health and their transformers' limits."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from agents.common.errors import BadRequestError
from agents.common.scenario import Scenario
from agents.common.settings import GridSettings
from models.schemas import AgentRecord, AgentReport

logger = logging.getLogger(__name__)


class Registry:
    """Registered agents by id, and the limits of every transformer they sit on."""

    def __init__(self, settings: GridSettings, scenario: Scenario) -> None:
        self.settings = settings
        self.scenario = scenario
        self.records: dict[str, AgentRecord] = {}
        self._limits = {t.id: (t.rating_kw, t.reverse_limit_kw or t.rating_kw) for t in scenario.transformers}

    def register(self, agent_id: str, report: AgentReport) -> AgentRecord:
        """Record an agent's registration or heartbeat."""
        if report.status.agent_id != agent_id:
            raise BadRequestError(
                f"status.agent_id {report.status.agent_id!r} does not match the path's {agent_id!r}",
                self.settings.agent_id,
            )
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
            "last_seen": now(),
            "last_status": report.status,
        }
        if known is None:
            self.records[agent_id] = known = AgentRecord(agent_id=agent_id, **fields)
        else:  # in place, so that a cycle in flight holding this record sees the heartbeat
            for name, value in fields.items():
                setattr(known, name, value)
        return known

    def agents(self) -> list[AgentRecord]:
        """Every registered agent; one unheard of for ``stale_after_s`` counts as unhealthy."""
        moment = now()
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


def now() -> datetime:
    """Wall-clock time, timezone-aware (registrations and heartbeats are real time, not simulated)."""
    return datetime.now(timezone.utc)
