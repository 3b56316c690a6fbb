"""The home agent's state machine: rooftop PV, household load with a flexible share, and a home battery."""

from __future__ import annotations

from agents.common.data import (
    HOME_COLUMNS,
    HOME_NONNEGATIVE,
    NETWORK_HOME_COLUMNS,
    load_profile_row,
    load_timeseries,
)
from agents.common.settings import HomeSettings
from agents.common.state import StateStore
from agents.device.agent import DeviceAgent
from models.devices import BatteryModule, BatterySpec, LoadModule, SolarModule
from models.policies import net_power_kw, self_consumption_setpoint_kw
from models.schemas import AgentStatus, AgentType, CurtailAction, LoadStatus, SolarStatus

#: The data file's solar_kw is for this PV size and its load_kw for this annual consumption.
DATA_PV_KWP = 6.0
DATA_ANNUAL_LOAD_KWH = 4500.0


def home_battery_spec(settings: HomeSettings) -> BatterySpec | None:
    """A home's battery (efficiencies and SoC window: ``BatterySpec``'s defaults), or None for a home without one."""
    if settings.battery_kwh <= 0 or settings.battery_kw <= 0:
        return None
    return BatterySpec(
        capacity_kwh=settings.battery_kwh, max_charge_kw=settings.battery_kw, max_discharge_kw=settings.battery_kw
    )


class HomeAgent(DeviceAgent):
    """A home that maximises its own solar self-consumption unless the grid agent says otherwise."""

    agent_type = AgentType.home
    description = "A home with rooftop PV, a household load with a flexible share and a home battery."

    def __init__(self, settings: HomeSettings, store: StateStore | None = None) -> None:
        own_data = settings.data_row is not None  # a network home's own kW, not a profile to scale
        if own_data:
            data = load_profile_row(settings.data_file, settings.data_row, NETWORK_HOME_COLUMNS, HOME_NONNEGATIVE)
        else:
            data = load_timeseries(settings.data_file, HOME_COLUMNS, HOME_NONNEGATIVE)
        spec = home_battery_spec(settings)
        battery = None if spec is None else BatteryModule(spec, data.step_s, settings.initial_soc_fraction)
        self.solar = SolarModule(capacity_kwp=settings.pv_kwp)
        self.load = LoadModule(flexible_fraction=settings.flexible_fraction)
        self.pv_scale = 1.0 if own_data else settings.pv_kwp / DATA_PV_KWP
        self.load_scale = 1.0 if own_data else settings.annual_load_kwh / DATA_ANNUAL_LOAD_KWH
        self.demand_kvar: float | None = None  # reactive power of this step's demand, when the data gives it
        self.solar_shift, self.load_shift = settings.solar_shift_steps, settings.load_shift_steps
        super().__init__(settings, data, battery, store)

    def _read_row(self, index: int) -> dict[str, float]:
        """Row ``index`` with the PV and load profiles shifted by this home's orientation and habits."""
        row = self.data.row(index)
        if self.solar_shift:
            row["solar_kw"] = self.data.value("solar_kw", index - self.solar_shift)
        if self.load_shift:
            row["load_kw"] = self.data.value("load_kw", index - self.load_shift)
        return row

    def _begin_step(self, row: dict[str, float]) -> None:
        self.solar.begin_step(row["solar_kw"] * self.pv_scale)
        self.load.begin_step(row["load_kw"] * self.load_scale)
        self.demand_kvar = row["load_kvar"] * self.load_scale if "load_kvar" in row else None
        if self.battery is not None:
            self.battery.set_power(self_consumption_setpoint_kw(self.solar.output_kw, self.load.served_kw))

    def _apply(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        if self.step == 0:
            return 0.0, "no step simulated yet"
        if action is CurtailAction.curtail_solar:
            applied = self.solar.curtail(power_kw)
            return applied, None if applied >= power_kw else "no more solar output to curtail"
        if action is CurtailAction.shed_load:
            applied = self.load.shed(power_kw)
            return applied, None if applied >= power_kw else "no more flexible load to shed"
        return self._apply_battery(action, power_kw)

    def _operating_point(self) -> dict:
        return {
            **super()._operating_point(),
            "solar_curtailed_kw": self.solar.curtailed_kw,
            "load_shed_kw": self.load.shed_kw,
        }

    def _restore_operating_point(self, saved: dict) -> None:
        super()._restore_operating_point(saved)
        self.solar.curtail(float(saved.get("solar_curtailed_kw", 0.0)))
        self.load.shed(float(saved.get("load_shed_kw", 0.0)))

    @property
    def served_kvar(self) -> float | None:
        """Reactive power of the served load (kvar, > 0 drawn): shedding keeps the demand's power factor."""
        if self.demand_kvar is None:
            return None
        if self.load.demand_kw <= 0:
            return self.demand_kvar
        return self.demand_kvar * self.load.served_kw / self.load.demand_kw

    @property
    def net_power_kw(self) -> float:
        battery_kw = self.battery.power_kw if self.battery is not None else 0.0
        return net_power_kw(self.load.served_kw, self.solar.output_kw, battery_kw)

    def status(self) -> AgentStatus:
        flexibility = self._flexibility(curtail_solar_kw=self.solar.output_kw, shed_load_kw=self.load.shed_headroom_kw)
        return AgentStatus(
            **self._common_status(),
            net_power_kw=self.net_power_kw,
            solar=SolarStatus(
                capacity_kwp=self.solar.capacity_kwp,
                available_kw=self.solar.available_kw,
                output_kw=self.solar.output_kw,
                curtailed_kw=self.solar.curtailed_kw,
            ),
            load=LoadStatus(
                demand_kw=self.load.demand_kw,
                served_kw=self.load.served_kw,
                shed_kw=self.load.shed_kw,
                flexible_kw=self.load.flexible_kw,
                served_kvar=self.served_kvar,
            ),
            flexibility=flexibility,
        )
