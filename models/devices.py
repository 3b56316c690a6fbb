"""Physical device models of a home or storage site: solar, load and battery.

Sign conventions (see README's vocabulary): every power is in kW; a battery's ``power_kw`` > 0
charges it and < 0 discharges it; a site's ``net_power_kw`` > 0 imports from the grid.
Everything here is pure: no I/O, no logging, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from models.units import energy_kwh, seconds_to_hours

#: Differences below this many kW are rounding noise, not a change of operating point.
POWER_TOLERANCE_KW = 1e-9


@dataclass(frozen=True)
class BatterySpec:
    """Parameters of a battery; all limits are inclusive.

    capacity_kwh: usable nameplate energy; max_charge_kw / max_discharge_kw: AC power limits
    (both >= 0; 0 means the battery cannot move that way); charge/discharge efficiencies in (0, 1];
    SoC window [soc_min, soc_max] in 0-1.
    """

    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    charge_efficiency_fraction: float = 0.95
    discharge_efficiency_fraction: float = 0.95
    soc_min_fraction: float = 0.1
    soc_max_fraction: float = 0.95

    def __post_init__(self) -> None:
        for name in (
            "capacity_kwh",
            "max_charge_kw",
            "max_discharge_kw",
            "charge_efficiency_fraction",
            "discharge_efficiency_fraction",
            "soc_min_fraction",
            "soc_max_fraction",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"invalid battery parameter {name}={getattr(self, name)!r}")
        checks = {
            "capacity_kwh": self.capacity_kwh > 0,
            "max_charge_kw": self.max_charge_kw >= 0,
            "max_discharge_kw": self.max_discharge_kw >= 0,
            "charge_efficiency_fraction": 0 < self.charge_efficiency_fraction <= 1,
            "discharge_efficiency_fraction": 0 < self.discharge_efficiency_fraction <= 1,
            "soc_min_fraction": 0 <= self.soc_min_fraction < self.soc_max_fraction,
            "soc_max_fraction": self.soc_min_fraction < self.soc_max_fraction <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid battery parameter {name}={getattr(self, name)!r}")


#: A home battery (about a Tesla Powerwall 2): 13.5 kWh, 5 kW continuous.
HOME_BATTERY = BatterySpec(capacity_kwh=13.5, max_charge_kw=5.0, max_discharge_kw=5.0)

#: A small community storage system on the feeder: 50 kWh, 25 kW.
COMMUNITY_BATTERY = BatterySpec(
    capacity_kwh=50.0,
    max_charge_kw=25.0,
    max_discharge_kw=25.0,
    charge_efficiency_fraction=0.96,
    discharge_efficiency_fraction=0.96,
)


@dataclass(frozen=True)
class BatteryStep:
    """Outcome of one battery step: the power actually applied and the SoC at the step's end."""

    power_kw: float
    soc_fraction: float
    stored_kwh: float  # energy added to (> 0) or taken from (< 0) the cells
    grid_kwh: float  # energy drawn at the terminals (> 0 charging, < 0 discharging)


def clip_battery_power_kw(
    power_kw: float,
    charge_room_kwh: float,
    discharge_room_kwh: float,
    step_s: float,
    max_charge_kw: float,
    max_discharge_kw: float,
    charge_efficiency_fraction: float,
    discharge_efficiency_fraction: float,
) -> float:
    """The part of a requested power (kW, > 0 charges) that the power limits and the stored energy allow for one step.

    charge_room_kwh: energy the cells can still take before their upper limit; discharge_room_kwh:
    energy they hold above their lower limit (both >= 0). Charging P kW for dt h stores
    P dt eta_c, so P <= room / (eta_c dt); discharging takes P dt / eta_d, so P <= room eta_d / dt.
    """
    hours = seconds_to_hours(step_s)
    if power_kw > 0:
        return min(power_kw, max_charge_kw, charge_room_kwh / (charge_efficiency_fraction * hours))
    if power_kw < 0:
        return -min(-power_kw, max_discharge_kw, discharge_room_kwh * discharge_efficiency_fraction / hours)
    return 0.0


