"""Long runs of coordination cycles as jobs of the grid agent: started, followed, stopped, kept in SQLite.

``POST /runs`` answers at once; the run then holds the feeder (the grid agent's cycle lock) from
its first cycle to its last, so that a ``POST /coordinate`` meanwhile waits at most
``--coordinate-wait-s`` and answers 409. One run at a time; ``DELETE /runs/{run_id}`` stops it
after the cycle in flight.

What is kept where:

- every run's record (id, status, cycles, cycles done, times, error) in the table ``runs`` of
  ``{state_dir}/{agent_id}_runs.sqlite3``, written when the run starts, at most ``PROGRESS_SAVE_S``
  apart while it runs (``GET /runs/{run_id}`` answers a live run from memory, to the cycle) and
  when it ends. A run found ``running`` there when the grid agent starts was cut short by a
  kill or a crash and is marked ``failed``; one in flight at an orderly shutdown is marked
  ``failed`` then.
- the grid agent's cycle count, in the table ``counter`` of the same file, written as each cycle
  starts (so that a cycle cut short by a kill keeps its number); a grid agent started with
  ``--resume-cycles`` counts on from it.
- cycle results in memory only, bounded: the latest ``RESULTS_KEPT`` cycles of the latest run
  (a large feeder's result is tens of kB, so a year of them would not fit). A client that polls
  ``GET /runs/{run_id}/results?since=N`` as the run goes gets every one; a restart forgets them.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import sqlite3
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from agents.common.errors import FeederBusyError, NotFoundError
from agents.cycle.grid_agent import GridAgent
from agents.cycle.registry import now
from models.schemas import CoordinationResult, RunInfo, RunResults, RunStatus

logger = logging.getLogger(__name__)

#: Results of the latest run kept in memory; also the most one ``GET /runs/{run_id}/results`` answers.
RESULTS_KEPT = 1000
#: At shutdown, how long a run's cycle in flight may take to finish before it is cancelled.
SHUTDOWN_GRACE_S = 3.0
#: How often a run in flight commits its progress (cycles done, last cycle) to its record.
PROGRESS_SAVE_S = 1.0

#: The columns of the ``runs`` table that mirror RunInfo (``stop_requested`` lives only in memory).
_COLUMNS = (
    "run_id",
    "status",
    "cycles",
    "cycles_done",
    "started_at",
    "finished_at",
    "first_cycle",
    "last_cycle",
    "last_timestamp",
    "error",
)
_UNFINISHED_ERROR = "the grid agent stopped during the run (found unfinished when it started again)"


class RunStore:
    """The grid agent's table of runs, in its own SQLite file under the state folder, committed on every write."""

    def __init__(self, state_dir: Path, name: str) -> None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"{name}_runs.sqlite3"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # survives a process kill; an OS crash may lose the last cycle
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, cycles INTEGER NOT NULL,"
            " cycles_done INTEGER NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, first_cycle INTEGER,"
            " last_cycle INTEGER, last_timestamp TEXT, error TEXT, updated_at TEXT NOT NULL)"
        )

        self._db.execute("CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS identity (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS history (cycle INTEGER PRIMARY KEY, body TEXT NOT NULL)")

    def run_id(self, fresh: str) -> str:
        """The grid agent's run id kept here, or ``fresh`` kept from now on. A grid agent counting on from a restart
        keeps its run id, so that its cycles stay one run to the agents (``X-Cycle-Id`` and command ids): a late copy
        of a call the first process made, for a cycle at or before the one it cut short, steps nothing."""
        row = self._db.execute("SELECT value FROM identity WHERE name = 'run_id'").fetchone()
        if row:
            return str(row[0])
        self.save_run_id(fresh)
        return fresh

    def save_run_id(self, run_id: str) -> None:
        self._db.execute(
            "INSERT INTO identity (name, value) VALUES ('run_id', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (run_id,),
        )

    def save_cycle(self, cycle: int) -> None:
        """Commit the number of the cycle that is starting."""
        self._db.execute(
            "INSERT INTO counter (name, value) VALUES ('cycle', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (cycle,),
        )

    def last_cycle(self) -> int:
        """The number of the latest cycle that started (0 when none has)."""
        row = self._db.execute("SELECT value FROM counter WHERE name = 'cycle'").fetchone()
        return int(row[0]) if row else 0

    def save_history_row(self, row: dict[str, Any], keep: int) -> None:
        """Commit one cycle of the dashboard's history; rows more than ``keep`` cycles old go, a hundred at a time."""
        cycle = int(row["cycle"])
        self._db.execute(
            "INSERT OR REPLACE INTO history (cycle, body) VALUES (?, ?)",
            (cycle, json.dumps(row, separators=(",", ":"))),
        )
        if cycle % 100 == 0:
            self._db.execute("DELETE FROM history WHERE cycle <= ?", (cycle - keep,))

    def history(self, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` cycles of the dashboard's history, oldest first."""
        rows = self._db.execute("SELECT body FROM history ORDER BY cycle DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(body) for (body,) in reversed(rows)]

    def clear_history(self) -> None:
        """Forget the dashboard's history: a grid agent started afresh begins a new one."""
        self._db.execute("DELETE FROM history")

    def save(self, run: RunInfo) -> None:
        """Insert or update a run's record; ``updated_at`` says when it last made progress."""
        row = {**run.model_dump(mode="json", include=set(_COLUMNS)), "updated_at": now().isoformat()}
        columns = [*_COLUMNS, "updated_at"]
        self._db.execute(
            f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
            f" ON CONFLICT (run_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns[1:])}",
            row,
        )

    def get(self, run_id: str) -> RunInfo | None:
        """A run's record, or None."""
        rows = self._select("WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def latest(self, limit: int) -> list[RunInfo]:
        """The latest ``limit`` runs, newest first."""
        return self._select("ORDER BY rowid DESC LIMIT ?", (limit,))

    def fail_unfinished(self) -> list[str]:
        """Mark failed every run still ``running`` (a grid agent that was killed); returns their ids."""
        ids = [row[0] for row in self._db.execute("SELECT run_id FROM runs WHERE status = 'running'")]
        self._db.execute(
            "UPDATE runs SET status = 'failed', finished_at = updated_at, error = ? WHERE status = 'running'",
            (_UNFINISHED_ERROR,),
        )
        return ids

    def _select(self, where: str, parameters: tuple) -> list[RunInfo]:
        cursor = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs {where}", parameters)
        return [RunInfo.model_validate(dict(zip(_COLUMNS, row, strict=True))) for row in cursor]

    def close(self) -> None:
        self._db.close()


def _cycle_of(result: CoordinationResult) -> int:
    return result.cycle


class Run:
    """A run of this process: its record, the task that drives it and its latest results."""

    def __init__(self, info: RunInfo, results_kept: int) -> None:
        self.info = info
        self.results: deque[CoordinationResult] = deque(maxlen=results_kept)
        self.task: asyncio.Task[None] | None = None

    def holder(self) -> str:
        """Who holds the feeder and how to follow it, for the 409 of whoever waits for it."""
        i = self.info
        return (
            f"run {i.run_id} holds it ({i.cycles_done} of {i.cycles} cycles done); "
            f"follow it at GET /runs/{i.run_id} or stop it with DELETE /runs/{i.run_id}"
        )

    def add(self, result: CoordinationResult) -> None:
        """Count a finished cycle and keep its result."""
        self.results.append(result)
        self.info.cycles_done += 1
        if self.info.first_cycle is None:
            self.info.first_cycle = result.cycle
        self.info.last_cycle, self.info.last_timestamp = result.cycle, result.timestamp


class Runs:
    """The grid agent's runs: at most one in flight; every record in a RunStore, the latest run's results in memory."""

    def __init__(self, agent: GridAgent, store: RunStore, wait_s: float, results_kept: int = RESULTS_KEPT) -> None:
        self.agent = agent
        self.store = store
        self.wait_s = wait_s
        self.results_kept = results_kept
        self.active: Run | None = None  # the run holding (or about to hold) the feeder
        self.latest: Run | None = None  # the latest run started here, whose results are kept
        self._closing = False
        failed = store.fail_unfinished()
        if failed:
            logger.warning(
                "%s: runs %s were in flight when it stopped; marked failed",
                agent.agent_id,
                ", ".join(failed),
            )

    async def start(self, cycles: int) -> RunInfo:
        """Start a run of ``cycles`` cycles in the background; it holds the feeder once this returns."""
        if self.active is not None:
            raise FeederBusyError(f"one run at a time, and {self.active.holder()}", self.agent.agent_id)
        info = RunInfo(
            run_id=uuid.uuid4().hex[:12], status=RunStatus.running, cycles=cycles, cycles_done=0, started_at=now()
        )
        run = Run(info, self.results_kept)
        self.active = run  # before waiting for the feeder, so that a second POST /runs is refused at once
        try:
            await self.agent.claim_feeder(run.holder, self.wait_s)  # a cycle or a batch may hold it for a moment
        except BaseException:
            self.active = None
            raise
        info.started_at = now()
        self.latest = run
        self.store.save(info)
        run.task = asyncio.create_task(self._drive(run), name=f"run {info.run_id}")
        logger.info("%s: run %s of %d cycles started", self.agent.agent_id, info.run_id, cycles)
        return info.model_copy()

    async def _drive(self, run: Run) -> None:
        """Run the cycles until done, stopped or failed; then record how it ended and free the feeder."""
        info = run.info
        status, error = RunStatus.done, None
        saved = time.monotonic()
        try:
            while info.cycles_done < info.cycles:
                if info.stop_requested:
                    status = RunStatus.stopped
                    break
                if self._closing:
                    status = RunStatus.failed
                    error = f"the grid agent stopped during the run, after {info.cycles_done} of {info.cycles} cycles"
                    break
                run.add(await self.agent.run_cycle())
                if time.monotonic() - saved >= PROGRESS_SAVE_S:  # a commit a cycle would cost a tenth of a cycle
                    self.store.save(info)
                    saved = time.monotonic()
                await asyncio.sleep(0)  # reads and a DELETE get their turn between cycles, even in process
        except asyncio.CancelledError:
            status = RunStatus.failed
            error = f"the grid agent stopped during cycle {info.cycles_done + 1} of {info.cycles}"
            raise
        except Exception as exc:
            logger.exception("%s: run %s failed", self.agent.agent_id, info.run_id)
            status = RunStatus.failed
            error = f"cycle {info.cycles_done + 1} of {info.cycles} failed: {type(exc).__name__}: {exc}"
        finally:
            info.status, info.error, info.finished_at = status, error, now()
            self.active = None
            self.agent.release_feeder()
            self.store.save(info)
            logger.info(
                "%s: run %s %s after %d of %d cycles",
                self.agent.agent_id,
                info.run_id,
                status.value,
                info.cycles_done,
                info.cycles,
            )

    def get(self, run_id: str) -> RunInfo:
        """A run's record; NotFoundError for an id this grid agent never ran."""
        for run in (self.active, self.latest):
            if run is not None and run.info.run_id == run_id:
                return run.info.model_copy()
        info = self.store.get(run_id)
        if info is None:
            raise NotFoundError(f"no run {run_id!r} here; GET /runs lists the runs", self.agent.agent_id)
        return info

    def list(self, limit: int) -> list[RunInfo]:
        """The latest runs, newest first."""
        live = {run.info.run_id: run.info for run in (self.active, self.latest) if run is not None}
        return [live[info.run_id].model_copy() if info.run_id in live else info for info in self.store.latest(limit)]

    def results(self, run_id: str, since: int, limit: int) -> RunResults:
        """The kept results of a run's cycles numbered after ``since``, oldest first, at most ``limit``."""
        info = self.get(run_id)
        kept = self.latest.results if self.latest is not None and self.latest.info.run_id == run_id else deque()
        start = bisect.bisect_right(kept, since, key=_cycle_of)  # kept in cycle order; a scan would cost O(kept)
        after = [kept[i] for i in range(start, min(start + limit, len(kept)))]
        return RunResults(
            run_id=info.run_id,
            status=info.status,
            cycles=info.cycles,
            cycles_done=info.cycles_done,
            first_kept_cycle=kept[0].cycle if kept else None,
            results=after,
        )

    async def stop(self, run_id: str) -> RunInfo:
        """Stop a run after its cycle in flight and answer how it ended; a finished run is answered as it is."""
        info = self.get(run_id)
        run = self.active
        if run is None or run.info.run_id != run_id or run.task is None:
            return info
        run.info.stop_requested = True
        await asyncio.wait({run.task})  # not cancelled if this request is: the run still stops
        return run.info.model_copy()

    async def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """At shutdown: a run in flight ends after its cycle in flight (cancelled past ``grace_s``), as failed."""
        self._closing = True
        run = self.active
        if run is not None and run.task is not None:
            _, pending = await asyncio.wait({run.task}, timeout=grace_s)
            if pending:
                run.task.cancel()
                await asyncio.wait({run.task})
        self.store.close()
