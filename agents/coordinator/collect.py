"""Bringing every agent's CSV log back into the coordinator's --log-dir at the end of a run.

On one machine the agents write their logs straight into that folder, so there is nothing to
fetch; agents on other machines (Ray actors) hand their files over as bytes. Either way the
coordinator calls ``collect_logs`` once, after the last cycle, and says what it could not fetch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class LogSource(Protocol):
    """Something that holds agents' logs: a local process (nothing to fetch) or an actor on another node."""

    name: str

    def log_files(self) -> dict[str, bytes]:
        """The CSV logs it holds, by file name; empty when they are already in the coordinator's folder."""
        ...


def collect_logs(sources: Iterable[LogSource], log_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Write every source's log files into ``log_dir``; return the files written and, by source, why any failed.

    A file name is taken as it is, never as a path: a source cannot write outside ``log_dir``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: dict[str, str] = {}
    for source in sources:
        try:
            files = source.log_files()
        except Exception as exc:  # a lost node must not cost the logs of the others
            failed[source.name] = f"{type(exc).__name__}: {exc}"
            continue
        for name, content in files.items():
            path = log_dir / Path(name).name
            path.write_bytes(content)
            written.append(path)
    return written, failed
