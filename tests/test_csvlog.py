"""Tests of the CSV log writer (agents/csvlog.py): one header, whole flushed rows, safe reopening."""

from __future__ import annotations

import math
from datetime import datetime
from enum import Enum

import pandas as pd
import pytest

from agents.common.csvlog import CsvLogWriter

COLUMNS = ["step", "timestamp", "net_power_kw", "state"]


class State(str, Enum):
    normal = "normal"
    overload = "overload"


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "logs" / "home_1_log.csv"


def lines_of(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_csv_log_writer_header_written_once(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.write({"step": 1, "net_power_kw": 1.5})
    writer.write({"step": 2, "net_power_kw": -0.5})
    writer.close()
    lines = lines_of(log_path)
    assert lines[0] == "step,timestamp,net_power_kw,state"
    assert lines.count(lines[0]) == 1
    assert len(lines) == 3


def test_csv_log_writer_creates_parent_dirs_and_header_on_open(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    try:
        assert log_path.parent.is_dir()
        assert lines_of(log_path) == ["step,timestamp,net_power_kw,state"]  # before any row
    finally:
        writer.close()


def test_csv_log_writer_rows_readable_by_pandas(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.write({"step": 1, "timestamp": datetime(2025, 6, 1, 12, 0), "net_power_kw": 1.25, "state": State.overload})
    writer.write({"step": 2, "timestamp": datetime(2025, 6, 1, 12, 15), "net_power_kw": -3.5, "state": State.normal})
    writer.close()
    frame = pd.read_csv(log_path)
    assert list(frame.columns) == COLUMNS
    assert frame["step"].tolist() == [1, 2]
    assert frame["timestamp"].tolist() == ["2025-06-01T12:00:00", "2025-06-01T12:15:00"]
    assert frame["net_power_kw"].tolist() == pytest.approx([1.25, -3.5])
    assert frame["state"].tolist() == ["overload", "normal"]


def test_csv_log_writer_quotes_commas_and_ignores_unknown_keys(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.write({"step": 1, "state": 'a, "quoted" note', "not_a_column": 99})
    writer.close()
    frame = pd.read_csv(log_path, keep_default_na=False)
    assert frame["state"].tolist() == ['a, "quoted" note']
    assert list(frame.columns) == COLUMNS


def test_csv_log_writer_reopen_appends_without_second_header(log_path):
    first = CsvLogWriter(log_path, COLUMNS)
    first.write({"step": 1, "net_power_kw": 1.0})
    first.close()
    second = CsvLogWriter(log_path, COLUMNS)
    second.write({"step": 2, "net_power_kw": 2.0})
    second.close()
    lines = lines_of(log_path)
    assert sum(line.startswith("step,") for line in lines) == 1
    assert pd.read_csv(log_path)["step"].tolist() == [1, 2]
    assert not log_path.with_suffix(".old.csv").exists()


def test_csv_log_writer_different_header_moves_old_file_aside(log_path):
    old = CsvLogWriter(log_path, ["step", "power_kw"])
    old.write({"step": 1, "power_kw": 4.0})
    old.close()
    old_text = log_path.read_text(encoding="utf-8")
    new = CsvLogWriter(log_path, COLUMNS)
    new.write({"step": 1, "net_power_kw": 2.0})
    new.close()
    moved = log_path.parent / "home_1_log.old.csv"
    assert moved.read_text(encoding="utf-8") == old_text
    assert lines_of(log_path)[0] == "step,timestamp,net_power_kw,state"
    assert pd.read_csv(log_path)["net_power_kw"].tolist() == [2.0]


def test_csv_log_writer_empty_existing_file_gets_header(log_path):
    log_path.parent.mkdir(parents=True)
    log_path.write_text("", encoding="utf-8")
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.close()
    assert lines_of(log_path) == ["step,timestamp,net_power_kw,state"]
    assert not log_path.with_suffix(".old.csv").exists()


def test_csv_log_writer_row_on_disk_right_after_write(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    try:
        writer.write({"step": 7, "net_power_kw": 0.5})
        # read back through a separate handle while the writer still holds the file open
        assert lines_of(log_path)[-1] == "7,,0.5,"
        writer.write({"step": 8, "net_power_kw": 0.75})
        assert pd.read_csv(log_path)["step"].tolist() == [7, 8]
    finally:
        writer.close()


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, -math.inf], ids=["none", "nan", "inf", "-inf"])
def test_csv_log_writer_missing_values_written_as_empty_cells(log_path, missing):
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.write({"step": 1, "timestamp": missing, "net_power_kw": missing, "state": missing})
    writer.close()
    assert lines_of(log_path)[1] == "1,,,"
    frame = pd.read_csv(log_path)
    assert frame["net_power_kw"].isna().all()


def test_csv_log_writer_absent_keys_written_as_empty_cells(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.write({})
    writer.close()
    assert lines_of(log_path)[1] == ",,,"


def test_csv_log_writer_close_twice_is_harmless(log_path):
    writer = CsvLogWriter(log_path, COLUMNS)
    writer.close()
    writer.close()
    assert lines_of(log_path) == ["step,timestamp,net_power_kw,state"]
