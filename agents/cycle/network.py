"""The grid agent's network (``--network``): an AC power flow before planning and after acting, every cycle.

The agents' reports are summed at their buses: active power is their ``net_power_kw``; reactive power is their
load's own (its profile's power factor, ``load.served_kvar``) plus their PV's, which is unity or follows
VDE-AR-N 4105's cos phi(P) (``--pv-reactive cosphi_p``). Bus voltage limits are each bus's ``min_vm_pu`` and
``max_vm_pu`` (``--vm-min-pu``/``--vm-max-pu`` at buses below 1 kV instead); lines and transformers may load to
100 %. A power flow that fails is reported and logged, never raised: the cycle's transformer-only assessment
then stands.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from agents.common.scenario import TransformerSpec
from agents.common.settings import GridSettings, StartupError
from agents.network.layout import Layout, network_layout
from agents.network.load import load_network
from agents.network.powerflow import FlowResult, PowerFlow, PowerFlowError
from agents.network.sensitivity import SensitivityCache
from agents.planners.network import NetworkView
from models.network import ac_violation_kw, classify_ac_loading, pv_reactive_kvar, summarize_flow
from models.schemas import (
    AgentStatus,
    NetworkBus,
    NetworkCycle,
    NetworkLine,
    NetworkState,
    NetworkTransformer,
    TransformerReport,
)

logger = logging.getLogger(__name__)

#: Buses below this voltage take --vm-min-pu / --vm-max-pu instead of their own limits.
LOW_VOLTAGE_KV = 1.0
#: Voltage limits of a bus that states none.
DEFAULT_MIN_VM_PU, DEFAULT_MAX_VM_PU = 0.9, 1.1
MS_PER_S = 1000.0
#: Rows the planners get: buses within this of a voltage limit (p.u.), lines and transformers loaded above this
#: (percent), or already outside their limits.
NEAR_VM_PU = 0.02
NEAR_LOADING_PERCENT = 80.0
#: Lines and transformers may load to this (percent of their rating).
MAX_LOADING_PERCENT = 100.0


@dataclass(frozen=True)
class Injections:
    """What the agents draw at each bus (bus index order, kW and kvar, load convention), and who is not placed."""

    p_kw: np.ndarray
    q_kvar: np.ndarray
    placed: int
    unplaced: list[str]


@dataclass(frozen=True)
class Solved:
    """One power flow: its injections and its result, or why it failed."""

    injections: Injections
    result: FlowResult | None
    error: str | None = None


class NetworkMonitor:
    """The network of the feeder, converted once; solves and keeps the power flows of each cycle."""

    def __init__(self, settings: GridSettings) -> None:
        self.network = load_network(settings.network)
        net = self.network.net
        self.pv_reactive = settings.pv_reactive
        try:
            self.flow = PowerFlow(net, settings.slack_vm_pu)
        except PowerFlowError as exc:
            raise StartupError(f"--network {self.network.source}: {exc}") from exc
        bus = net.bus
        self.buses = bus.index.to_numpy()
        self._position = {int(b): k for k, b in enumerate(self.buses)}
        self.bus_names = bus["name"].tolist() if "name" in bus else [None] * len(bus)
        self.vn_kv = bus["vn_kv"].to_numpy(dtype=float)
        self.min_vm_pu = _limit(bus, "min_vm_pu", DEFAULT_MIN_VM_PU)
        self.max_vm_pu = _limit(bus, "max_vm_pu", DEFAULT_MAX_VM_PU)
        low_voltage = self.vn_kv < LOW_VOLTAGE_KV
        if settings.vm_min_pu is not None:
            self.min_vm_pu[low_voltage] = settings.vm_min_pu
        if settings.vm_max_pu is not None:
            self.max_vm_pu[low_voltage] = settings.vm_max_pu
        self.trafo_ids = [self.network.transformer_ids[int(i)] for i in self.flow.trafo_index]
        self.trafo_names = net.trafo["name"].tolist() if "name" in net.trafo else [None] * len(self.trafo_ids)
        self.trafo_rating_kw = (net.trafo["sn_mva"].to_numpy(dtype=float) * 1e3).tolist()
        self.line_ends = net.line[["from_bus", "to_bus"]].to_numpy(dtype=int)
        self.before: Solved | None = None
        self._before_ms = 0.0
        self.sensitivity = SensitivityCache(self.flow)
        self.replans = 0  # cycles that planned a second time because the AC check after acting found a limit broken
        self.after = self._solve(self.injections([]))  # the unloaded network: proves the conversion at start-up
        if self.after.error is not None:
            logger.warning("network %s: the unloaded power flow failed: %s", self.network.name, self.after.error)
        self.cycle, self.timestamp = 0, None
        logger.info(
            "network %s: %d buses, %d lines, %d transformers; pv reactive power %s",
            self.network.name,
            len(self.buses),
            len(self.line_ends),
            len(self.trafo_ids),
            self.pv_reactive,
        )

    # -- what the registry and planners read -----------------------------------------------------
    def transformer_specs(self) -> list[TransformerSpec]:
        """The network's transformers as a scenario's: rated at their apparent power (kVA taken as kW)."""
        return [
            TransformerSpec(id=tid, rating_kw=rating)
            for tid, rating in zip(self.trafo_ids, self.trafo_rating_kw, strict=True)
            if np.isfinite(rating) and rating > 0
        ]

    # -- the cycle -------------------------------------------------------------------------------
    def injections(self, statuses: Iterable[AgentStatus]) -> Injections:
        """Sum the agents' active and reactive power at their buses."""
        p_kw = np.zeros(len(self.buses))
        q_kvar = np.zeros(len(self.buses))
        placed, unplaced = 0, []
        for status in statuses:
            k = self._position.get(status.bus) if status.bus is not None else None
            if k is None:
                unplaced.append(status.agent_id)
                continue
            placed += 1
            p_kw[k] += status.net_power_kw
            q_kvar[k] += self.reactive_kvar(status)
        return Injections(p_kw, q_kvar, placed, sorted(unplaced))

    def reactive_kvar(self, status: AgentStatus) -> float:
        """An agent's reactive power (kvar, > 0 drawn): its load's at the load's power factor, plus its PV's."""
        load_kvar = status.load.served_kvar if status.load is not None and status.load.served_kvar is not None else 0.0
        pv_kvar = 0.0
        if status.solar is not None:
            pv_kvar = pv_reactive_kvar(status.solar.output_kw, status.solar.capacity_kwp, self.pv_reactive)
        return load_kvar + pv_kvar

    def _solve(self, injections: Injections) -> Solved:
        try:
            return Solved(injections, self.flow.solve(injections.p_kw, injections.q_kvar))
        except PowerFlowError as exc:
            return Solved(injections, None, str(exc))

    def assess(self, statuses: Iterable[AgentStatus], cycle: int) -> Solved:
        """The power flow before planning, from the agents' reports after their step."""
        started = time.perf_counter()
        self.before = self._solve(self.injections(statuses))
        self._before_ms = (time.perf_counter() - started) * MS_PER_S
        if self.before.error is not None:
            logger.warning("cycle %d: the power flow before planning failed: %s", cycle, self.before.error)
        return self.before

    def view(self, statuses: Iterable[AgentStatus], solved: Solved | None = None) -> NetworkView | None:
        """The planners' network: near-limit rows of ``solved`` (the power flow before planning), linearised there.

        None when that power flow failed. Sensitivities come from the cache, taken afresh once the injections moved.
        """
        solved = solved or self.before
        if solved is None or solved.result is None:
            return None
        result = solved.result
        agent_bus = {
            s.agent_id: self._position[s.bus] for s in statuses if s.bus is not None and s.bus in self._position
        }
        columns = np.array(sorted(set(agent_bus.values())), dtype=np.int64)
        column_of = {int(b): c for c, b in enumerate(columns)}
        vm = result.vm_pu
        near_bus = np.isfinite(vm) & ((vm > self.max_vm_pu - NEAR_VM_PU) | (vm < self.min_vm_pu + NEAR_VM_PU))
        near_line = np.nan_to_num(result.line_loading_percent) > NEAR_LOADING_PERCENT
        near_trafo = np.nan_to_num(result.trafo_loading_percent) > NEAR_LOADING_PERCENT
        if not (near_bus.any() or near_line.any() or near_trafo.any()) or len(columns) == 0:
            sens_vm = sens_line = sens_trafo = np.zeros((0, len(columns)))
        else:
            perturbed, source = self.perturbation(columns, near_bus, near_line, near_trafo)
            sens = self.sensitivity.get(solved.injections.p_kw, solved.injections.q_kvar, perturbed)
            sens_vm, sens_line, sens_trafo = (
                _widen(part, source) for part in (sens.vm[near_bus], sens.line[near_line], sens.trafo[near_trafo])
            )
        buses, lines, trafos = np.flatnonzero(near_bus), np.flatnonzero(near_line), np.flatnonzero(near_trafo)
        no_lower = np.full(len(lines) + len(trafos), -np.inf)  # loadings have an upper limit only
        return NetworkView(
            agent_column={a: column_of[k] for a, k in agent_bus.items()},
            kind=("vm",) * len(buses) + ("line",) * len(lines) + ("trafo",) * len(trafos),
            element=tuple(int(self.buses[k]) for k in buses)
            + tuple(int(self.flow.line_index[k]) for k in lines)
            + tuple(int(self.flow.trafo_index[k]) for k in trafos),
            value=np.concatenate([vm[buses], result.line_loading_percent[lines], result.trafo_loading_percent[trafos]]),
            lower=np.concatenate([self.min_vm_pu[buses], no_lower]),
            upper=np.concatenate([self.max_vm_pu[buses], np.full(len(lines) + len(trafos), MAX_LOADING_PERCENT)]),
            sensitivity=np.vstack([sens_vm, sens_line, sens_trafo]).reshape(-1, len(columns)),
        )

    def perturbation(
        self, columns: np.ndarray, near_bus: np.ndarray, near_line: np.ndarray, near_trafo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which buses to perturb for the sensitivities of ``columns`` (bus positions with agents), and whence each
        column takes its own: (bus positions to perturb, per column an index into them or -1 for none).

        An LV grid (below 1 kV, behind its transformer) with a near-limit bus, line or transformer (by its LV side)
        has its agents perturbed one bus at a time. Agents of other LV grids reach it only through the MV grid, by
        far less, and read 0. An element at 1 kV or above is moved by every agent: those of an LV grid without a
        near element of its own then share the sensitivity of their transformer's LV busbar (their own LV grid's
        losses aside), so that a feeder of a thousand homes in forty LV grids takes about a hundred power flows
        to linearise, not two thousand; agents at 1 kV and above are perturbed one bus at a time.
        """
        zone_of = self._zone_of
        near_zones: set[int] = set()
        for k in np.flatnonzero(near_bus):
            near_zones.add(int(zone_of[k]))
        for k in np.flatnonzero(near_line):
            near_zones.add(int(zone_of[self._position[int(self.line_ends[k][0])]]))
        for k in np.flatnonzero(near_trafo):
            near_zones.add(int(zone_of[self._position[int(self.trafo_lv_bus[k])]]))
        upstream = -1 in near_zones  # an element at MV or above
        zones = zone_of[columns]
        own = np.isin(zones, list(near_zones)) | (zones == -1) if upstream else np.isin(zones, list(near_zones))
        perturbed = list(columns[own])
        source = np.full(len(columns), -1, dtype=np.int64)
        source[own] = np.arange(len(perturbed))
        if upstream:
            busbar = self._zone_busbar
            for zone in np.unique(zones[~own]):
                source[~own & (zones == zone)] = len(perturbed)
                perturbed.append(busbar[int(zone)])
        return np.array(perturbed, dtype=np.int64), source

    @functools.cached_property
    def _zone_busbar(self) -> dict[int, int]:
        """Per transformer index: the bus position of its LV side."""
        return {
            int(t): self._position[int(b)]
            for t, b in zip(self.flow.trafo_index, self.trafo_lv_bus, strict=True)
            if int(b) in self._position
        }

    @functools.cached_property
    def _zone_of(self) -> np.ndarray:
        """Per bus position: the index of the transformer feeding its LV grid, or -1 at 1 kV and above."""
        feeding = self.network.feeding_transformer
        zone = np.array([feeding.get(int(b)) if feeding.get(int(b)) is not None else -1 for b in self.buses])
        return np.where(self.vn_kv < LOW_VOLTAGE_KV, zone, -1)

    @functools.cached_property
    def trafo_lv_bus(self) -> np.ndarray:
        """Each transformer's low-voltage bus, in the order of the power flow's transformers."""
        return self.network.net.trafo.loc[self.flow.trafo_index, "lv_bus"].to_numpy(dtype=int)

    def outside(self, solved: Solved | None) -> bool:
        """True when ``solved`` converged and left a bus, line or transformer outside its limits."""
        if solved is None or solved.result is None:
            return False
        result = solved.result
        summary = summarize_flow(
            result.vm_pu, self.min_vm_pu, self.max_vm_pu, result.line_loading_percent, result.trafo_loading_percent
        )  # the same count, with the same tolerances, as the cycle reports
        return summary.buses_outside + summary.lines_outside + summary.transformers_outside > 0

    def check(self, statuses: Iterable[AgentStatus]) -> Solved:
        """A power flow of the agents as they are now (after acting), kept for nothing but the answer."""
        return self._solve(self.injections(statuses))

    def record(self, statuses: Iterable[AgentStatus], cycle: int, timestamp: datetime | None) -> NetworkCycle:
        """The power flow after acting, and the cycle's report of both."""
        started = time.perf_counter()
        self.after = self._solve(self.injections(statuses))
        self.cycle, self.timestamp = cycle, timestamp
        elapsed_ms = (time.perf_counter() - started) * MS_PER_S + self._before_ms
        if self.after.error is not None:
            logger.warning("cycle %d: the power flow after acting failed: %s", cycle, self.after.error)
        before = self.before or Solved(self.after.injections, None, "no power flow before planning")
        errors = [f"{when}: {s.error}" for when, s in (("before", before), ("after", self.after)) if s.error]
        figures = {}
        for when, solved in (("before", before), ("after", self.after)):
            if solved.result is None:
                continue
            result = solved.result
            summary = summarize_flow(
                result.vm_pu,
                self.min_vm_pu,
                self.max_vm_pu,
                result.line_loading_percent,
                result.trafo_loading_percent,
            )
            figures.update(
                {
                    f"vm_min_pu_{when}": _number(summary.vm_min_pu),
                    f"vm_max_pu_{when}": _number(summary.vm_max_pu),
                    f"line_loading_max_percent_{when}": summary.line_loading_max_percent,
                    f"buses_outside_{when}": summary.buses_outside,
                    f"lines_outside_{when}": summary.lines_outside,
                    f"transformer_loading_max_percent_{when}": summary.transformer_loading_max_percent,
                    f"transformers_outside_{when}": summary.transformers_outside,
                    f"most_loaded_line_{when}": (
                        None
                        if summary.line_loading_max_position is None
                        else int(self.flow.line_index[summary.line_loading_max_position])
                    ),
                    f"most_loaded_transformer_{when}": (
                        None
                        if summary.transformer_loading_max_position is None
                        else self.trafo_ids[summary.transformer_loading_max_position]
                    ),
                }
            )
        return NetworkCycle(
            converged=not errors,
            error="; ".join(errors) or None,
            agents_placed=self.after.injections.placed,
            agents_unplaced=self.after.injections.unplaced,
            powerflow_ms=elapsed_ms,
            **figures,
        )

    def amend(self, reports: list[TransformerReport]) -> list[TransformerReport]:
        """The cycle's transformer reports with their AC loading; where a power flow converged, its state stands."""
        flows = {
            when: self._trafo_flows(solved)
            for when, solved in (("before", self.before), ("after", self.after))
            if solved is not None
        }
        amended = []
        for report in reports:
            update: dict = {}
            for when, by_id in flows.items():
                if report.transformer_id not in by_id:
                    continue
                loading_percent, power_kw = by_id[report.transformer_id]
                update[f"loading_percent_{when}"] = loading_percent
                update[f"ac_power_kw_{when}"] = power_kw
                update[f"state_{when}"] = classify_ac_loading(loading_percent, power_kw, report.reverse_limit_kw)
                if when == "after":
                    update["unfixed_kw"] = ac_violation_kw(
                        loading_percent, power_kw, report.rating_kw, report.reverse_limit_kw
                    )
            amended.append(report.model_copy(update=update) if update else report)
        return amended

    def _trafo_flows(self, solved: Solved) -> dict[str, tuple[float, float]]:
        """transformer_id -> (AC loading in percent, active power at its high-voltage side in kW)."""
        if solved.result is None:
            return {}
        result = solved.result
        flows = zip(self.trafo_ids, result.trafo_loading_percent, result.trafo_p_kw, strict=True)
        return {tid: (float(loading), float(p)) for tid, loading, p in flows if np.isfinite(loading)}

    @functools.cached_property
    def layout(self) -> Layout:
        """Where the dashboard draws each bus and how far it lies from its transformer; made when first asked."""
        return network_layout(self.network.net)

    # -- GET /network ----------------------------------------------------------------------------
    def state(self) -> NetworkState:
        """Every bus, line and transformer as of the last power flow after acting."""
        solved = self.after
        result = solved.result
        p_kw, q_kvar = solved.injections.p_kw, solved.injections.q_kvar
        vm = result.vm_pu if result is not None else np.full(len(self.buses), np.nan)
        lines = result.line_loading_percent if result is not None else np.full(len(self.line_ends), np.nan)
        trafos = result.trafo_loading_percent if result is not None else np.full(len(self.trafo_ids), np.nan)
        trafo_p = result.trafo_p_kw if result is not None else np.full(len(self.trafo_ids), np.nan)
        return NetworkState(
            network=self.network.name,
            cycle=self.cycle,
            timestamp=self.timestamp,
            converged=result is not None,
            buses=[
                NetworkBus(
                    bus=int(bus),
                    name=_text(self.bus_names[k]),
                    vn_kv=float(self.vn_kv[k]),
                    vm_pu=_number(vm[k]),
                    min_vm_pu=float(self.min_vm_pu[k]),
                    max_vm_pu=float(self.max_vm_pu[k]),
                    p_kw=float(p_kw[k]),
                    q_kvar=float(q_kvar[k]),
                )
                for k, bus in enumerate(self.buses)
            ],
            lines=[
                NetworkLine(
                    line=int(line), from_bus=int(ends[0]), to_bus=int(ends[1]), loading_percent=_number(lines[k])
                )
                for k, (line, ends) in enumerate(zip(self.flow.line_index, self.line_ends, strict=True))
            ],
            transformers=[
                NetworkTransformer(
                    transformer=int(trafo),
                    name=_text(self.trafo_names[k]),
                    transformer_id=self.trafo_ids[k],
                    loading_percent=_number(trafos[k]),
                    p_kw=_number(trafo_p[k]),
                )
                for k, trafo in enumerate(self.flow.trafo_index)
            ],
        )


def _widen(part: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Each column's sensitivities from the perturbed bus it takes them from (``source``; -1: none, 0)."""
    whole = np.zeros((part.shape[0], len(source)))
    taken = source >= 0
    whole[:, taken] = part[:, source[taken]]
    return whole


def _limit(bus, column: str, default: float) -> np.ndarray:
    values = bus[column].to_numpy(dtype=float) if column in bus else np.full(len(bus), np.nan)
    return np.where(np.isfinite(values), values, default)


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
