"""The network as the planners see it: linear sensitivities of near-limit buses, lines and transformers.

A ``NetworkView`` is built by the grid agent from the AC power flow before planning. Each row is one quantity
close to its limit (or already outside it): a bus voltage (p.u.), a line's or a transformer's AC loading
(percent of its rating). ``sensitivity[r, c]`` is d(row r) / d(net power at bus column c) in units per kW, with
net power in the load convention of ``net_power_kw`` (> 0 imports), taken at the cycle's operating point by
perturbed AC power flows. Agents at one bus share a column. Reactive power stays as each agent's own.

Loading is the magnitude of a current or an apparent power, so it is not linear across a change of the flow's
direction: the linear estimate holds near the operating point only, which is why the grid agent checks every plan
with an AC power flow after acting. Pure numpy: no power flow here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: Quantities a row may constrain.
ROW_KINDS = ("vm", "line", "trafo")
#: How far inside each network limit a plan aims its linear estimate, for the linearisation's error (p.u., percent).
LINEAR_MARGIN = {"vm": 0.002, "line": 1.0, "trafo": 1.0}


@dataclass(frozen=True)
class NetworkView:
    """Near-limit rows of the network linearised at the operating point; see the module docstring for units."""

    agent_column: dict[str, int]  # agent_id -> column of ``sensitivity`` (its bus)
    kind: tuple[str, ...]  # per row: "vm", "line" or "trafo"
    element: tuple[int, ...]  # per row: the network's bus, line or transformer index
    value: np.ndarray  # per row: now (p.u. or percent)
    lower: np.ndarray  # per row: the least allowed (-inf for loadings)
    upper: np.ndarray  # per row: the most allowed
    sensitivity: np.ndarray  # rows x columns, units per kW of net power (> 0 imports)

    @property
    def rows(self) -> int:
        return len(self.kind)

    def column_of(self, agent_id: str) -> int | None:
        return self.agent_column.get(agent_id)

    def estimate(self, delta_kw: dict[str, float]) -> np.ndarray:
        """Each row after the agents' net powers move by ``delta_kw`` (agent_id -> kW, > 0 imports more)."""
        shift = np.zeros(self.sensitivity.shape[1])
        for agent_id, delta in delta_kw.items():
            column = self.agent_column.get(agent_id)
            if column is not None:
                shift[column] += delta
        return self.value + self.sensitivity @ shift

    def violation(self, values: np.ndarray | None = None) -> np.ndarray:
        """How far each row is outside its limits (>= 0, in its own unit); ``values`` default to now."""
        values = self.value if values is None else values
        return np.maximum(values - self.upper, 0.0) + np.maximum(self.lower - values, 0.0)


def aimed_limits(view: NetworkView) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) per row that plans aim at: ``LINEAR_MARGIN`` inside each limit (a row outside is brought
    that far in), or where the row is now if it is inside its limit but within the margin (it may stay there)."""
    margin = np.array([LINEAR_MARGIN[kind] for kind in view.kind])
    within_high = (view.value > view.upper - margin) & (view.value <= view.upper)
    within_low = (view.value < view.lower + margin) & (view.value >= view.lower)
    upper = np.where(within_high, view.value, view.upper - margin)
    lower = np.where(within_low, view.value, view.lower + margin)
    return lower, upper


def net_shift_kw(commands: Iterable) -> dict[str, float]:
    """agent_id -> the change of its net power (kW, > 0 imports more) were every command applied in full."""
    shift: dict[str, float] = {}
    for command in commands:
        shift[command.agent_id] = shift.get(command.agent_id, 0.0) + command.action.direction * command.power_kw
    return shift
