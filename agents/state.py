"""Durable agent state in an embedded SQLite database, committed every step."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any


class StateStore:
    """One SQLite file per agent under the state folder: its latest state and the commands it has answered."""

    def __init__(self, state_dir: Path, agent_id: str, fresh: bool = False) -> None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"{agent_id}.sqlite3"
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process kill; an OS crash may lose the last step
        self._db.execute("CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS commands (command_id TEXT PRIMARY KEY, body TEXT NOT NULL)")

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None for a new agent."""
        row = self._db.execute("SELECT body FROM state WHERE id = 1").fetchone()
        return json.loads(row[0]) if row else None

    def save(self, state: dict[str, Any], commands: dict[str, dict[str, Any]] | None = None) -> None:
        """Save the state and any newly answered commands in one transaction."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO state (id, body) VALUES (1, ?)", (json.dumps(state),))
            for command_id, record in (commands or {}).items():
                self._db.execute("INSERT OR REPLACE INTO commands (command_id, body) VALUES (?, ?)", (command_id, json.dumps(record)))

    def commands(self, limit: int) -> dict[str, dict[str, Any]]:
        """The most recently answered commands, oldest first."""
        rows = self._db.execute("SELECT command_id, body FROM commands ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
        return {command_id: json.loads(body) for command_id, body in reversed(rows)}

    def close(self) -> None:
        """Close the database."""
        self._db.close()
