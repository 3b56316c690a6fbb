"""Where a device agent stands in simulated time: the data row its ``--start`` names, the running feeder's step
it joins afresh at, and the grid agent's cycle an ``X-Cycle-Id`` names."""

from __future__ import annotations

from datetime import datetime

from agents.common.data import TimeSeries
from agents.common.settings import StartupError
from models.schemas import FeederClock


def start_index(data: TimeSeries, text: str) -> int:
    """The data row a ``--start`` time names; a clear StartupError otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise StartupError(f"--start {text!r}: not an ISO 8601 time such as 2025-07-15T17:00") from None
    if when.tzinfo is not None:
        raise StartupError(f"--start {text!r}: give the data's local time without a UTC offset")
    try:
        return data.index_of(when)
    except ValueError as exc:
        raise StartupError(f"--start {text!r}: {exc}") from None


def split_cycle_id(cycle_id: str) -> tuple[str, int]:
    """``X-Cycle-Id`` (``run:cycle``, ``models.schemas.CYCLE_ID_PATTERN``) as the grid agent's run and its cycle."""
    run, _, number = cycle_id.rpartition(":")
    return run, int(number)


def cycle_number(cycle_id: str | None, clock: FeederClock) -> int:
    """The grid agent's cycle that ``X-Cycle-Id`` names, on the clock's count; the clock's next without one, or
    from another run of the grid agent."""
    if cycle_id is not None:
        run, number = split_cycle_id(cycle_id)
        if run == clock.run_id:
            return number
    return clock.cycle + 1


def feeder_index(data: TimeSeries, when: datetime) -> tuple[int, list[str]]:
    """The data row for the feeder's time ``when``, and what the agent does where its data lacks that time.

    A time before the data's start or past its end wraps as a long run does past the end: the data's row
    ``index % len(data)``, while the agent's clock says ``when``. A time between two rows takes the one before.
    """
    steps, rest_s = divmod((when - data.start).total_seconds(), data.step_s)
    index, caveats = int(steps), []
    if not 0 <= index < len(data):
        last = data.timestamp(len(data) - 1).isoformat()
        caveats.append(
            f"{when.isoformat()} is outside its data ({data.start.isoformat()} to {last}): its data wraps, "
            f"row {index % len(data)} of {len(data)}"
        )
    if rest_s:
        caveats.append(f"{when.isoformat()} falls between two rows of its data: it takes the one before")
    return index, caveats
