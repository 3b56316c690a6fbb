"""The battery agent's app: a storage system that trades on price and derates in the cold and heat."""

from __future__ import annotations

from fastapi import FastAPI

from agents.common.settings import BatterySettings
from agents.device.app import create_device_app, own_data
from agents.device.battery import BatteryAgent


def create_app(settings: BatterySettings, *, register: bool = True) -> FastAPI:
    """Build a battery agent's app, or with ``--scenario`` one hosting this process's share of its storage systems."""
    return create_device_app(
        settings, BatteryAgent, lambda scenario: scenario.batteries, settings_for_battery, "battery", register=register
    )


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
