"""Loading an agent's historical data: a CSV, with errors that name the file, row and column, or one row of
a profile array that the coordinator prepared for many agents (a network's homes)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from agents.common.settings import StartupError

HOME_COLUMNS = ("solar_kw", "load_kw", "temp_air_c")
HOME_NONNEGATIVE = ("solar_kw", "load_kw")
BATTERY_COLUMNS = ("price_per_kwh", "temp_air_c")
#: A network home's own data: no weather, and the reactive power of its load (load_kvar, > 0 drawn).
NETWORK_HOME_COLUMNS = ("solar_kw", "load_kw", "load_kvar")


@dataclass(frozen=True)
class TimeSeries:
    """Evenly spaced historical data: a start, a step and one float array per column."""

    path: Path
    start: datetime
    step_s: float
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return self.rows

    @functools.cached_property
    def rows(self) -> int:
        """How many rows the data has."""
        return len(next(iter(self.columns.values())))

    def row(self, index: int) -> dict[str, float]:
        """The values of one row, wrapping around at the end of the data."""
        i = index % self.rows
        return {name: float(values[i]) for name, values in self.columns.items()}

    def value(self, column: str, index: int) -> float:
        """One column's value at row ``index``, wrapping around at the end of the data."""
        return float(self.columns[column][index % self.rows])

    def timestamp(self, index: int) -> datetime:
        """Simulated time of row ``index``; past the end the clock keeps running while the data wraps."""
        return self.start + timedelta(seconds=self.step_s * index)

    def index_of(self, when: datetime) -> int:
        """The row at or just before ``when``, within the first pass through the data."""
        offset = (when - self.start).total_seconds()
        index = int(offset // self.step_s)
        if not 0 <= index < len(self):
            raise ValueError(
                f"{when.isoformat()} is outside the data ({self.start.isoformat()} to "
                f"{self.timestamp(len(self) - 1).isoformat()})"
            )
        return index


def load_timeseries(path: Path, columns: tuple[str, ...], nonnegative: tuple[str, ...] = ()) -> TimeSeries:
    """Read and check a CSV with a ``timestamp`` column and the named float columns.

    Raises StartupError naming the file, the 1-based line and the column of the first problem.
    A process hosting many agents on the same file reads and checks it once (the arrays are
    never written to).
    """
    path = Path(path)
    if not path.is_file():
        raise StartupError(f"{path}: data file not found")
    stat = path.stat()
    return _load_cached(path.resolve(), stat.st_mtime_ns, stat.st_size, tuple(columns), tuple(nonnegative))


@functools.lru_cache(maxsize=16)
def _load_cached(
    path: Path, mtime_ns: int, size: int, columns: tuple[str, ...], nonnegative: tuple[str, ...]
) -> TimeSeries:
    series = _load(path, columns, nonnegative)
    for values in series.columns.values():
        values.setflags(write=False)
    return series


def _load(path: Path, columns: tuple[str, ...], nonnegative: tuple[str, ...]) -> TimeSeries:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise StartupError(f"{path}: not a readable CSV: {exc}") from exc
    missing = [name for name in ("timestamp", *columns) if name not in frame.columns]
    if missing:
        raise StartupError(
            f"{path}, line 1: missing column(s) {', '.join(missing)} (found {', '.join(map(str, frame.columns))})"
        )
    frame.index = frame.index + 2  # the line each row stands on in the file (header = line 1)
    blank = (frame == "").all(axis=1) | frame.isna().all(axis=1)
    frame = frame[~blank]
    if len(frame) < 2:
        raise StartupError(f"{path}: needs at least two data rows, found {len(frame)}")

    def fail(row_index: int, column: str, problem: str) -> StartupError:
        value = frame[column].iloc[row_index]
        return StartupError(f"{path}, line {frame.index[row_index]}, column {column}: {problem} (got {value!r})")

    # pandas 3 refuses a column that mixes UTC offsets, pandas 2.3 reads one silently as UTC: check it here
    offsets = frame["timestamp"].str.extract(r"T[0-9:.]+(Z|[+-]\d{2}:?\d{2})$", expand=False).fillna("").to_numpy()
    differs = np.flatnonzero(offsets != offsets[0])
    if differs.size:
        raise fail(int(differs[0]), "timestamp", "time zone differs from the first row's")
    try:
        stamps = pd.to_datetime(frame["timestamp"], errors="coerce", format="ISO8601")
    except ValueError:  # a zone that the offsets above do not show
        zones = [getattr(pd.Timestamp(text), "tzinfo", None) if text else None for text in frame["timestamp"]]
        first = next(i for i, zone in enumerate(zones) if zone != zones[0])
        raise fail(first, "timestamp", "time zone differs from the first row's") from None
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if bad.size:
        raise fail(int(bad[0]), "timestamp", "not an ISO 8601 timestamp")
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_localize(None)
    step = (stamps.iloc[1] - stamps.iloc[0]).total_seconds()
    if step <= 0:
        raise fail(1, "timestamp", "timestamps must increase")
    gaps = stamps.diff().dt.total_seconds().to_numpy()[1:]
    uneven = np.flatnonzero(gaps != step)
    if uneven.size:
        raise fail(int(uneven[0]) + 1, "timestamp", f"timestamps must be evenly spaced {step:g} s apart")

    values: dict[str, np.ndarray] = {}
    for name in columns:
        numbers = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(numbers))
        if bad.size:
            raise fail(int(bad[0]), name, "not a finite number")
        if name in nonnegative:
            negative = np.flatnonzero(numbers < 0)
            if negative.size:
                raise fail(int(negative[0]), name, "must not be negative")
        values[name] = numbers
    return TimeSeries(path=path, start=stamps.iloc[0].to_pydatetime(), step_s=step, columns=values)