def stored_kwh(
    power_kw: float, step_s: float, charge_efficiency_fraction: float, discharge_efficiency_fraction: float
) -> float:
    """Energy added to (> 0) or taken from (< 0) the cells by a power (kW, > 0 charges) held for one step.

    Charging stores ``P dt eta_c``; discharging takes ``|P| dt / eta_d``.
    """
    if power_kw > 0:
        return energy_kwh(power_kw, step_s) * charge_efficiency_fraction
    if power_kw < 0:
        return -energy_kwh(-power_kw, step_s) / discharge_efficiency_fraction
    return 0.0


def step_battery(soc_fraction: float, power_kw: float, step_s: float, spec: BatterySpec) -> BatteryStep:
    """Apply a requested power for one step; return the power actually applied and the new SoC.

    power_kw > 0 charges, < 0 discharges. The request is clipped to the power limits and to the
    energy room between spec.soc_min_fraction and spec.soc_max_fraction. Losses follow the
    efficiencies: charging stores ``P * dt * eta_c``; discharging takes ``P * dt / eta_d`` from
    the cells. A SoC outside the window is first clamped into it.
    """
    if not math.isfinite(power_kw) or not math.isfinite(soc_fraction):
        raise ValueError("power_kw and soc_fraction must be finite")
    if not (math.isfinite(step_s) and step_s > 0):
        raise ValueError(f"step_s must be positive and finite, got {step_s!r}")
    soc = min(max(soc_fraction, spec.soc_min_fraction), spec.soc_max_fraction)
    eta_c, eta_d = spec.charge_efficiency_fraction, spec.discharge_efficiency_fraction
    applied = clip_battery_power_kw(
        power_kw,
        charge_room_kwh=(spec.soc_max_fraction - soc) * spec.capacity_kwh,
        discharge_room_kwh=(soc - spec.soc_min_fraction) * spec.capacity_kwh,
        step_s=step_s,
        max_charge_kw=spec.max_charge_kw,
        max_discharge_kw=spec.max_discharge_kw,
        charge_efficiency_fraction=eta_c,
        discharge_efficiency_fraction=eta_d,
    )
    stored = stored_kwh(applied, step_s, eta_c, eta_d)
    new_soc = min(max(soc + stored / spec.capacity_kwh, spec.soc_min_fraction), spec.soc_max_fraction)
    return BatteryStep(power_kw=applied, soc_fraction=new_soc, stored_kwh=stored, grid_kwh=energy_kwh(applied, step_s))


@dataclass(frozen=True)
class EnergyStep:
    """Outcome of one step of ``step_battery_energy``: the power applied and the energy stored at the step's end."""

    power_kw: float
    energy_kwh: float


def step_battery_energy(
    energy_kwh: float,
    power_kw: float,
    step_s: float,
    *,
    energy_min_kwh: float,
    energy_max_kwh: float,
    max_charge_kw: float,
    max_discharge_kw: float,
    charge_efficiency_fraction: float,
    discharge_efficiency_fraction: float,
) -> EnergyStep:
    """``step_battery`` in stored energy (kWh) instead of SoC, with this step's limits given one by one.

    For planners, which follow batteries (or pools of alike ones, with summed limits) in kWh and
    whose power limits change from step to step. The same clipping and the same losses
    (``clip_battery_power_kw``, ``stored_kwh``); an energy outside [energy_min_kwh,
    energy_max_kwh] is first clamped into it.
    """
    energy = min(max(energy_kwh, energy_min_kwh), energy_max_kwh)
    applied = clip_battery_power_kw(
        power_kw,
        charge_room_kwh=energy_max_kwh - energy,
        discharge_room_kwh=energy - energy_min_kwh,
        step_s=step_s,
        max_charge_kw=max_charge_kw,
        max_discharge_kw=max_discharge_kw,
        charge_efficiency_fraction=charge_efficiency_fraction,
        discharge_efficiency_fraction=discharge_efficiency_fraction,
    )
    stored = stored_kwh(applied, step_s, charge_efficiency_fraction, discharge_efficiency_fraction)
    return EnergyStep(power_kw=applied, energy_kwh=min(max(energy + stored, energy_min_kwh), energy_max_kwh))


