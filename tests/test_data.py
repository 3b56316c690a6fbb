"""Tests of historical data loading (agents/data.py): good files, wrap-around, and errors that say where."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from agents.common.data import (
    BATTERY_COLUMNS,
    HOME_COLUMNS,
    HOME_NONNEGATIVE,
    TimeSeries,
    load_profile_row,
    load_timeseries,
    write_profile_array,
)
from agents.common.settings import StartupError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ROWS_PER_YEAR = 365 * 96  # 35,040 quarter hours in 2025

HEADER = "timestamp,solar_kw,load_kw,temp_air_c"
GOOD_ROWS = [
    "2025-06-01T00:00:00,0.0,0.5,12.5",
    "2025-06-01T00:15:00,1.5,0.75,13.0",
    "2025-06-01T00:30:00,2.25,0.4,-1.5",
]
START = datetime(2025, 6, 1)


def write_csv(tmp_path: Path, lines: list[str], name: str = "home.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_home(path: Path) -> TimeSeries:
    return load_timeseries(path, HOME_COLUMNS, HOME_NONNEGATIVE)


@pytest.fixture
def series(tmp_path) -> TimeSeries:
    return load_home(write_csv(tmp_path, [HEADER, *GOOD_ROWS]))


# --- a good file -------------------------------------------------------------------------------


def test_load_timeseries_good_file(series, tmp_path):
    assert series.path == tmp_path / "home.csv"
    assert series.start == START
    assert series.step_s == 900.0
    assert len(series) == 3
    assert set(series.columns) == set(HOME_COLUMNS)
    np.testing.assert_allclose(series.columns["solar_kw"], [0.0, 1.5, 2.25])
    np.testing.assert_allclose(series.columns["load_kw"], [0.5, 0.75, 0.4])
    np.testing.assert_allclose(series.columns["temp_air_c"], [12.5, 13.0, -1.5])  # may be negative


def test_load_timeseries_ignores_extra_columns_and_order(tmp_path):
    path = write_csv(
        tmp_path,
        [
            "load_kw,ghi_w_per_m2,timestamp,temp_air_c,solar_kw",
            "0.5,0,2025-06-01T00:00:00,12.5,0.0",
            "0.75,100,2025-06-01T01:00:00,13.0,1.5",
        ],
    )
    series = load_home(path)
    assert set(series.columns) == set(HOME_COLUMNS)
    assert series.step_s == 3600.0
    assert series.row(1) == {"solar_kw": 1.5, "load_kw": 0.75, "temp_air_c": 13.0}


def test_load_timeseries_accepts_spaces_after_commas(tmp_path):
    path = write_csv(tmp_path, [HEADER, "2025-06-01T00:00:00, 0.0, 0.5, 12.5", "2025-06-01T00:15:00, 1.0, 0.5, 12.5"])
    assert load_home(path).row(1)["solar_kw"] == 1.0


def test_timeseries_row_values(series):
    assert series.row(0) == {"solar_kw": 0.0, "load_kw": 0.5, "temp_air_c": 12.5}
    assert series.row(2) == {"solar_kw": 2.25, "load_kw": 0.4, "temp_air_c": -1.5}
    assert all(type(v) is float for v in series.row(1).values())


@pytest.mark.parametrize(("index", "expected_row"), [(3, 0), (4, 1), (5, 2), (7, 1), (300, 0), (-1, 2)])
def test_timeseries_row_wraps_around(series, index, expected_row):
    assert series.row(index) == series.row(expected_row)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 100, 35_041])
def test_timeseries_timestamp_continues_past_end(series, index):
    assert series.timestamp(index) == START + timedelta(minutes=15 * index)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (START, 0),
        (START + timedelta(minutes=14, seconds=59), 0),
        (START + timedelta(minutes=15), 1),
        (START + timedelta(minutes=20), 1),
        (START + timedelta(minutes=30), 2),
        (START + timedelta(minutes=44, seconds=59), 2),
    ],
)
def test_timeseries_index_of_row_at_or_before(series, when, expected):
    assert series.index_of(when) == expected


@pytest.mark.parametrize(
    "when", [START - timedelta(seconds=1), START + timedelta(minutes=45), START + timedelta(days=2)]
)
def test_timeseries_index_of_outside_data_raises(series, when):
    with pytest.raises(ValueError, match="outside the data"):
        series.index_of(when)


# --- bad inputs: StartupError naming file, line and column -------------------------------------


def test_load_timeseries_missing_file_raises(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(StartupError, match="not found") as info:
        load_home(path)
    assert str(path) in str(info.value)


def test_load_timeseries_directory_raises(tmp_path):
    with pytest.raises(StartupError) as info:
        load_home(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_timeseries_missing_column_raises(tmp_path):
    path = write_csv(tmp_path, ["timestamp,solar_kw,temp_air_c", "2025-06-01T00:00:00,0,1", "2025-06-01T00:15:00,0,1"])
    with pytest.raises(StartupError) as info:
        load_home(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 1" in message
    assert "load_kw" in message


def test_load_timeseries_missing_timestamp_column_raises(tmp_path):
    path = write_csv(
        tmp_path, ["time,solar_kw,load_kw,temp_air_c", "2025-06-01T00:00:00,0,1,2", "2025-06-01T00:15:00,0,1,2"]
    )
    with pytest.raises(StartupError, match=r"line 1.*timestamp"):
        load_home(path)


@pytest.mark.parametrize(
    ("rows", "line", "column", "problem"),
    [
        (
            [
                "2025-06-01T00:00:00,0.0,0.5,12.5",
                "2025-06-01T00:15:00,0.0,abc,12.5",
                "2025-06-01T00:30:00,0.0,0.5,12.5",
            ],
            3,
            "load_kw",
            "not a finite number",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-06-01T00:15:00,0.0,0.5,12.5", "2025-06-01T00:30:00,0.0,0.5,nan"],
            4,
            "temp_air_c",
            "not a finite number",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-06-01T00:15:00,inf,0.5,12.5"],
            3,
            "solar_kw",
            "not a finite number",
        ),
        (
            ["2025-06-01T00:00:00,,0.5,12.5", "2025-06-01T00:15:00,0.0,0.5,12.5"],
            2,
            "solar_kw",
            "not a finite number",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-06-01T00:15:00,-0.2,0.5,12.5"],
            3,
            "solar_kw",
            "must not be negative",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-06-01T00:15:00,0.0,0.5,12.5", "2025-06-01T00:30:00,0.0,-1,12.5"],
            4,
            "load_kw",
            "must not be negative",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "yesterday,0.0,0.5,12.5"],
            3,
            "timestamp",
            "not an ISO 8601 timestamp",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-13-01T00:15:00,0.0,0.5,12.5"],
            3,
            "timestamp",
            "not an ISO 8601 timestamp",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", ",0.0,0.5,12.5"],
            3,
            "timestamp",
            "not an ISO 8601 timestamp",
        ),
        (
            [
                "2025-06-01T00:00:00,0.0,0.5,12.5",
                "2025-06-01T00:15:00,0.0,0.5,12.5",
                "2025-06-01T00:30:00,0.0,0.5,12.5",
                "2025-06-01T00:50:00,0.0,0.5,12.5",
            ],
            5,
            "timestamp",
            "evenly spaced",
        ),
        (
            ["2025-06-01T00:15:00,0.0,0.5,12.5", "2025-06-01T00:00:00,0.0,0.5,12.5"],
            3,
            "timestamp",
            "must increase",
        ),
        (
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-06-01T00:00:00,0.0,0.5,12.5"],
            3,
            "timestamp",
            "must increase",
        ),
        (  # a short row: its missing cells are empty
            ["2025-06-01T00:00:00,0.0,0.5,12.5", "2025-06-01T00:15:00,0.0,0.5", "2025-06-01T00:30:00,0.0,0.5,12.5"],
            3,
            "temp_air_c",
            "not a finite number",
        ),
    ],
    ids=[
        "non-number",
        "nan",
        "inf",
        "empty-cell",
        "negative-solar",
        "negative-load",
        "bad-timestamp",
        "bad-month",
        "empty-timestamp",
        "uneven-spacing",
        "decreasing",
        "repeated",
        "short-row",
    ],
)
def test_load_timeseries_bad_value_names_file_line_column(tmp_path, rows, line, column, problem):
    path = write_csv(tmp_path, [HEADER, *rows])
    with pytest.raises(StartupError) as info:
        load_home(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}, column {column}: ")
    assert problem in message


def test_load_timeseries_long_ragged_row_names_file_and_line(tmp_path):
    path = write_csv(tmp_path, [HEADER, GOOD_ROWS[0], GOOD_ROWS[1] + ",99", GOOD_ROWS[2]])
    with pytest.raises(StartupError) as info:
        load_home(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message


@pytest.mark.parametrize("rows", [[], [GOOD_ROWS[0]]], ids=["header-only", "one-row"])
def test_load_timeseries_fewer_than_two_rows_raises(tmp_path, rows):
    path = write_csv(tmp_path, [HEADER, *rows])
    with pytest.raises(StartupError, match="at least two data rows") as info:
        load_home(path)
    assert str(path) in str(info.value)


def test_load_timeseries_empty_file_raises(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(StartupError) as info:
        load_home(path)
    assert str(path) in str(info.value)


def test_load_timeseries_not_utf8_raises(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "\n2025-06-01T00:00:00,0,0,12\xb0\n2025-06-01T00:15:00,0,0,12\n").encode("latin-1"))
    with pytest.raises(StartupError) as info:
        load_home(path)
    assert str(path) in str(info.value)


def test_load_timeseries_negative_allowed_outside_nonnegative_columns(tmp_path):
    path = write_csv(tmp_path, [HEADER, "2025-06-01T00:00:00,0,0.5,-10", "2025-06-01T00:15:00,0,0.5,-11"])
    assert load_home(path).row(1)["temp_air_c"] == -11.0


@pytest.mark.parametrize(
    "second_stamp", ["2025-06-01T00:15:00+01:00", "2025-06-01T00:15:00"], ids=["mixed-offsets", "aware-then-naive"]
)
def test_load_timeseries_mixed_timezones_raises_startup_error(tmp_path, second_stamp):
    path = write_csv(tmp_path, [HEADER, "2025-06-01T00:00:00+00:00,0,0.5,12", f"{second_stamp},0,0.5,12"])
    with pytest.raises(StartupError, match="timestamp"):
        load_home(path)


def test_load_timeseries_line_number_counts_blank_lines(tmp_path):
    path = write_csv(tmp_path, [HEADER, GOOD_ROWS[0], "", "2025-06-01T00:15:00,0.0,abc,12.5"])
    with pytest.raises(StartupError) as info:
        load_home(path)
    assert f"{path}, line 4, column load_kw" in str(info.value)


# --- the shipped data --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "columns", "nonnegative"),
    [
        ("historical_data.csv", HOME_COLUMNS, HOME_NONNEGATIVE),
        ("battery_historical_data.csv", BATTERY_COLUMNS, ()),
    ],
)
def test_load_timeseries_shipped_data(name, columns, nonnegative):
    series = load_timeseries(DATA_DIR / name, columns, nonnegative)
    assert len(series) == ROWS_PER_YEAR
    assert series.step_s == 900.0
    assert series.start == datetime(2025, 1, 1)
    assert series.timestamp(ROWS_PER_YEAR) == datetime(2026, 1, 1)
    assert set(series.columns) == set(columns)
    for values in series.columns.values():
        assert np.isfinite(values).all()


# --- profile arrays: many agents' own data in one memory-mapped file -----------------------------------
PROFILE_COLUMNS = ["solar_kw", "load_kw", "load_kvar"]


def write_profiles(tmp_path: Path, values: np.ndarray) -> Path:
    path = tmp_path / "homes.npy"
    write_profile_array(path, values, START, 900.0, PROFILE_COLUMNS, [f"h{i}" for i in range(len(values))])
    return path


def test_load_profile_row_reads_its_agents_row(tmp_path):
    values = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    series = load_profile_row(write_profiles(tmp_path, values), 1, ("solar_kw", "load_kw"), ("solar_kw",))
    assert (series.start, series.step_s, len(series)) == (START, 900.0, 4)
    assert series.row(0) == {"solar_kw": 12.0, "load_kw": 16.0, "load_kvar": 20.0}
    assert series.row(5) == series.row(1)  # wraps like a CSV's data
    with pytest.raises(ValueError):
        series.columns["load_kw"][0] = 1.0  # mapped read-only


@pytest.mark.parametrize(
    ("row", "columns", "message"),
    [(2, ("solar_kw",), "no row 2 (it holds 2 agents)"), (0, ("temp_air_c",), "missing column(s) temp_air_c")],
)
def test_load_profile_row_bad_row_or_column(tmp_path, row, columns, message):
    path = write_profiles(tmp_path, np.zeros((2, 3, 4)))
    with pytest.raises(StartupError, match=re.escape(message)):
        load_profile_row(path, row, columns)


def test_load_profile_row_names_row_column_and_step_of_a_bad_value(tmp_path):
    values = np.zeros((2, 3, 4))
    values[1, 1, 2] = np.nan
    values[0, 0, 3] = -1.0
    path = write_profiles(tmp_path, values)
    with pytest.raises(StartupError, match=r"row 1, column load_kw, step 2: not a finite number"):
        load_profile_row(path, 1, ("load_kw",))
    with pytest.raises(StartupError, match=r"row 0, column solar_kw: must not be negative"):
        load_profile_row(path, 0, ("solar_kw",), ("solar_kw",))


def test_load_profile_row_without_its_description(tmp_path):
    path = write_profiles(tmp_path, np.zeros((1, 3, 4)))
    path.with_suffix(".json").unlink()
    with pytest.raises(StartupError, match="not a readable description"):
        load_profile_row(path, 0, ("solar_kw",))
    with pytest.raises(StartupError, match="profile array not found"):
        load_profile_row(tmp_path / "absent.npy", 0, ("solar_kw",))
