"""What the grid agent keeps of each cycle: the CSV log row per transformer, metrics, history and timings."""

from __future__ import annotations

import logging

from agents.common.csvlog import CsvLogWriter
from agents.common.metrics import GridMetrics
from agents.common.settings import GridSettings
from agents.cycle.history import CycleHistory
from models.grid import TransformerState
from models.schemas import AgentRecord, CoordinationResult

logger = logging.getLogger(__name__)

GRID_LOG_COLUMNS = (
    "cycle",
    "timestamp",
    "transformer_id",
    "rating_kw",
    "reverse_limit_kw",
    "loading_before_kw",
    "loading_after_kw",
    "state_before",
    "state_after",
    "unfixed_kw",
    "agents_reporting",
    "agents_unreachable",
    "planner",
    "fallback_reason",
    "commands",
    "requested_kw",
    "applied_kw",
    "unreachable",
    "step_ms",
    "plan_ms",
    "act_ms",
    "duration_ms",
    # with --network: the transformer's AC loading, and the whole network after acting (blank without one)
    "loading_percent_before",
    "loading_percent_after",
    "network_converged",
    "network_error",
    "vm_min_pu_after",
    "vm_max_pu_after",
    "line_loading_max_percent_after",
    "buses_outside_after",
    "lines_outside_after",
    # the same before planning, and which line and transformer were the most loaded
    "vm_min_pu_before",
    "vm_max_pu_before",
    "line_loading_max_percent_before",
    "buses_outside_before",
    "lines_outside_before",
    "most_loaded_line_before",
    "most_loaded_line_after",
    "most_loaded_transformer_before",
    "most_loaded_transformer_after",
    "replanned",
)

#: Cycle durations kept for the median in /status.
CYCLE_TIMES_KEPT = 1000


class CycleRecorder:
    """Writes each finished cycle to the grid log, the metrics and the dashboard's history."""

    def __init__(self, settings: GridSettings, metrics: GridMetrics) -> None:
        self.log = CsvLogWriter(settings.log_dir / f"{settings.agent_id}_log.csv", GRID_LOG_COLUMNS)
        self.metrics = metrics
        self.history = CycleHistory()
        self.last_result: CoordinationResult | None = None
        self.cycle_ms: list[float] = []

    def record(self, result: CoordinationResult, records: list[AgentRecord]) -> None:
        """Keep one cycle: ``records`` are the registered agents as the cycle left them."""
        self.last_result = result
        self.metrics.observe_cycle(result)
        self.metrics.observe_network(result)
        self.history.append(result, records)
        self.cycle_ms.append(result.duration_ms)
        del self.cycle_ms[:-CYCLE_TIMES_KEPT]
        for t in result.transformers:
            mine = [a for a in result.actions if a.transformer_id == t.transformer_id]
            self.log.write(
                {
                    "cycle": result.cycle,
                    "timestamp": result.timestamp,
                    **t.model_dump(),
                    "planner": result.planner,
                    "fallback_reason": result.fallback_reason,
                    "commands": len(mine),
                    "requested_kw": sum(a.requested_kw for a in mine),
                    "applied_kw": sum(a.applied_kw for a in mine),
                    "unreachable": ";".join(result.unreachable),
                    "step_ms": result.phase_ms["step"],
                    "plan_ms": result.phase_ms["plan"],
                    "act_ms": result.phase_ms["act"],
                    "duration_ms": result.duration_ms,
                    **_network_columns(result),
                }
            )
        # A line for each cycle where something happened; quiet cycles only at DEBUG (a year has 35,040 of them,
        # and the line costs a tenth of the grid agent's own work in a quiet cycle; the CSV log has every one).
        network = result.network
        eventful = (
            result.actions
            or result.unreachable
            or any(t.state_before is not TransformerState.normal for t in result.transformers)
            or (
                network is not None
                and (not network.converged or network.buses_outside_before or network.lines_outside_before)
            )
        )
        level = logging.INFO if eventful else logging.DEBUG
        if not logger.isEnabledFor(level):
            return
        states = ", ".join(
            f"{t.transformer_id} {t.loading_before_kw:.1f}->{t.loading_after_kw:.1f} kW {t.state_after.value}"
            for t in result.transformers
        )
        logger.log(
            level,
            "cycle %d at %s: %s; %d commands; %.1f ms",
            result.cycle,
            result.timestamp,
            states,
            len(result.actions),
            result.duration_ms,
        )

    def close(self) -> None:
        self.log.close()


def _network_columns(result: CoordinationResult) -> dict:
    """The grid log's network columns of a cycle (none without a network)."""
    network = result.network
    if network is None:
        return {}
    return {
        "network_converged": int(network.converged),
        "network_error": network.error,
        "vm_min_pu_after": network.vm_min_pu_after,
        "vm_max_pu_after": network.vm_max_pu_after,
        "line_loading_max_percent_after": network.line_loading_max_percent_after,
        "buses_outside_after": network.buses_outside_after,
        "lines_outside_after": network.lines_outside_after,
        "vm_min_pu_before": network.vm_min_pu_before,
        "vm_max_pu_before": network.vm_max_pu_before,
        "line_loading_max_percent_before": network.line_loading_max_percent_before,
        "buses_outside_before": network.buses_outside_before,
        "lines_outside_before": network.lines_outside_before,
        "most_loaded_line_before": network.most_loaded_line_before,
        "most_loaded_line_after": network.most_loaded_line_after,
        "most_loaded_transformer_before": network.most_loaded_transformer_before,
        "most_loaded_transformer_after": network.most_loaded_transformer_after,
        "replanned": int(network.replanned),
    }
