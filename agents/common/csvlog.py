"""The CSV log writer: a header, then whole rows, each flushed as it is written."""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class CsvLogWriter:
    """Append rows to one CSV file; a killed process leaves no torn row behind.

    Each row is formatted in memory and written with a single ``write`` call followed by a
    flush, so the file only ever holds whole rows. An existing file with the same header is
    appended to; one with another header, or any when ``fresh``, is moved aside to
    ``<name>.old.csv``, so one file never mixes two runs' step numbers.
    """

    def __init__(self, path: Path, columns: Sequence[str], fresh: bool = False) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = self._format(dict(zip(self.columns, self.columns, strict=True)))
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(encoding="utf-8", newline="") as existing:
                if fresh or existing.readline() != header:
                    self.path.replace(self.path.with_suffix(".old.csv"))
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")  # writes each row with one call, flushed after
        if self._file.tell() == 0:
            self._file.write(header)
            self._file.flush()

    def _format(self, row: Mapping[str, Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([_cell(row.get(column)) for column in self.columns])
        return buffer.getvalue()

    def last_value(self, column: str) -> str | None:
        """The named column of the file's last whole row, or None when it has no data row."""
        with self.path.open("rb") as f:
            f.seek(0, io.SEEK_END)
            f.seek(max(f.tell() - 8192, 0))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
        rows = list(csv.reader(lines[-1:])) if len(lines) > 1 else []
        if not rows or rows[0] == self.columns or len(rows[0]) != len(self.columns):
            return None
        return rows[0][self.columns.index(column)]

    def write(self, row: Mapping[str, Any]) -> None:
        """Write one whole row and flush it."""
        self.write_values([row.get(column) for column in self.columns])

    def write_values(self, values: Sequence[Any]) -> None:
        """Write one whole row given as its values in column order, and flush it."""
        # floats inline (most cells are): rounded when finite (x - x is 0.0 then, nan otherwise), else empty
        self._writer.writerow([(round(v, 6) if v - v == 0.0 else "") if type(v) is float else _cell(v) for v in values])
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if not self._file.closed:
            self._file.close()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    kind = type(value)
    if kind is float:  # the common case first: one row per step per agent is a hot path
        return round(value, 6) if math.isfinite(value) else ""
    if kind is int or kind is str:
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return "" if not math.isfinite(value) else round(float(value), 6)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return value
