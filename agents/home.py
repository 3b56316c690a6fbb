"""The home agent's app: rooftop PV, household load with a flexible share, and a home battery."""

from __future__ import annotations

from fastapi import FastAPI

from agents.common.settings import HomeSettings
from agents.device.app import create_device_app, own_data
from agents.device.home import HomeAgent


def create_app(settings: HomeSettings, *, register: bool = True) -> FastAPI:
    """Build a home agent's app, or with ``--scenario`` one hosting this process's share of its homes."""
    return create_device_app(
        settings, HomeAgent, lambda scenario: scenario.homes, settings_for_home, "home", register=register
    )


def settings_for_home(settings: HomeSettings, home) -> HomeSettings:
    """A scenario home's own settings: the process's, with the home's id, place, sizes and its own data if any."""
    return settings.model_copy(
        update={
            "agent_id": home.id,
            "transformer_id": home.transformer,
            "bus": home.bus,
            **own_data(settings, home),
            "pv_kwp": home.pv_kwp,
            "annual_load_kwh": home.annual_load_kwh,
            "flexible_fraction": home.flexible_fraction,
            "battery_kwh": home.battery_kwh,
            "battery_kw": home.battery_kw,
            "solar_shift_steps": home.solar_shift_steps,
            "load_shift_steps": home.load_shift_steps,
        }
    )
