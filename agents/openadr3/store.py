"""The VTN's objects in one SQLite file (``openadr3.sqlite3`` under ``--state-dir``), committed on every write.

Each row is one object: its kind (``program``, ``event``...), its server-assigned id, the client that created
it (the owner), its parent (a resource's VEN) and its JSON body. Rows keep their insertion order, so lists page
stably with skip and limit.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any


class ObjectStore:
    """Durable OpenADR objects, keyed by kind and id."""

    def __init__(self, state_dir: Path, name: str = "openadr3") -> None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"{name}.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
            " id TEXT NOT NULL, owner TEXT NOT NULL, parent TEXT, body TEXT NOT NULL, UNIQUE (kind, id))"
        )

    @staticmethod
    def new_id(kind: str) -> str:
        """A fresh object id, URL safe as the document's objectID requires."""
        return f"{kind}-{uuid.uuid4().hex[:16]}"

    def insert(self, kind: str, object_id: str, owner: str, body: dict[str, Any], parent: str | None = None) -> None:
        """Store a new object."""
        with self._lock:
            self._db.execute(
                "INSERT INTO objects (kind, id, owner, parent, body) VALUES (?, ?, ?, ?, ?)",
                (kind, object_id, owner, parent, json.dumps(body)),
            )

    def replace(self, kind: str, object_id: str, body: dict[str, Any]) -> None:
        """Replace an object's body (owner and parent stay)."""
        with self._lock:
            self._db.execute(
                "UPDATE objects SET body = ? WHERE kind = ? AND id = ?", (json.dumps(body), kind, object_id)
            )

    def delete(self, kind: str, object_id: str) -> None:
        """Delete an object and its children (a VEN's resources)."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM objects WHERE parent = ? AND kind != ?", (object_id, kind))
            self._db.execute("DELETE FROM objects WHERE kind = ? AND id = ?", (kind, object_id))

    def get(self, kind: str, object_id: str) -> tuple[str, dict[str, Any]] | None:
        """(owner, body) of an object, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT owner, body FROM objects WHERE kind = ? AND id = ?", (kind, object_id)
            ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def all(self, kind: str, parent: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(owner, body) of every object of a kind (under ``parent`` if given), oldest first."""
        query, args = "SELECT owner, body FROM objects WHERE kind = ?", [kind]
        if parent is not None:
            query, args = query + " AND parent = ?", [*args, parent]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [(owner, json.loads(body)) for owner, body in rows]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
