"""Scenario files: the transformers of a feeder and their limits, checked on load."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.settings import StartupError


class TransformerSpec(BaseModel):
    """One distribution transformer."""

    model_config = ConfigDict(extra="forbid", strict=True)  # a quoted "50" is a mistake, not a rating

    id: str = Field(min_length=1, max_length=64)
    rating_kw: float = Field(gt=0, allow_inf_nan=False)
    reverse_limit_kw: float | None = Field(None, gt=0, allow_inf_nan=False, description="Default: the rating")


class Scenario(BaseModel):
    """A feeder: its transformers (more entries come with the scenario issue)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "unnamed"
    transformers: list[TransformerSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Scenario:
        ids = [t.id for t in self.transformers]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"transformer ids must be unique, repeated: {', '.join(duplicates)}")
        return self


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
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"]).replace(".[", "[")
        raise StartupError(f"{path}: {where or 'scenario'}: {first['msg']} (got {first.get('input')!r})") from exc
