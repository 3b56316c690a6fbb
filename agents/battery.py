"""The battery agent: a storage system that trades on price and derates in the cold and heat."""

from __future__ import annotations

from fastapi import FastAPI

from agents.common.data import BATTERY_COLUMNS, load_profile_row, load_timeseries
from agents.device.agent import DeviceAgent
from agents.device.app import create_device_app, own_data
from agents.common.settings import BatterySettings
from agents.common.state import StateStore
from models.devices import BatteryModule, BatterySpec
from models.schemas import AgentStatus, AgentType, CurtailAction


def temperature_derating_fraction(temp_air_c: float) -> float:
    """Share of rated power a lithium-ion system allows at an air temperature (linear below 0 and above 40 degC).

    Full power from 0 to 40 degC; down to half at -10 degC and at 50 degC, and no lower.
    """
    if temp_air_c < 0:
        return max(1.0 + temp_air_c / 20.0, 0.5)
    if temp_air_c > 40:
        return max(1.0 - (temp_air_c - 40.0) / 20.0, 0.5)
    return 1.0


def price_setpoint_kw(price_per_kwh: float, charge_below: float, discharge_above: float, power_kw: float) -> float:
    """Local policy of the storage system: charge on cheap energy, discharge on dear (> 0 charges)."""
    if price_per_kwh <= charge_below:
        return power_kw
    if price_per_kwh >= discharge_above:
        return -power_kw
    return 0.0


class BatteryAgent(DeviceAgent):
    """A storage system following a time-of-use price unless the grid agent says otherwise."""

    agent_type = AgentType.battery
    description = "A storage system that charges on cheap energy and discharges on dear, derated by temperature."

    def __init__(self, settings: BatterySettings, store: StateStore | None = None) -> None:
        if settings.data_row is None:
            data = load_timeseries(settings.data_file, BATTERY_COLUMNS)
        else:
            data = load_profile_row(settings.data_file, settings.data_row, BATTERY_COLUMNS)
        self.rated = BatterySpec(capacity_kwh=settings.capacity_kwh, max_charge_kw=settings.power_kw, max_discharge_kw=settings.power_kw, charge_efficiency_fraction=0.96, discharge_efficiency_fraction=0.96)
        battery = BatteryModule(spec=self.rated, step_s=data.step_s, soc_fraction=settings.initial_soc_fraction)
        super().__init__(settings, data, battery, store)

    def _begin_step(self, row: dict[str, float]) -> None:
        derate = temperature_derating_fraction(row["temp_air_c"])
        limit_kw = self.rated.max_charge_kw * derate
        self.battery.spec = BatterySpec(**{**self.rated.__dict__, "max_charge_kw": limit_kw, "max_discharge_kw": limit_kw})
        s = self.settings
        self.battery.set_power(price_setpoint_kw(row["price_per_kwh"], s.charge_below_price_per_kwh, s.discharge_above_price_per_kwh, limit_kw))

    def _apply(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        if action in (CurtailAction.curtail_solar, CurtailAction.shed_load):
            return 0.0, f"a battery agent cannot {action.value}"
        return self._apply_battery(action, power_kw)

    def status(self) -> AgentStatus:
        return AgentStatus(
            **self._common_status(),
            net_power_kw=self.battery.power_kw,
            price_per_kwh=self.row.get("price_per_kwh"),
            flexibility=self._flexibility(),
        )


def create_app(settings: BatterySettings, *, register: bool = True) -> FastAPI:
    """Build a battery agent's app, or with ``--scenario`` one hosting this process's share of its storage systems."""
    return create_device_app(settings, BatteryAgent, lambda scenario: scenario.batteries, settings_for_battery, "battery", register=register)


def settings_for_battery(settings: BatterySettings, entry) -> BatterySettings:
    """A scenario storage system's own settings."""
    return settings.model_copy(
        update={
            "agent_id": entry.id,
            "transformer_id": entry.transformer,
            "bus": entry.bus,
            **own_data(settings, entry),
            "capacity_kwh": entry.capacity_kwh,
            "power_kw": entry.power_kw,
        }
    )
