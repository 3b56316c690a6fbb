"""The battery agent's state machine: a storage system that trades on price and derates in the cold and heat."""

from __future__ import annotations

from dataclasses import replace

from agents.common.data import BATTERY_COLUMNS, load_profile_row, load_timeseries
from agents.common.settings import BatterySettings
from agents.common.state import StateStore
from agents.device.agent import DeviceAgent
from models.devices import BatteryModule, BatterySpec
from models.policies import net_power_kw, price_setpoint_kw, temperature_derating_fraction
from models.schemas import AgentStatus, AgentType, CurtailAction

#: Charge and discharge efficiency of the storage system (a utility-scale lithium-ion system, AC to AC).
STORAGE_EFFICIENCY_FRACTION = 0.96


def storage_spec(settings: BatterySettings) -> BatterySpec:
    """The storage system at its rated power (before temperature derating)."""
    return BatterySpec(
        capacity_kwh=settings.capacity_kwh,
        max_charge_kw=settings.power_kw,
        max_discharge_kw=settings.power_kw,
        charge_efficiency_fraction=STORAGE_EFFICIENCY_FRACTION,
        discharge_efficiency_fraction=STORAGE_EFFICIENCY_FRACTION,
    )


def derated_storage_spec(rated: BatterySpec, temp_air_c: float) -> BatterySpec:
    """The storage system at an air temperature: its rated power times ``temperature_derating_fraction``, both ways."""
    limit_kw = rated.max_charge_kw * temperature_derating_fraction(temp_air_c)
    return replace(rated, max_charge_kw=limit_kw, max_discharge_kw=limit_kw)


class BatteryAgent(DeviceAgent):
    """A storage system following a time-of-use price unless the grid agent says otherwise."""

    agent_type = AgentType.battery
    description = "A storage system that charges on cheap energy and discharges on dear, derated by temperature."

    def __init__(self, settings: BatterySettings, store: StateStore | None = None) -> None:
        if settings.data_row is None:
            data = load_timeseries(settings.data_file, BATTERY_COLUMNS)
        else:
            data = load_profile_row(settings.data_file, settings.data_row, BATTERY_COLUMNS)
        self.rated = storage_spec(settings)
        battery = BatteryModule(spec=self.rated, step_s=data.step_s, soc_fraction=settings.initial_soc_fraction)
        super().__init__(settings, data, battery, store)

    def _begin_step(self, row: dict[str, float]) -> None:
        spec = self.battery.spec = derated_storage_spec(self.rated, row["temp_air_c"])
        s = self.settings
        self.battery.set_power(
            price_setpoint_kw(
                row["price_per_kwh"], s.charge_below_price_per_kwh, s.discharge_above_price_per_kwh, spec.max_charge_kw
            )
        )

    def _apply(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        if action in (CurtailAction.curtail_solar, CurtailAction.shed_load):
            return 0.0, f"a battery agent cannot {action.value}"
        return self._apply_battery(action, power_kw)

    def status(self) -> AgentStatus:
        return AgentStatus(
            **self._common_status(),
            net_power_kw=net_power_kw(0.0, 0.0, self.battery.power_kw),
            price_per_kwh=self.row.get("price_per_kwh"),
            flexibility=self._flexibility(),
        )
