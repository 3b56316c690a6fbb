"""Tests of the network's pure parts (models/network.py): ids, vector groups, PV reactive power, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.grid import TransformerState
from models.network import (
    MAX_ID_LENGTH,
    ac_violation_kw,
    classify_ac_loading,
    cosphi_p,
    pv_reactive_kvar,
    safe_id,
    summarize_flow,
    unique_ids,
    vector_group_for_shift,
)
from models.schemas import AgentStatus


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("LV1.101 Load 3", "lv1_101_load_3"),
        ("MV1.101-LV1.101-Trafo 1", "mv1_101_lv1_101_trafo_1"),
        ("  Öl / Heizung #2 ", "l_heizung_2"),
        ("...", ""),
    ],
)
def test_safe_id_readable_and_url_safe(name, expected):
    assert safe_id(name) == expected


def test_unique_ids_number_repeats_and_fall_back():
    ids = unique_ids(["Load 1", "load-1", None, float("nan"), "", "x" * 80], ["a", "b", "load_7", "load_8", "c", "d"])
    assert ids[:5] == ["load_1", "load_1_2", "load_7", "load_8", "c"]
    assert len(ids[5]) == MAX_ID_LENGTH
    for agent_id in ids:  # every one is a valid AgentId
        AgentStatus.model_validate(
            {"agent_id": agent_id, "agent_type": "home", "transformer_id": "T1", "step": 0, "timestamp": None}
            | {"step_s": 900.0, "net_power_kw": 0.0}
        )


@pytest.mark.parametrize(("shift", "group"), [(150.0, "Dyn5"), (0.0, "YNyn0"), (330.0, "Dyn11"), (-30.0, "Dyn11")])
def test_vector_group_for_shift(shift, group):
    assert vector_group_for_shift(shift) == group


@pytest.mark.parametrize(("output_kw", "cos"), [(0.0, 1.0), (5.0, 1.0), (7.5, 0.975), (10.0, 0.95), (12.0, 0.95)])
def test_cosphi_p_vde_ar_n_4105(output_kw, cos):
    assert cosphi_p(output_kw, 10.0) == pytest.approx(cos)


def test_pv_reactive_kvar_unity_and_cosphi_p():
    assert pv_reactive_kvar(10.0, 10.0, "unity") == 0.0
    expected = 10.0 * math.tan(math.acos(0.95))  # 3.29 kvar drawn (underexcited) at full power
    assert pv_reactive_kvar(10.0, 10.0, "cosphi_p") == pytest.approx(expected, rel=1e-12)
    assert pv_reactive_kvar(4.0, 10.0, "cosphi_p") == 0.0
    with pytest.raises(ValueError, match="unknown"):
        pv_reactive_kvar(1.0, 10.0, "capacitive")


@pytest.mark.parametrize(
    ("loading_percent", "power_kw", "state"),
    [
        (80.0, 100.0, TransformerState.normal),
        (120.0, 150.0, TransformerState.overload),
        (120.0, -150.0, TransformerState.reverse_power_flow),
        (105.0, -90.0, TransformerState.overload),  # past its apparent power, not its reverse limit
    ],
)
def test_classify_ac_loading(loading_percent, power_kw, state):
    assert classify_ac_loading(loading_percent, power_kw, reverse_limit_kw=100.0) == state


def test_ac_violation_kw():
    assert ac_violation_kw(120.0, 150.0, rating_kw=160.0, reverse_limit_kw=160.0) == pytest.approx(32.0)
    assert ac_violation_kw(150.0, -230.0, rating_kw=160.0, reverse_limit_kw=160.0) == pytest.approx(80.0)
    assert ac_violation_kw(90.0, -100.0, rating_kw=160.0, reverse_limit_kw=160.0) == 0.0


def test_summarize_flow_counts_what_is_outside():
    summary = summarize_flow(
        vm_pu=np.array([1.02, 1.12, 0.89, np.nan]),
        min_vm_pu=np.full(4, 0.9),
        max_vm_pu=np.full(4, 1.1),
        line_loading_percent=np.array([50.0, 101.0, np.nan]),
        trafo_loading_percent=np.array([99.0, 130.0]),
    )
    assert summary.vm_min_pu == pytest.approx(0.89)
    assert summary.vm_max_pu == pytest.approx(1.12)
    assert summary.buses_outside == 2  # the unenergised bus is not counted
    assert (summary.lines_outside, summary.line_loading_max_percent) == (1, 101.0)
    assert (summary.transformers_outside, summary.transformer_loading_max_percent) == (1, 130.0)
    assert (summary.line_loading_max_position, summary.transformer_loading_max_position) == (1, 1)
