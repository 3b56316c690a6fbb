"""The grid agent's calls to other agents: stepping and commanding them, batched per hosting process."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from agents.common.auth import auth_headers
from agents.common.errors import PeerUnavailableError
from agents.common.metrics import GridMetrics
from agents.common.settings import GridSettings
from agents.cycle.peers import PeerCallError, PeerClient, probe_health
from models.schemas import AgentRecord, AgentStatus, BatchCurtailResult, BatchSimulateResult, CurtailResult


class AgentCalls:
    """Every call the grid agent makes to the agents it coordinates; failures become PeerUnavailableError."""

    def __init__(self, settings: GridSettings, metrics: GridMetrics) -> None:
        self._settings = settings
        self._agent_id = settings.agent_id
        self._metrics = metrics
        self.peers: PeerClient | None = None  # opened and closed with the grid agent's lifespan

    async def post(
        self, url: str, body: Any, addressee: str, retry: bool, headers: dict[str, str] | None = None
    ) -> bytes:
        """POST JSON and return the answer's bytes; any failure is a PeerUnavailableError naming ``addressee``.

        A call that is safe to repeat (``retry``: commands carry ids the agents apply once) and
        could not even connect is retried with back-off and jitter. A timeout is not retried, so
        a hung agent costs one timeout; /simulate is never retried, as it is not idempotent.
        """
        assert self.peers is not None, "the grid agent's client opens with its lifespan"
        attempts = 1 + (self._settings.curtail_retries if retry else 0)
        headers = {**auth_headers(), "X-Agent-Id": addressee, **(headers or {})}
        for attempt in range(attempts):
            try:
                return await self.peers.post(url, body, headers)
            except PeerCallError as exc:
                if exc.retryable and attempt + 1 < attempts:
                    await asyncio.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
                    continue
                self._metrics.peer_error(addressee, exc)
                raise PeerUnavailableError(addressee, str(exc), self._agent_id) from exc
        raise AssertionError("unreachable: the loop returns or raises")

    async def probe(self, url: str) -> None:
        """``GET {url}/health`` through the same client as the cycle's calls, within --probe-timeout-s;
        PeerCallError when it does not answer ok."""
        assert self.peers is not None, "the grid agent's client opens with its lifespan"
        await probe_health(self.peers, url, self._settings.probe_timeout_s)

    async def _simulate_one(self, record: AgentRecord, cycle_id: str) -> AgentStatus:
        answer = await self.post(
            f"{record.url}/simulate", None, record.agent_id, retry=False, headers={"X-Cycle-Id": cycle_id}
        )
        try:
            status = AgentStatus.model_validate_json(answer)
        except ValidationError as exc:
            self._metrics.peer_error(record.agent_id, exc)
            raise PeerUnavailableError(record.agent_id, _describe(exc), self._agent_id) from exc
        if status.agent_id != record.agent_id:
            raise PeerUnavailableError(record.agent_id, f"answered as {status.agent_id}", self._agent_id)
        return status

    async def _simulate_batch(
        self, batch_url: str, group: list[AgentRecord], cycle_id: str
    ) -> list[AgentStatus | Exception]:
        body = {"agent_ids": [r.agent_id for r in group]}
        headers = {"X-Cycle-Id": cycle_id}
        try:
            answer = BatchSimulateResult.model_validate_json(
                await self.post(f"{batch_url}/batch/simulate", body, batch_url, retry=False, headers=headers)
            )
        except (PeerUnavailableError, ValidationError) as exc:
            reason = exc.reason if isinstance(exc, PeerUnavailableError) else _describe(exc)
            return [PeerUnavailableError(r.agent_id, reason, self._agent_id) for r in group]
        by_id = {s.agent_id: s for s in answer.statuses}
        errors = {e.agent_id: e.error for e in answer.errors}
        return [
            by_id.get(r.agent_id)
            or PeerUnavailableError(r.agent_id, errors.get(r.agent_id, "missing from the batch answer"), self._agent_id)
            for r in group
        ]

    async def _per_process(
        self,
        items: list[Any],
        record_of: Callable[[Any], AgentRecord],
        one: Callable[[Any], Awaitable[Any]],
        many: Callable[[str, list[Any]], Awaitable[list[Any]]],
    ) -> list[Any]:
        """Serve every item, in parallel across agents: ``many`` once per hosting process (in chunks
        of BATCH_SIZE), ``one`` per item whose agent has no batch URL. Items for the same agent go
        in order, one after the other, so the last answer carries the agent's final status.
        Answers (or exceptions) come back in item order."""
        groups: dict[str, list[int]] = {}
        singles: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            record = record_of(item)
            if record.batch_url:
                groups.setdefault(record.batch_url, []).append(i)
            else:
                singles.setdefault(record.agent_id, []).append(i)

        async def in_order(indexes: list[int]) -> list[Any]:
            answers = []
            for i in indexes:
                try:
                    answers.append(await one(items[i]))
                except Exception as exc:
                    answers.append(exc)
            return answers

        calls: list[Callable[[], Awaitable[Any]]] = []
        slots: list[list[int]] = []
        for indexes in singles.values():
            calls.append(lambda c=indexes: in_order(c))
            slots.append(indexes)
        for batch_url, indexes in groups.items():
            for chunk in _chunks(indexes, BATCH_SIZE):
                calls.append(lambda u=batch_url, c=chunk: many(u, [items[i] for i in c]))
                slots.append(chunk)
        answers: list[Any] = [None] * len(items)
        for indexes, result in zip(slots, await self._fan_out(calls), strict=True):
            results = result if isinstance(result, list) else [result] * len(indexes)
            for i, answer in zip(indexes, results, strict=True):
                answers[i] = answer
        return answers

    async def step_all(self, records: list[AgentRecord], cycle_id: str) -> list[AgentStatus | Exception]:
        """/simulate every agent: one batch request per hosting process, single calls for the rest. ``cycle_id``
        (``X-Cycle-Id``, ``run:cycle``) keeps a late copy of a call given up on from stepping an agent again."""
        return await self._per_process(
            records,
            lambda r: r,
            lambda r: self._simulate_one(r, cycle_id),
            lambda url, group: self._simulate_batch(url, group, cycle_id),
        )

    async def _curtail_one(self, record: AgentRecord, body: dict) -> CurtailResult:
        answer = await self.post(f"{record.url}/curtail", body, record.agent_id, retry=True)
        try:
            return CurtailResult.model_validate_json(answer)
        except ValidationError as exc:
            raise PeerUnavailableError(record.agent_id, _describe(exc), self._agent_id) from exc

    async def _curtail_batch(
        self, batch_url: str, items: list[tuple[AgentRecord, dict]]
    ) -> list[CurtailResult | Exception]:
        body = {"commands": [{"agent_id": r.agent_id, "command": b} for r, b in items]}
        try:
            answer = BatchCurtailResult.model_validate_json(
                await self.post(f"{batch_url}/batch/curtail", body, batch_url, retry=True)
            )
        except (PeerUnavailableError, ValidationError) as exc:
            reason = exc.reason if isinstance(exc, PeerUnavailableError) else _describe(exc)
            return [PeerUnavailableError(r.agent_id, reason, self._agent_id) for r, _ in items]
        by_id = {result.command_id: result for result in answer.results}
        errors = {e.command_id: e.error for e in answer.errors}
        return [
            by_id.get(b["command_id"])
            or PeerUnavailableError(
                r.agent_id, errors.get(b["command_id"], "missing from the batch answer"), self._agent_id
            )
            for r, b in items
        ]

    async def curtail_all(self, addressed: list[tuple[AgentRecord, dict]]) -> list[CurtailResult | Exception]:
        """/curtail each (agent, command body): one batch request per hosting process, single calls for the rest."""
        return await self._per_process(
            addressed, lambda item: item[0], lambda item: self._curtail_one(*item), self._curtail_batch
        )

    async def _fan_out(self, calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
        semaphore = asyncio.Semaphore(self._settings.max_concurrency)

        async def bounded(call: Callable[[], Awaitable[Any]]) -> Any:
            async with semaphore:
                return await call()

        return await asyncio.gather(*(bounded(c) for c in calls), return_exceptions=True)


#: Agents per batch request: large enough to amortise a request, small enough to step in parallel.
BATCH_SIZE = 500


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _describe(exc: ValidationError) -> str:
    return f"answered with an invalid body ({exc.error_count()} errors)"
