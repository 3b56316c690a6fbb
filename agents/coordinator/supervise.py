"""Supervision of the coordinator's agent processes: one that dies is started again, with back-off, up to a limit.

A background thread looks at every child a few times a second. A child found dead is started
again after ``RestartPolicy.backoff_s`` (0.5 s, then doubling up to 8 s), with its restart command:
device hosts without ``--fresh`` (they resume from their committed SQLite state), the grid agent
with ``--resume-cycles`` (it counts on from its last cycle). After ``max_restarts`` restarts of
one child the supervisor gives up on it and says so; the coordinator decides what that means
(the grid agent: the run cannot go on; a device host: its agents stay unreachable).

Each death is kept as a ``Restart``: when it was seen, how the process ended, when it was started
again and when it answered ``/health`` again, so that the summary can say what a fault cost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

logger = logging.getLogger(__name__)

#: How often the supervisor looks at its children.
CHECK_EVERY_S = 0.2


class Supervised(Protocol):
    """What the supervisor needs of a child: a name, whether it runs, and its /health URL."""

    name: str
    agent_id: str

    def exit_code(self) -> int | None: ...

    @property
    def url(self) -> str: ...


@dataclass(frozen=True)
class RestartPolicy:
    """How often and how soon a dead child is started again."""

    max_restarts: int = 5
    first_backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def backoff_s(self, restart: int) -> float:
        """Wait before restart number ``restart`` (1 for the first): doubling from ``first_backoff_s``, capped."""
        return min(self.first_backoff_s * 2 ** (restart - 1), self.max_backoff_s)


@dataclass
class Restart:
    """One death of a child and its return; times are seconds since the supervisor started."""

    name: str
    agent_id: str
    exit_code: int | None
    died_s: float
    restarted_s: float | None = None
    healthy_s: float | None = None
    gave_up: bool = False

    @property
    def down_s(self) -> float | None:
        """From the death being seen to /health answering again (None while it has not)."""
        return None if self.healthy_s is None else self.healthy_s - self.died_s

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "agent_id": self.agent_id,
            "exit_code": self.exit_code,
            "died_s": round(self.died_s, 3),
            "restarted_s": None if self.restarted_s is None else round(self.restarted_s, 3),
            "healthy_s": None if self.healthy_s is None else round(self.healthy_s, 3),
            "down_s": None if self.down_s is None else round(self.down_s, 3),
            "gave_up": self.gave_up,
        }


@dataclass
class _Watch:
    """What the supervisor knows of one child."""

    restarts: int = 0
    restart_at: float | None = None  # monotonic time of the next start, while it is down
    open_event: Restart | None = None  # the death it has not come back from
    given_up: bool = False


@dataclass
class Supervisor:
    """Watches children in a thread and starts dead ones again through ``relaunch``."""

    children: list
    relaunch: Callable[[object], None]
    http: httpx.Client
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    report: Callable[[str], None] = lambda line: None

    def __post_init__(self) -> None:
        self.events: list[Restart] = []
        self._watch = {id(c): _Watch() for c in self.children}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- what the coordinator asks -------------------------------------------------------------
    def restarts(self, child: Supervised) -> int:
        """How many times ``child`` has been started again."""
        return self._watch[id(child)].restarts

    def given_up(self, child: Supervised) -> bool:
        """Whether the supervisor stopped restarting ``child``."""
        return self._watch[id(child)].given_up

    def is_up(self, child: Supervised) -> bool:
        """Whether ``child`` runs and has answered /health since its latest start."""
        watch = self._watch[id(child)]
        return not watch.given_up and watch.open_event is None and child.exit_code() is None

    def summary(self) -> list[dict]:
        """Every death so far, oldest first."""
        with self._lock:
            return [e.as_dict() for e in self.events]

    # -- the thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the coordinator stops its children on purpose). Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.http.close()

    def _loop(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            for child in self.children:
                try:
                    self.check(child)
                except Exception:  # a supervisor that dies silently would be worse than one that logs and goes on
                    logger.exception("supervisor: checking the %s failed", child.name)

    def _now(self) -> float:
        return time.monotonic() - self._started

    def check(self, child: Supervised) -> None:
        """One look at ``child``: see it die, start it again when its back-off is over, see it answer again."""
        watch = self._watch[id(child)]
        if watch.given_up:
            return
        code = child.exit_code()
        if code is not None and watch.restart_at is None:  # a death not yet seen
            event = watch.open_event or Restart(child.name, child.agent_id, code, self._now())
            if watch.open_event is None:
                with self._lock:
                    self.events.append(event)
                watch.open_event = event
            if watch.restarts >= self.policy.max_restarts:
                watch.given_up = event.gave_up = True
                self.report(
                    f"gave up on the {child.name} ({child.agent_id}) after {watch.restarts} restarts"
                    f" (--max-restarts {self.policy.max_restarts}); it exited with code {code}"
                )
                return
            wait_s = self.policy.backoff_s(watch.restarts + 1)
            watch.restart_at = time.monotonic() + wait_s
            self.report(
                f"the {child.name} ({child.agent_id}) exited with code {code};"
                f" starting it again in {wait_s:g} s"
                f" (restart {watch.restarts + 1} of at most {self.policy.max_restarts})"
            )
            return
        if watch.restart_at is not None and time.monotonic() >= watch.restart_at:
            watch.restart_at = None
            watch.restarts += 1
            self.relaunch(child)
            if watch.open_event is not None:
                watch.open_event.restarted_s = self._now()
            return
        if watch.open_event is not None and code is None and self._healthy(child):
            watch.open_event.healthy_s = self._now()
            self.report(f"the {child.name} ({child.agent_id}) is back after {watch.open_event.down_s:.1f} s")
            watch.open_event = None

    def _healthy(self, child: Supervised) -> bool:
        try:
            answer = self.http.get(f"{child.url}/health", timeout=0.5)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200
