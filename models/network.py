"""The network's pure parts: readable ids, PV reactive power, and a power flow's limits and their summary.

Signs follow ``net_power_kw``: active and reactive power at a bus are in the load convention (> 0 drawn from
the network). A transformer's active power is taken at its high-voltage side, > 0 flowing towards its
low-voltage side (import), < 0 reverse flow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from models.grid import TransformerState

#: VDE-AR-N 4105 cos phi(P): unity up to half the rated power, then linear to this value (underexcited) at full power.
COSPHI_P_AT_RATED = 0.95
COSPHI_P_KNEE_FRACTION = 0.5
#: Loading within this many percent of 100 counts as within the limit (solver noise).
LOADING_TOLERANCE_PERCENT = 1e-6
#: Voltage within this many p.u. of a limit counts as within it.
VOLTAGE_TOLERANCE_PU = 1e-9
#: The longest id a network element gets (ids are AgentId: at most 64 characters).
MAX_ID_LENGTH = 64


def safe_id(name: str) -> str:
    """A readable id, safe in URLs and file names, from an element's name: ``LV1.101 Load 3`` -> ``lv1_101_load_3``.

    Lower case; every run of characters other than letters and digits becomes one underscore, trimmed at both
    ends. The empty string when the name has no letter or digit (the caller then falls back to another id).
    """
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def unique_ids(names: list[object], fallbacks: list[str]) -> list[str]:
    """``safe_id`` of each name, unique and at most MAX_ID_LENGTH long; a missing or empty name takes its fallback.

    A repeated id gets ``_2``, ``_3``... in order of appearance, so ids depend only on the names and their order.
    """
    ids: list[str] = []
    seen: set[str] = set()
    for name, fallback in zip(names, fallbacks, strict=True):
        missing = name is None or (isinstance(name, float) and math.isnan(name))
        base = (safe_id(name) if not missing else "") or safe_id(fallback)
        base = base[:MAX_ID_LENGTH]
        candidate, n = base, 1
        while candidate in seen:
            n += 1
            suffix = f"_{n}"
            candidate = base[: MAX_ID_LENGTH - len(suffix)] + suffix
        seen.add(candidate)
        ids.append(candidate)
    return ids


def vector_group_for_shift(shift_degree: float) -> str:
    """The vector group a two-winding transformer's phase shift implies: 150 degrees is Dyn5, 0 is YNyn0.

    The clock number is shift / 30 degrees; an odd clock needs a delta winding (Dyn1, Dyn5, Dyn7, Dyn11), an even
    one is taken as star-star (YNyn0, YNyn6...). SimBench gives the shift but leaves the vector group empty.
    """
    clock = round(shift_degree / 30.0) % 12
    return f"Dyn{clock}" if clock % 2 else f"YNyn{clock}"


def cosphi_p(output_kw: float, rated_kw: float) -> float:
    """cos phi of a PV inverter under VDE-AR-N 4105's cos phi(P) characteristic (always underexcited).

    1 up to P = 0.5 P_rated, then linear down to 0.95 at P = P_rated (and held there above it).
    """
    if rated_kw <= 0 or output_kw <= COSPHI_P_KNEE_FRACTION * rated_kw:
        return 1.0
    share = min((output_kw / rated_kw - COSPHI_P_KNEE_FRACTION) / (1.0 - COSPHI_P_KNEE_FRACTION), 1.0)
    return 1.0 - share * (1.0 - COSPHI_P_AT_RATED)


def pv_reactive_kvar(output_kw: float, rated_kw: float, mode: str) -> float:
    """Reactive power of a PV inverter (kvar, load convention: > 0 drawn from the network).

    ``unity``: 0. ``cosphi_p``: underexcited by VDE-AR-N 4105's cos phi(P), Q = P tan(arccos(cos phi)), which
    the inverter draws, so positive here, and it lowers the voltage that the PV raises.
    """
    if mode == "unity" or output_kw <= 0:
        return 0.0
    if mode != "cosphi_p":
        raise ValueError(f"unknown PV reactive power mode {mode!r} (unity or cosphi_p)")
    cos = cosphi_p(output_kw, rated_kw)
    return output_kw * math.tan(math.acos(cos))


def classify_ac_loading(loading_percent: float, power_kw: float, reverse_limit_kw: float) -> TransformerState:
    """A transformer's state from an AC power flow: reverse flow when its active power runs backwards past
    ``reverse_limit_kw``; else an overload above 100 % of its rated apparent power."""
    if power_kw < -reverse_limit_kw - 1e-6:
        return TransformerState.reverse_power_flow
    if loading_percent > 100.0 + LOADING_TOLERANCE_PERCENT:
        return TransformerState.overload
    return TransformerState.normal


def ac_violation_kw(loading_percent: float, power_kw: float, rating_kw: float, reverse_limit_kw: float) -> float:
    """How far an AC loading lies outside its limits (kW, or kVA above the rating; 0 within them)."""
    return max((loading_percent - 100.0) / 100.0 * rating_kw, -reverse_limit_kw - power_kw, 0.0)


@dataclass(frozen=True)
class FlowSummary:
    """The few figures a cycle reports of one power flow: extreme voltages, the most loaded line, what is outside."""

    vm_min_pu: float
    vm_max_pu: float
    line_loading_max_percent: float
    buses_outside: int
    lines_outside: int
    transformer_loading_max_percent: float
    transformers_outside: int
    line_loading_max_position: int | None = None  # which line (position in the arrays given); None when no line
    transformer_loading_max_position: int | None = None


def summarize_flow(
    vm_pu: np.ndarray,
    min_vm_pu: np.ndarray,
    max_vm_pu: np.ndarray,
    line_loading_percent: np.ndarray,
    trafo_loading_percent: np.ndarray,
) -> FlowSummary:
    """Summarise one power flow: buses with a voltage (NaN = not energised), lines and transformers with a loading.

    A bus is outside when its voltage is below its ``min_vm_pu`` or above its ``max_vm_pu``; a line or a
    transformer when its loading exceeds 100 %.
    """
    vm = np.asarray(vm_pu, dtype=float)
    energised = np.isfinite(vm)
    low = energised & (vm < np.asarray(min_vm_pu) - VOLTAGE_TOLERANCE_PU)
    high = energised & (vm > np.asarray(max_vm_pu) + VOLTAGE_TOLERANCE_PU)
    loading = np.asarray(line_loading_percent, dtype=float)
    loaded = loading[np.isfinite(loading)]
    trafo_all = np.asarray(trafo_loading_percent, dtype=float)
    trafo = trafo_all[np.isfinite(trafo_all)]
    return FlowSummary(
        vm_min_pu=float(vm[energised].min()) if energised.any() else math.nan,
        vm_max_pu=float(vm[energised].max()) if energised.any() else math.nan,
        line_loading_max_percent=float(loaded.max()) if loaded.size else 0.0,
        buses_outside=int((low | high).sum()),
        lines_outside=int((loaded > 100.0 + LOADING_TOLERANCE_PERCENT).sum()),
        transformer_loading_max_percent=float(trafo.max()) if trafo.size else 0.0,
        transformers_outside=int((trafo > 100.0 + LOADING_TOLERANCE_PERCENT).sum()),
        line_loading_max_position=int(np.nanargmax(loading)) if loaded.size else None,
        transformer_loading_max_position=int(np.nanargmax(trafo_all)) if trafo.size else None,
    )
