"""Sensitivities of bus voltages and line and transformer loadings to each bus's net active power.

Taken by perturbed AC power flows at the operating point, all in one power-grid-model batch: two scenarios per
bus (``p + step`` and ``p - step`` kW there, reactive power unchanged), a central difference. Buses, not agents,
are perturbed: agents at one bus share a column. A ``SensitivityCache`` reuses them while the injections have
moved less than a threshold, and counts how often it had to take them afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.network.powerflow import PowerFlow

#: Perturbation of each bus's net power (kW) for the central difference.
STEP_KW = 1.0
#: The cache takes sensitivities afresh once any bus's active or reactive power moved more than this (kW, kvar).
REFRESH_KW = 5.0


@dataclass(frozen=True)
class Sensitivities:
    """d(quantity)/d(net kW at bus ``columns[c]``): voltages in p.u./kW, loadings in percent/kW.

    ``p_kw``, ``q_kvar`` are the operating point (per bus, load convention) they were taken at.
    """

    p_kw: np.ndarray
    q_kvar: np.ndarray
    columns: np.ndarray  # bus positions (index order) perturbed, one column each
    vm: np.ndarray  # buses x columns
    line: np.ndarray  # lines x columns
    trafo: np.ndarray  # transformers x columns


def sensitivities(
    flow: PowerFlow, p_kw: np.ndarray, q_kvar: np.ndarray, columns: np.ndarray, step_kw: float = STEP_KW
) -> Sensitivities:
    """Central differences of one batch of 2 x len(columns) AC power flows around (p_kw, q_kvar)."""
    columns = np.asarray(columns, dtype=np.int64)
    n = len(columns)
    p = np.tile(np.asarray(p_kw, dtype=float), (2 * n, 1))
    p[2 * np.arange(n), columns] += step_kw
    p[2 * np.arange(n) + 1, columns] -= step_kw
    q = np.tile(np.asarray(q_kvar, dtype=float), (2 * n, 1))
    if n == 0:
        empty = np.zeros((0, 0))
        return Sensitivities(p_kw, q_kvar, columns, empty, empty, empty)
    out = flow.solve_batch(p, q)

    def diff(values: np.ndarray) -> np.ndarray:
        return ((values[0::2] - values[1::2]) / (2 * step_kw)).T

    return Sensitivities(
        p_kw=np.array(p_kw, dtype=float),
        q_kvar=np.array(q_kvar, dtype=float),
        columns=columns,
        vm=np.nan_to_num(diff(out.vm_pu)),  # a dead bus, or a perturbed flow that failed: no effect, not NaN in an LP
        line=np.nan_to_num(diff(out.line_loading_percent)),
        trafo=np.nan_to_num(diff(out.trafo_loading_percent)),
    )


class SensitivityCache:
    """Sensitivities reused while the operating point has moved less than ``threshold_kw`` at every bus."""

    def __init__(self, flow: PowerFlow, threshold_kw: float = REFRESH_KW) -> None:
        self.flow, self.threshold_kw = flow, threshold_kw
        self.cached: Sensitivities | None = None
        self.refreshes = 0

    def get(self, p_kw: np.ndarray, q_kvar: np.ndarray, columns: np.ndarray) -> Sensitivities:
        cached = self.cached
        if (
            cached is not None
            and np.array_equal(cached.columns, columns)
            and np.max(np.abs(cached.p_kw - p_kw), initial=0.0) < self.threshold_kw
            and np.max(np.abs(cached.q_kvar - q_kvar), initial=0.0) < self.threshold_kw
        ):
            return cached
        self.cached = sensitivities(self.flow, p_kw, q_kvar, columns)
        self.refreshes += 1
        return self.cached