@dataclass
class BatteryModule:
    """A battery held at one power setpoint for the current step.

    ``soc_start_fraction`` is the SoC when the step began; every change of setpoint within a
    step is re-applied from it, so the SoC at the end of the step always matches the final
    setpoint and energy is conserved however often the grid agent adjusts it.
    """

    spec: BatterySpec
    step_s: float
    soc_fraction: float = 0.5
    soc_start_fraction: float = field(init=False)
    power_kw: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.soc_fraction = min(max(self.soc_fraction, self.spec.soc_min_fraction), self.spec.soc_max_fraction)
        self.soc_start_fraction = self.soc_fraction

    def begin_step(self) -> None:
        """Start a new step from the SoC the last one ended at, idle until told otherwise."""
        self.soc_start_fraction = self.soc_fraction
        self.power_kw = 0.0

    def set_power(self, power_kw: float) -> float:
        """Set the step's power (> 0 charges); return the power the physics allows."""
        result = step_battery(self.soc_start_fraction, power_kw, self.step_s, self.spec)
        self.power_kw, self.soc_fraction = result.power_kw, result.soc_fraction
        return result.power_kw

    def shift(self, delta_kw: float) -> float:
        """Move the setpoint by ``delta_kw`` (> 0 towards charging); return the shift applied."""
        before = self.power_kw
        return self.set_power(before + delta_kw) - before

    @property
    def charge_headroom_kw(self) -> float:
        """How much further the setpoint can move towards charging this step."""
        top = step_battery(self.soc_start_fraction, self.spec.max_charge_kw, self.step_s, self.spec).power_kw
        return max(top - self.power_kw, 0.0)

    @property
    def discharge_headroom_kw(self) -> float:
        """How much further the setpoint can move towards discharging this step."""
        bottom = step_battery(self.soc_start_fraction, -self.spec.max_discharge_kw, self.step_s, self.spec).power_kw
        return max(self.power_kw - bottom, 0.0)


@dataclass
class SolarModule:
    """Rooftop PV: what the sun makes available this step and how much of it is curtailed."""

    capacity_kwp: float
    available_kw: float = 0.0
    curtailed_kw: float = 0.0

    def begin_step(self, available_kw: float) -> None:
        """Start a step with ``available_kw`` of generation on offer and nothing curtailed."""
        _require_finite(available_kw, "available_kw")
        self.available_kw = max(available_kw, 0.0)
        self.curtailed_kw = 0.0

    @property
    def output_kw(self) -> float:
        """Generation actually delivered (kW, >= 0)."""
        return self.available_kw - self.curtailed_kw

    def curtail(self, power_kw: float) -> float:
        """Curtail up to ``power_kw`` more; return what was curtailed."""
        _require_finite(power_kw, "power_kw")
        applied = min(max(power_kw, 0.0), self.output_kw)
        self.curtailed_kw += applied
        return applied


@dataclass
class LoadModule:
    """Household demand, of which ``flexible_fraction`` can be shed on request."""

    flexible_fraction: float = 0.3
    demand_kw: float = 0.0
    shed_kw: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.flexible_fraction <= 1:
            raise ValueError(f"flexible_fraction must be within [0, 1], got {self.flexible_fraction!r}")

    def begin_step(self, demand_kw: float) -> None:
        """Start a step with ``demand_kw`` of demand, all of it served."""
        _require_finite(demand_kw, "demand_kw")
        self.demand_kw = max(demand_kw, 0.0)
        self.shed_kw = 0.0

    @property
    def flexible_kw(self) -> float:
        """The part of this step's demand that may be shed (kW)."""
        return self.demand_kw * self.flexible_fraction

    @property
    def served_kw(self) -> float:
        """Demand actually served (kW)."""
        return self.demand_kw - self.shed_kw

    @property
    def shed_headroom_kw(self) -> float:
        """How much more can be shed this step (kW)."""
        return max(self.flexible_kw - self.shed_kw, 0.0)

    def shed(self, power_kw: float) -> float:
        """Shed up to ``power_kw`` more of the flexible demand; return what was shed."""
        _require_finite(power_kw, "power_kw")
        applied = min(max(power_kw, 0.0), self.shed_headroom_kw)
        self.shed_kw += applied
        return applied


def _require_finite(value: float, name: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
