"""The grid agent's memory of recent cycles, compact, for the dashboard."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from models.schemas import AgentRecord, CoordinationResult

#: Cycles the grid agent remembers for the dashboard (30 days of 15-minute steps).
HISTORY_CYCLES = 2880
#: Agents whose state of charge is kept per cycle; past this many the chart would be unreadable anyway.
SOC_SERIES_LIMIT = 24
#: What a cycle row keeps of the network's power flows (with --network).
NETWORK_FIGURES = (
    "vm_min_pu_before",
    "vm_max_pu_before",
    "vm_min_pu_after",
    "vm_max_pu_after",
    "line_loading_max_percent_before",
    "line_loading_max_percent_after",
)


class CycleHistory:
    """The last ``limit`` cycles, compact: loadings against limits per transformer, SoC per agent, plan figures."""

    def __init__(self, limit: int = HISTORY_CYCLES, soc_series_limit: int = SOC_SERIES_LIMIT) -> None:
        self.limit = limit
        self.soc_series_limit = soc_series_limit
        self.rows: deque[dict[str, Any]] = deque(maxlen=limit)
        self.soc_agents: list[str] = []
        self.keep: Callable[[dict[str, Any]], None] | None = None  # where each new row is also kept, if anywhere

    def restore(self, rows: Iterable[dict[str, Any]]) -> None:
        """Take back rows kept before a restart (oldest first), and the agents whose SoC they follow."""
        for row in rows:
            self.rows.append(row)
            for agent_id in row.get("soc_fraction", {}):
                if agent_id not in self.soc_agents and len(self.soc_agents) < self.soc_series_limit:
                    self.soc_agents.append(agent_id)

    def append(self, result: CoordinationResult, records: Iterable[AgentRecord]) -> None:
        """Remember one finished cycle; ``records`` are the registered agents as the cycle left them."""
        soc: dict[str, float] = {}
        full = len(self.soc_agents) >= self.soc_series_limit
        # storage systems first, then homes, by id; once the series are chosen, only they are looked at (sorting
        # every agent every cycle was a fiftieth of the grid agent's time at 10,000 homes)
        chosen = set(self.soc_agents)
        ordered = records if full else sorted(records, key=lambda r: (r.agent_type.value != "battery", r.agent_id))
        for record in ordered:
            if full and record.agent_id not in chosen:
                continue
            status = record.last_status
            if status is None or status.battery is None:
                continue
            if not full and record.agent_id not in chosen and len(self.soc_agents) < self.soc_series_limit:
                self.soc_agents.append(record.agent_id)
                chosen.add(record.agent_id)
            if record.agent_id in chosen:
                soc[record.agent_id] = status.battery.soc_fraction
        if full:  # in the series' order, as the sorted pass gives them
            soc = {agent_id: soc[agent_id] for agent_id in self.soc_agents if agent_id in soc}
        row = {
            "cycle": result.cycle,
            "timestamp": result.timestamp.isoformat() if result.timestamp else None,
            "planner": result.planner,
            "fallback": result.fallback_reason is not None,
            "transformers": {
                t.transformer_id: {
                    "loading_before_kw": t.loading_before_kw,
                    "loading_after_kw": t.loading_after_kw,
                    "rating_kw": t.rating_kw,
                    "reverse_limit_kw": t.reverse_limit_kw,
                    "state_after": t.state_after.value,
                }
                for t in result.transformers
            },
            "soc_fraction": soc,
            "curtailed_kw": sum(a.applied_kw for a in result.actions if a.action.value == "curtail_solar"),
            "shed_kw": sum(a.applied_kw for a in result.actions if a.action.value == "shed_load"),
            "commands": len(result.actions),
            "unreachable": len(result.unreachable),
            "network": (
                {key: getattr(result.network, key) for key in NETWORK_FIGURES} if result.network is not None else None
            ),
        }
        self.rows.append(row)
        if self.keep is not None:
            self.keep(row)

    def since(self, cycle: int) -> list[dict[str, Any]]:
        """The remembered cycles after ``cycle``."""
        return [row for row in self.rows if row["cycle"] > cycle]