# -- profile arrays: many agents' data in one memory-mapped file ----------------------------------------------
#
# ``NAME.npy`` holds float32 values shaped (agents, columns, steps); ``NAME.json`` beside it says
# {"start": ISO 8601, "step_s": seconds, "columns": [...], "agents": [agent ids, one per row]}. Every process
# maps the same file and reads only its agents' rows, so a feeder's data is prepared once, not once per process.


def write_profile_array(
    path: Path, values: np.ndarray, start: datetime, step_s: float, columns: list[str], agents: list[str]
) -> None:
    """Write ``values`` (agents x columns x steps) as a profile array and its description beside it."""
    path = Path(path)
    values = np.asarray(values, dtype=np.float32)
    if values.shape[:2] != (len(agents), len(columns)) or values.shape[2] < 2:
        shape = f"{len(agents)} agents x {len(columns)} columns x >= 2 steps"
        raise ValueError(f"values shaped {values.shape} do not fit {shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, values)
    meta = {"start": start.isoformat(), "step_s": step_s, "columns": list(columns), "agents": list(agents)}
    path.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")


def load_profile_row(path: Path, row: int, columns: tuple[str, ...], nonnegative: tuple[str, ...] = ()) -> TimeSeries:
    """One agent's data from a profile array: row ``row``, which must hold finite values in the named columns.

    Raises StartupError naming the file, the row and the column of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise StartupError(f"{path}: profile array not found")
    stat = path.stat()
    values, start, step_s, names = _map_profile_array(path.resolve(), stat.st_mtime_ns, stat.st_size)
    if not 0 <= row < values.shape[0]:
        raise StartupError(f"{path}: no row {row} (it holds {values.shape[0]} agents)")
    missing = [name for name in columns if name not in names]
    if missing:
        raise StartupError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(names)})")
    series = {name: values[row, k] for k, name in enumerate(names)}
    for name in columns:
        bad = np.flatnonzero(~np.isfinite(series[name]))
        if bad.size:
            raise StartupError(f"{path}, row {row}, column {name}, step {bad[0]}: not a finite number")
        if name in nonnegative and (series[name] < 0).any():
            raise StartupError(f"{path}, row {row}, column {name}: must not be negative")
    return TimeSeries(path=path, start=start, step_s=step_s, columns=series)


@functools.lru_cache(maxsize=16)
def _map_profile_array(path: Path, mtime_ns: int, size: int) -> tuple[np.ndarray, datetime, float, list[str]]:
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        start, step_s, names = datetime.fromisoformat(meta["start"]), float(meta["step_s"]), list(meta["columns"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"{meta_path}: not a readable description of {path.name}: {exc}") from exc
    try:
        values = np.load(path, mmap_mode="r")  # read-only: agents never write to their data
    except (OSError, ValueError) as exc:
        raise StartupError(f"{path}: not a readable profile array: {exc}") from exc
    if values.ndim != 3 or values.shape[1] != len(names) or values.shape[2] < 2 or step_s <= 0:
        expected = f"(agents, {len(names)} columns, steps >= 2) with a step > 0"
        raise StartupError(f"{path}: shaped {values.shape}, not {expected}")
    return values, start, step_s, names
