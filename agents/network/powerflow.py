"""AC power flow of a network by power-grid-model, from one active and reactive power per bus.

The network is converted once with power-grid-model-io's PandaPowerConverter. Every injection then comes from
the agents, so the copy that is converted has no loads, generators or storage units of its own (the converter
cannot take storage units, and it would split each load into constant power, current and impedance parts);
instead each bus gets one constant-power load, whose ``p_specified`` and ``q_specified`` (W and var, load
convention) are updated before each solve. Lines, transformers with their taps, switches, shunts and the external
grid's voltage setpoint are the network's own; ``slack_vm_pu`` overrides the setpoint.

Outputs are aligned with the network's tables: buses, lines and transformers in index order.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import pandapower as pp
from power_grid_model import (
    CalculationMethod,
    ComponentType,
    DatasetType,
    LoadGenType,
    PowerGridModel,
    initialize_array,
)
from power_grid_model.errors import PowerGridError
from power_grid_model_io.converters import PandaPowerConverter

#: Tables whose elements are replaced by the agents' injections before conversion.
INJECTION_TABLES = (
    "load",
    "sgen",
    "storage",
    "gen",
    "motor",
    "ward",
    "xward",
    "asymmetric_load",
    "asymmetric_sgen",
)
#: Newton-Raphson: voltage tolerance (p.u.) and iteration limit.
ERROR_TOLERANCE_PU = 1e-8
MAX_ITERATIONS = 30
W_PER_KW = 1e3


class PowerFlowError(Exception):
    """A power flow did not converge, or power-grid-model refused its input; the message says why."""


@dataclass(frozen=True)
class FlowResult:
    """One solved power flow, aligned with the network's buses, lines and transformers (index order).

    ``vm_pu`` is NaN at buses that are not energised; loadings are percent of the rating; ``trafo_p_kw`` is the
    active power at each transformer's high-voltage side (kW, > 0 towards its low-voltage side).
    """

    vm_pu: np.ndarray
    line_loading_percent: np.ndarray
    trafo_loading_percent: np.ndarray
    trafo_p_kw: np.ndarray


class PowerFlow:
    """A network converted once to power-grid-model, solved from per-bus injections."""

    def __init__(self, net: pp.pandapowerNet, slack_vm_pu: float | None = None) -> None:
        stripped = copy.deepcopy(net)
        for table in INJECTION_TABLES:
            if table in stripped and not stripped[table].empty:
                stripped[table] = stripped[table].iloc[0:0]
        stripped.pop("profiles", None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                data, extra = PandaPowerConverter().load_input_data(stripped)
        except (NotImplementedError, KeyError, ValueError, TypeError) as exc:
            raise PowerFlowError(f"power-grid-model-io cannot convert it: {type(exc).__name__}: {exc}") from exc
        origin = {i: (info["id_reference"]["table"], info["id_reference"]["index"]) for i, info in extra.items()}
        self.bus_index = net.bus.index.to_numpy()
        self.line_index = net.line.index.to_numpy()
        self.trafo_index = net.trafo.index.to_numpy()
        nodes = data[ComponentType.node]
        self._node_order = _order(nodes["id"], origin, "bus", self.bus_index)
        self._line_order = _order(data[ComponentType.line]["id"], origin, "line", self.line_index)
        self._trafo_order = _order(data[ComponentType.transformer]["id"], origin, "trafo", self.trafo_index)
        # one constant-power load per bus, in bus index order
        loads = initialize_array(DatasetType.input, ComponentType.sym_load, len(self.bus_index))
        first_id = max(origin) + 1 if origin else 0
        loads["id"] = np.arange(first_id, first_id + len(self.bus_index))
        loads["node"] = nodes["id"][np.argsort(self._node_order)]
        loads["status"] = 1
        loads["type"] = LoadGenType.const_power
        loads["p_specified"] = 0.0
        loads["q_specified"] = 0.0
        data[ComponentType.sym_load] = loads
        if slack_vm_pu is not None:
            data[ComponentType.source]["u_ref"] = slack_vm_pu
        self._load_update = initialize_array(DatasetType.update, ComponentType.sym_load, len(self.bus_index))
        self._load_update["id"] = loads["id"]
        try:
            self.model = PowerGridModel(data)
        except PowerGridError as exc:
            raise PowerFlowError(f"power-grid-model refused the converted network: {exc}") from exc

    def _power_flow(self, update_data: dict | None = None) -> dict:
        """Newton-Raphson on the model as it stands (or on a batch of updates); PowerFlowError when it fails."""
        try:
            return self.model.calculate_power_flow(
                update_data=update_data,
                symmetric=True,
                error_tolerance=ERROR_TOLERANCE_PU,
                max_iterations=MAX_ITERATIONS,
                calculation_method=CalculationMethod.newton_raphson,
            )
        except PowerGridError as exc:
            message = str(exc).strip()
            raise PowerFlowError(message.splitlines()[0] if message else type(exc).__name__) from exc

    def solve(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> FlowResult:
        """Solve with ``p_kw`` and ``q_kvar`` drawn at each bus (bus index order, load convention)."""
        self._load_update["p_specified"] = np.asarray(p_kw, dtype=float) * W_PER_KW
        self._load_update["q_specified"] = np.asarray(q_kvar, dtype=float) * W_PER_KW
        self.model.update(update_data={ComponentType.sym_load: self._load_update})
        out = self._power_flow()
        nodes = out[ComponentType.node][np.argsort(self._node_order)]
        lines = out[ComponentType.line][np.argsort(self._line_order)]
        trafos = out[ComponentType.transformer][np.argsort(self._trafo_order)]
        vm = np.where(nodes["energized"] == 1, nodes["u_pu"], np.nan)
        return FlowResult(
            vm_pu=vm,
            line_loading_percent=lines["loading"] * 100.0,
            trafo_loading_percent=trafos["loading"] * 100.0,
            trafo_p_kw=trafos["p_from"] / W_PER_KW,
        )

    def solve_batch(self, p_kw: np.ndarray, q_kvar: np.ndarray) -> FlowResult:
        """Solve many scenarios at once: ``p_kw`` and ``q_kvar`` are (scenarios, buses); results gain that axis.

        One power-grid-model batch calculation; the model's own state (the last ``solve``) is left as it was.
        """
        p_kw, q_kvar = np.atleast_2d(p_kw), np.atleast_2d(q_kvar)
        update = initialize_array(DatasetType.update, ComponentType.sym_load, p_kw.shape)
        update["id"] = self._load_update["id"]
        update["p_specified"] = p_kw * W_PER_KW
        update["q_specified"] = q_kvar * W_PER_KW
        out = self._power_flow({ComponentType.sym_load: update})
        nodes = out[ComponentType.node][:, np.argsort(self._node_order)]
        lines = out[ComponentType.line][:, np.argsort(self._line_order)]
        trafos = out[ComponentType.transformer][:, np.argsort(self._trafo_order)]
        return FlowResult(
            vm_pu=np.where(nodes["energized"] == 1, nodes["u_pu"], np.nan),
            line_loading_percent=lines["loading"] * 100.0,
            trafo_loading_percent=trafos["loading"] * 100.0,
            trafo_p_kw=trafos["p_from"] / W_PER_KW,
        )


def _order(pgm_ids: np.ndarray, origin: dict[int, tuple[str, int]], table: str, index: np.ndarray) -> np.ndarray:
    """For each converted element, its position in the network's ``table`` (so argsort gives index order)."""
    position = {int(i): k for k, i in enumerate(index)}
    order = np.empty(len(pgm_ids), dtype=np.int64)
    for k, pgm_id in enumerate(pgm_ids):
        kind, element = origin[int(pgm_id)]
        if kind != table:
            raise PowerFlowError(f"power-grid-model id {pgm_id} came from {kind}, expected {table}")
        order[k] = position[int(element)]
    if len(order) != len(index):
        raise PowerFlowError(f"the converted network has {len(order)} {table} elements, the network {len(index)}")
    return order
