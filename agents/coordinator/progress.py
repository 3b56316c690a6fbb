"""How the coordinator shows cycles as they run: a line per cycle for short runs, a progress bar for long ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: Runs of more cycles than this get a progress bar instead of a line per cycle.
LINES_UP_TO_CYCLES = 20


class CycleRateColumn(ProgressColumn):
    """Cycles per second, as rich measures the task's speed."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- cycles/s" if speed is None else f"{speed:.1f} cycles/s", style="progress.data.speed")


class CycleProgress(Progress):
    """A progress bar with a second line that says where the run stands (simulated time, limits, trouble)."""

    detail: Text = Text("")

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self.detail


def uses_progress_bar(cycles: int) -> bool:
    """Whether a run of ``cycles`` cycles shows a progress bar rather than a line per cycle."""
    return cycles > LINES_UP_TO_CYCLES


@contextmanager
def cycle_display(
    console: Console, cycles: int, print_cycle: Callable[[dict[str, Any]], None]
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yield the function that shows one cycle's result.

    ``print_cycle`` for short runs, a progress bar's update for long ones.
    """
    if not uses_progress_bar(cycles):
        yield print_cycle
        return
    progress = CycleProgress(
        TextColumn("[bold]cycles"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        CycleRateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        expand=True,
    )
    counts = {"before": 0, "after": 0, "fallbacks": 0, "unreachable": 0}

    with progress:
        task = progress.add_task("cycles", total=cycles)

        def show(result: dict[str, Any]) -> None:
            counts["before"] += sum(t["state_before"] != "normal" for t in result["transformers"])
            counts["after"] += sum(t["state_after"] != "normal" for t in result["transformers"])
            counts["fallbacks"] += bool(result.get("fallback_reason"))
            counts["unreachable"] += len(result["unreachable"])
            stamp = (result["timestamp"] or "-").replace("T", " ")[:16]
            detail = Text(
                f"  simulated {stamp}   planner {result['planner']}   steps outside limits {counts['before']} -> "
                f"{counts['after']}",
                no_wrap=True,
                overflow="ellipsis",
            )
            if counts["fallbacks"]:
                detail.append(f"   fallbacks {counts['fallbacks']}", style="yellow")
            if counts["unreachable"]:
                detail.append(f"   unreachable {counts['unreachable']}", style="red")
            progress.detail = detail
            progress.update(task, advance=1)

        yield show
