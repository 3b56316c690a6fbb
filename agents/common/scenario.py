"""Scenario files: a feeder's transformers, homes and storage systems, checked on load; and generated feeders."""

from __future__ import annotations

import math
import random
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.common.settings import StartupError
from models.schemas import AgentId


class TransformerSpec(BaseModel):
    """One distribution transformer."""

    model_config = ConfigDict(extra="forbid", strict=True)  # a quoted "50" is a mistake, not a rating

    id: str = Field(min_length=1, max_length=64)
    rating_kw: float = Field(gt=0, allow_inf_nan=False)
    reverse_limit_kw: float | None = Field(None, gt=0, allow_inf_nan=False, description="Default: the rating")


class HomeSpec(BaseModel):
    """One home: its PV, its consumption, its battery and where it is connected."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: AgentId
    transformer: str = Field(min_length=1, max_length=64)
    pv_kwp: float = Field(6.0, ge=0, le=1e5, allow_inf_nan=False)  # a network's MV loads may carry MW of PV
    annual_load_kwh: float = Field(4500.0, ge=0, le=1e9, allow_inf_nan=False)  # 0: a PV-only home
    flexible_fraction: float = Field(0.3, ge=0, le=1, allow_inf_nan=False)
    battery_kwh: float = Field(0.0, ge=0, le=1e5, allow_inf_nan=False)
    battery_kw: float = Field(0.0, ge=0, le=1e4, allow_inf_nan=False)
    solar_shift_steps: int = Field(0, ge=-8, le=8, description="Shift of the PV profile (orientation), in data steps")
    load_shift_steps: int = Field(0, ge=-8, le=8, description="Shift of the load profile (habits), in data steps")
    bus: int | None = Field(None, ge=0, description="The network bus it is connected at")
    data_file: str | None = Field(
        None, min_length=1, max_length=1024, description="Its own data: CSV or profile array (relative to the scenario)"
    )
    data_row: int | None = Field(None, ge=0, description="Its row in a profile array; its own data then, not scaled")


class BatterySpecEntry(BaseModel):
    """One storage system on the feeder."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: AgentId
    transformer: str = Field(min_length=1, max_length=64)
    capacity_kwh: float = Field(50.0, gt=0, le=1e6, allow_inf_nan=False)
    power_kw: float = Field(25.0, gt=0, le=1e5, allow_inf_nan=False)
    bus: int | None = Field(None, ge=0, description="The network bus it is connected at")
    data_file: str | None = Field(None, min_length=1, max_length=1024, description="Its own data (as homes' data_file)")
    data_row: int | None = Field(None, ge=0, description="Its row in a profile array")


class Scenario(BaseModel):
    """A feeder: transformers with their limits, and the homes and storage systems behind them."""

    model_config = ConfigDict(extra="forbid")

    name: str = "unnamed"
    transformers: list[TransformerSpec] = Field(default_factory=list)
    homes: list[HomeSpec] = Field(default_factory=list)
    batteries: list[BatterySpecEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Scenario:
        ids = [t.id for t in self.transformers]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"transformer ids must be unique, repeated: {', '.join(duplicates)}")
        seen: set[str] = set()
        for kind, entries in (("homes", self.homes), ("batteries", self.batteries)):
            for i, entry in enumerate(entries):
                if entry.id in seen:
                    raise ValueError(
                        f"{kind}[{i}].id {entry.id!r} is used twice (ids must be unique across homes and batteries)"
                    )
                seen.add(entry.id)
                if self.transformers and entry.transformer not in ids:
                    raise ValueError(
                        f"{kind}[{i}].transformer {entry.transformer!r} is not one of the scenario's transformers "
                        f"({', '.join(ids)})"
                    )
        return self

    def to_toml(self) -> str:
        """The scenario as TOML that ``load_scenario`` reads back to an equal scenario."""
        lines = [f"name = {_toml_value(self.name)}", ""]
        for table, entries in (
            ("transformers", self.transformers),
            ("homes", self.homes),
            ("batteries", self.batteries),
        ):
            for entry in entries:
                lines.append(f"[[{table}]]")
                lines += [f"{key} = {_toml_value(value)}" for key, value in entry.model_dump(exclude_none=True).items()]
                lines.append("")
        return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


#: Homes per transformer in a generated feeder, and the most transformers it has.
HOMES_PER_TRANSFORMER = 20
MAX_TRANSFORMERS = 10


def generate_feeder(n_homes: int, name: str | None = None) -> Scenario:
    """A feeder of ``n_homes`` homes, derived deterministically from n_homes (never random per run).

    Homes are spread round-robin over ceil(n / 20) transformers, at most 10. Each home's PV
    (3-9 kWp, 70% of homes), consumption (2,500-7,000 kWh), orientation and habits (profile
    shifts of up to 30 and 45 minutes) and battery (13.5 kWh / 5 kW on 40% of homes) come from a
    generator seeded by its index. Each transformer gets one 50 kWh / 25 kW storage system. A
    transformer is rated 1 kW per home plus 10 kW, with a reverse limit of 60% of that: enough for
    ordinary evenings, not for sunny middays or a storage system charging at night.
    """
    if n_homes < 1:
        raise ValueError("a feeder needs at least one home")
    n_transformers = min(max(math.ceil(n_homes / HOMES_PER_TRANSFORMER), 1), MAX_TRANSFORMERS)
    homes = []
    for i in range(n_homes):
        rng = random.Random(f"home:{i}")
        has_pv = rng.random() < 0.7
        has_battery = has_pv and rng.random() < 0.4 / 0.7
        homes.append(
            HomeSpec(
                id=f"home_{i + 1}",
                transformer=f"T{i % n_transformers + 1}",
                pv_kwp=round(rng.uniform(3.0, 9.0) * 2) / 2 if has_pv else 0.0,
                annual_load_kwh=float(round(rng.uniform(2500, 7000), -1)),
                flexible_fraction=round(rng.uniform(0.2, 0.4), 2),
                battery_kwh=13.5 if has_battery else 0.0,
                battery_kw=5.0 if has_battery else 0.0,
                solar_shift_steps=rng.randint(-2, 2),
                load_shift_steps=rng.randint(-3, 3),
            )
        )
    transformers = []
    for t in range(n_transformers):
        n_here = sum(1 for h in homes if h.transformer == f"T{t + 1}")
        rating = float(n_here + 10)
        transformers.append(TransformerSpec(id=f"T{t + 1}", rating_kw=rating, reverse_limit_kw=round(0.6 * rating, 1)))
    batteries = [BatterySpecEntry(id=f"battery_T{t + 1}", transformer=f"T{t + 1}") for t in range(n_transformers)]
    return Scenario(
        name=name or f"generated feeder of {n_homes} homes", transformers=transformers, homes=homes, batteries=batteries
    )


def load_scenario(path: Path) -> Scenario:
    """Read and validate a TOML scenario; errors name the file and the bad entry."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"{path}: scenario file not found") from None
    except OSError as exc:
        raise StartupError(f"{path}: cannot read the scenario: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StartupError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check across entries: its message names the entry itself
            raise StartupError(f"{path}: {first['msg'].removeprefix('Value error, ')}") from exc
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"]).replace(".[", "[")
        raise StartupError(f"{path}: {where}: {first['msg']} (got {first.get('input')!r})") from exc
