"""The planners' picture of the feeder, built in one place from what the agents report.

Planners read only what ``build_snapshot`` makes (``agents.planners.base``), never the wire's
``AgentStatus``. An agent's battery becomes a ``BatteryView``. What an agent does not report is
assumed here and nowhere else:

- no ``battery`` in its status (an agent without a battery, or one that reports only its
  headroom): ``AgentFlex.battery`` is None; planners see its battery headroom for this step only;
- a battery report without ``charge_efficiency_fraction`` / ``discharge_efficiency_fraction``
  (an agent older than those fields): ``UNREPORTED_EFFICIENCY_FRACTION`` each way;
- without ``soc_start_fraction``: the start-of-step energy worked back from the end-of-step SoC
  and the power held through the step, with those efficiencies (``models.devices.stored_kwh``);
- without ``local_setpoint_kw``: the battery's power as reported (its policy's choice, unless a
  command still holds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agents.planners.base import AgentFlex, BatteryView, Snapshot, TransformerSnapshot
from agents.planners.network import NetworkView
from models.devices import HOME_BATTERY, stored_kwh
from models.grid import transformer_loading_kw
from models.schemas import AgentStatus, BatteryStatus, CurtailAction

#: Charge and discharge efficiency assumed for a battery whose agent does not report its own:
#: a home battery's (``models.devices.HOME_BATTERY``), the most common battery on a feeder.
UNREPORTED_EFFICIENCY_FRACTION = HOME_BATTERY.charge_efficiency_fraction


def feeder_loadings(statuses: Iterable[AgentStatus], transformer_ids: Iterable[str] = ()) -> dict[str, float]:
    """Loading of every transformer (kW): the sum of its agents' net powers; listed ones start at 0."""
    by_transformer: dict[str, list[float]] = {tid: [] for tid in transformer_ids}
    for status in statuses:
        by_transformer.setdefault(status.transformer_id, []).append(status.net_power_kw)
    return {tid: transformer_loading_kw(powers) for tid, powers in by_transformer.items()}


def battery_view(battery: BatteryStatus, step_s: float) -> BatteryView:
    """A battery report as the planners see it; what it leaves out is assumed as the module docstring says."""
    capacity = battery.capacity_kwh
    energy_min, energy_max = battery.soc_min_fraction * capacity, battery.soc_max_fraction * capacity
    eta_c = _or(battery.charge_efficiency_fraction, UNREPORTED_EFFICIENCY_FRACTION)
    eta_d = _or(battery.discharge_efficiency_fraction, UNREPORTED_EFFICIENCY_FRACTION)
    if battery.soc_start_fraction is not None:
        energy_start = battery.soc_start_fraction * capacity
    else:  # the report is at the step's end: take back what the step stored
        energy_end = battery.soc_fraction * capacity
        energy_start = min(max(energy_end - stored_kwh(battery.power_kw, step_s, eta_c, eta_d), energy_min), energy_max)
    reported = None not in (
        battery.soc_start_fraction,
        battery.charge_efficiency_fraction,
        battery.discharge_efficiency_fraction,
        battery.local_setpoint_kw,
    )
    return BatteryView(
        energy_start_kwh=energy_start,
        energy_min_kwh=energy_min,
        energy_max_kwh=energy_max,
        charge_efficiency_fraction=eta_c,
        discharge_efficiency_fraction=eta_d,
        max_charge_kw=battery.max_charge_kw,
        max_discharge_kw=battery.max_discharge_kw,
        local_setpoint_kw=_or(battery.local_setpoint_kw, battery.power_kw),
        reported=reported,
    )


#: Each action and the field of ``Flexibility`` that holds its headroom (``Flexibility.headroom_kw``), looked up once.
_HEADROOM_FIELDS = tuple((action, f"{action.value}_kw") for action in CurtailAction)


def agent_flex(status: AgentStatus) -> AgentFlex:
    """One agent's report as the planners see it."""
    return AgentFlex(
        agent_id=status.agent_id,
        transformer_id=status.transformer_id,
        net_power_kw=status.net_power_kw,
        headroom_kw={action: getattr(status.flexibility, field) for action, field in _HEADROOM_FIELDS},
        battery_power_kw=status.battery.power_kw if status.battery else 0.0,
        agent_type=status.agent_type,
        solar_available_kw=status.solar.available_kw if status.solar else 0.0,
        solar_capacity_kwp=status.solar.capacity_kwp if status.solar else 0.0,
        demand_kw=status.load.demand_kw if status.load else 0.0,
        flexible_kw=status.load.flexible_kw if status.load else 0.0,
        battery=battery_view(status.battery, status.step_s) if status.battery else None,
    )


def build_snapshot(
    statuses: Iterable[AgentStatus],
    transformer_ids: Iterable[str],
    limits: Callable[[str], tuple[float, float]],
    network: NetworkView | None = None,
) -> Snapshot:
    """The planners' view of a feeder from its agents' statuses; ``limits(tid)`` gives (rating, reverse limit).

    ``network`` is the grid agent's linearised network (with ``--network``), passed through as it is.
    """
    statuses = list(statuses)
    transformers = []
    for tid, loading in feeder_loadings(statuses, transformer_ids).items():
        rating, reverse = limits(tid)
        transformers.append(
            TransformerSnapshot(transformer_id=tid, rating_kw=rating, reverse_limit_kw=reverse, loading_kw=loading)
        )
    timestamps = [s.timestamp for s in statuses if s.timestamp is not None]
    step_s = next((s.step_s for s in statuses), 900.0)
    return Snapshot(
        transformers=tuple(transformers),
        agents=tuple(agent_flex(s) for s in statuses),
        timestamp=max(timestamps) if timestamps else None,
        step_s=step_s,
        network=network,
    )


def _or(value: float | None, default: float) -> float:
    """``value`` unless it was not reported."""
    return default if value is None else value
