"""Durable agent state in an embedded SQLite database, committed every step."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StateStore:
    """One SQLite file per agent process, under the state folder: each hosted agent's latest state
    and the commands it has answered, keyed by agent id.

    Every ``save`` commits, unless it runs inside ``batch()``, which commits once at its end: a
    process stepping hundreds of homes writes them in one transaction.
    """

    def __init__(self, state_dir: Path, name: str, fresh: bool = False) -> None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"{name}.sqlite3"
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # durable across a process kill; an OS crash may lose the last step
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._columns("state") and "agent_id" not in self._columns("state"):
            self._migrate_one_agent_layout(agent_id=name)
        self._db.execute("CREATE TABLE IF NOT EXISTS state (agent_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS commands (agent_id TEXT NOT NULL, command_id TEXT NOT NULL, body TEXT NOT "
            "NULL, PRIMARY KEY (agent_id, command_id))"
        )
        self._depth = 0
        self._pending_states: dict[str, str] = {}  # agent id -> its state's JSON, saved in the batch under way
        self._pending_commands: list[tuple[str, str, str]] = []

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _migrate_one_agent_layout(self, agent_id: str) -> None:
        """Move a file of the first release (one agent per file, no agent_id column) to this layout."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("ALTER TABLE state RENAME TO state_v1")
            self._db.execute("CREATE TABLE state (agent_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
            self._db.execute("INSERT INTO state (agent_id, body) SELECT ?, body FROM state_v1", (agent_id,))
            self._db.execute("DROP TABLE state_v1")
            if self._columns("commands"):
                self._db.execute("ALTER TABLE commands RENAME TO commands_v1")
                self._db.execute(
                    "CREATE TABLE commands (agent_id TEXT NOT NULL, command_id TEXT NOT NULL, body TEXT NOT NULL, "
                    "PRIMARY KEY (agent_id, command_id))"
                )
                self._db.execute(
                    "INSERT INTO commands (agent_id, command_id, body) SELECT ?, command_id, body FROM commands_v1",
                    (agent_id,),
                )
                self._db.execute("DROP TABLE commands_v1")

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the saves inside into one transaction, written with one statement per table at its end."""
        if self._depth == 0:
            self._pending_states = {}
            self._pending_commands = []
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._write_pending()

    def _write_pending(self) -> None:
        states, commands = self._pending_states, self._pending_commands
        self._pending_states, self._pending_commands = {}, []
        if not states and not commands:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR REPLACE INTO state (agent_id, body) VALUES (?, ?)", states.items())
            if commands:
                self._db.executemany(
                    "INSERT OR REPLACE INTO commands (agent_id, command_id, body) VALUES (?, ?, ?)", commands
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def load(self, agent_id: str) -> dict[str, Any] | None:
        """An agent's saved state, or None for a new agent."""
        row = self._db.execute("SELECT body FROM state WHERE agent_id = ?", (agent_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def save(self, agent_id: str, state: dict[str, Any], commands: dict[str, dict[str, Any]] | None = None) -> None:
        """Save an agent's state and its newly answered commands together (at the end of the batch, if in one)."""
        with self.batch():
            self._pending_states[agent_id] = json.dumps(state, separators=(",", ":"))
            if commands:
                self._pending_commands += [
                    (agent_id, command_id, json.dumps(record)) for command_id, record in commands.items()
                ]

    def commands(self, agent_id: str, limit: int) -> dict[str, dict[str, Any]]:
        """An agent's most recently answered commands, oldest first."""
        rows = self._db.execute(
            "SELECT command_id, body FROM commands WHERE agent_id = ? ORDER BY rowid DESC LIMIT ?", (agent_id, limit)
        ).fetchall()
        return {command_id: json.loads(body) for command_id, body in reversed(rows)}

    def close(self) -> None:
        """Close the database."""
        self._db.close()
