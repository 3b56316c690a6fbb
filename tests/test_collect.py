"""Bringing agents' logs back to the coordinator's --log-dir."""

from __future__ import annotations

from agents.coordinator.collect import collect_logs


class Source:
    def __init__(self, name: str, files: dict[str, bytes] | None = None, error: Exception | None = None) -> None:
        self.name, self.files, self.error = name, files or {}, error

    def log_files(self) -> dict[str, bytes]:
        if self.error is not None:
            raise self.error
        return self.files


def test_collect_logs_writes_each_file_and_names_the_sources_that_failed(tmp_path):
    sources = [
        Source("grid agent", {"grid_agent_log.csv": b"cycle\n1\n"}),
        Source("homes 1/2", error=ConnectionError("node lost")),
        Source("local home agent"),  # its logs are already in place
    ]
    written, failed = collect_logs(sources, tmp_path / "logs")
    assert written == [tmp_path / "logs" / "grid_agent_log.csv"]
    assert written[0].read_bytes() == b"cycle\n1\n"
    assert failed == {"homes 1/2": "ConnectionError: node lost"}


def test_collect_logs_never_writes_outside_the_folder(tmp_path):
    written, _ = collect_logs([Source("evil", {"../../escape.csv": b"x"})], tmp_path / "logs")
    assert written == [tmp_path / "logs" / "escape.csv"]
    assert not (tmp_path / "escape.csv").exists()
