"""Tests of transformer assessment (models/grid.py): loading, classification and violation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.grid import LIMIT_TOLERANCE_KW, TransformerState, classify_loading, transformer_loading_kw, violation_kw

RATING_KW = 100.0
REVERSE_LIMIT_KW = 40.0
#: Clearly beyond the tolerance band, but close to the limit.
NEAR_KW = 1e-3


@pytest.mark.parametrize(
    ("loading_kw", "expected"),
    [
        (0.0, TransformerState.normal),
        (RATING_KW, TransformerState.normal),  # at the rating: within it (inclusive)
        (RATING_KW - NEAR_KW, TransformerState.normal),
        (RATING_KW + NEAR_KW, TransformerState.overload),
        (RATING_KW + LIMIT_TOLERANCE_KW / 2, TransformerState.normal),  # LP float noise
        (RATING_KW + 10 * LIMIT_TOLERANCE_KW, TransformerState.overload),
        (-REVERSE_LIMIT_KW, TransformerState.normal),  # at the reverse limit: within it
        (-REVERSE_LIMIT_KW + NEAR_KW, TransformerState.normal),
        (-REVERSE_LIMIT_KW - NEAR_KW, TransformerState.reverse_power_flow),
        (-REVERSE_LIMIT_KW - LIMIT_TOLERANCE_KW / 2, TransformerState.normal),
        (-REVERSE_LIMIT_KW - 10 * LIMIT_TOLERANCE_KW, TransformerState.reverse_power_flow),
        (1e6, TransformerState.overload),
        (-1e6, TransformerState.reverse_power_flow),
    ],
)
def test_classify_loading_around_limits(loading_kw, expected):
    assert classify_loading(loading_kw, RATING_KW, REVERSE_LIMIT_KW) is expected


def test_classify_loading_state_values_are_wire_names():
    assert [s.value for s in TransformerState] == ["normal", "overload", "reverse_power_flow"]


@pytest.mark.parametrize(
    ("loading_kw", "expected_kw"),
    [
        (0.0, 0.0),
        (RATING_KW, 0.0),
        (-REVERSE_LIMIT_KW, 0.0),
        (RATING_KW - 5.0, 0.0),
        (RATING_KW + 12.5, 12.5),
        (-REVERSE_LIMIT_KW - 7.25, 7.25),
        (-REVERSE_LIMIT_KW + 1.0, 0.0),
    ],
)
def test_violation_kw_cases(loading_kw, expected_kw):
    assert violation_kw(loading_kw, RATING_KW, REVERSE_LIMIT_KW) == pytest.approx(expected_kw, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(0.1, 1e3), st.floats(0.1, 1e3))
def test_violation_kw_consistent_with_classify_loading(loading_kw, rating_kw, reverse_limit_kw):
    violation = violation_kw(loading_kw, rating_kw, reverse_limit_kw)
    state = classify_loading(loading_kw, rating_kw, reverse_limit_kw)
    assert violation >= 0.0
    if violation == 0.0:
        assert state is TransformerState.normal
    if violation > 2 * LIMIT_TOLERANCE_KW:
        assert state is not TransformerState.normal
        expected = TransformerState.overload if loading_kw > rating_kw else TransformerState.reverse_power_flow
        assert state is expected


@pytest.mark.parametrize(
    ("net_powers_kw", "expected_kw"),
    [
        ([], 0.0),
        ([3.5], 3.5),
        ([1.5, -2.0, 3.25], 2.75),  # imports and exports net out
        ([-4.0, -6.0], -10.0),
    ],
)
def test_transformer_loading_kw_sums_net_powers(net_powers_kw, expected_kw):
    assert transformer_loading_kw(net_powers_kw) == pytest.approx(expected_kw)


def test_transformer_loading_kw_accepts_generator_and_numpy_returns_float():
    assert transformer_loading_kw(x for x in (1.0, 2.0)) == pytest.approx(3.0)
    result = transformer_loading_kw(np.array([0.5, 0.25]))
    assert type(result) is float
    assert result == pytest.approx(0.75)
