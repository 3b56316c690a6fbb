"""Transformer assessment: loading from net powers and its classification against limits."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class TransformerState(str, Enum):
    """How a transformer's loading stands against its limits."""

    normal = "normal"
    overload = "overload"
    reverse_power_flow = "reverse_power_flow"


#: Loading within this many kW of a limit counts as within it (float noise from the LP).
LIMIT_TOLERANCE_KW = 1e-6


def transformer_loading_kw(net_powers_kw: Iterable[float]) -> float:
    """Loading of a transformer: the sum of its agents' net powers (> 0 = import through it)."""
    return float(sum(net_powers_kw))


def classify_loading(loading_kw: float, rating_kw: float, reverse_limit_kw: float) -> TransformerState:
    """Classify a loading: above ``rating_kw`` is an overload, below ``-reverse_limit_kw`` reverse flow."""
    if loading_kw > rating_kw + LIMIT_TOLERANCE_KW:
        return TransformerState.overload
    if loading_kw < -reverse_limit_kw - LIMIT_TOLERANCE_KW:
        return TransformerState.reverse_power_flow
    return TransformerState.normal


def violation_kw(loading_kw: float, rating_kw: float, reverse_limit_kw: float) -> float:
    """How far a loading lies outside its limits (kW, 0 when within them)."""
    return max(loading_kw - rating_kw, -reverse_limit_kw - loading_kw, 0.0)
