"""Tests of the planners (agents/planners): hand-built snapshots with known optima, and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.planners import (
    PLANNERS,
    AgentFlex,
    Command,
    Snapshot,
    TransformerSnapshot,
    apply_plan,
    plan_optimal,
    plan_rule,
)
from agents.planners.base import violations_after
from agents.planners.optimal import ACTION_COST, HOLD_BACK_COST, SLACK_COST, _segments
from models.grid import violation_kw
from models.schemas import CurtailAction

CHARGE = CurtailAction.charge_battery
DISCHARGE = CurtailAction.discharge_battery
CURTAIL = CurtailAction.curtail_solar
SHED = CurtailAction.shed_load
#: Tolerance on kW figures coming out of the LP solver.
KW_TOL = 1e-6


def transformer(loading_kw: float, rating_kw: float = 10.0, reverse_limit_kw: float = 10.0, transformer_id: str = "T1"):
    return TransformerSnapshot(
        transformer_id=transformer_id, rating_kw=rating_kw, reverse_limit_kw=reverse_limit_kw, loading_kw=loading_kw
    )


def agent(agent_id: str, transformer_id: str = "T1", battery_power_kw: float = 0.0, **headroom_kw: float):
    return AgentFlex(
        agent_id=agent_id,
        transformer_id=transformer_id,
        net_power_kw=0.0,
        headroom_kw={CurtailAction(name): kw for name, kw in headroom_kw.items()},
        battery_power_kw=battery_power_kw,
    )


def commanded(commands: list[Command]) -> dict[tuple[str, CurtailAction], float]:
    """The commands as {(agent_id, action): power_kw}; each pair appears at most once."""
    result: dict[tuple[str, CurtailAction], float] = {}
    for command in commands:
        key = (command.agent_id, command.action)
        assert key not in result, f"duplicate command {key}"
        result[key] = command.power_kw
    return result


def weighted_cost(snapshot: Snapshot, commands: list[Command]) -> float:
    """ACTION_COST-weighted kW of the commands plus SLACK_COST per kW left outside a limit."""
    after = apply_plan(snapshot, commands)
    left = sum(violation_kw(after[t.transformer_id], t.rating_kw, t.reverse_limit_kw) for t in snapshot.transformers)
    return sum(ACTION_COST[c.action] * c.power_kw for c in commands) + SLACK_COST * left


# --- the sign of each action, from CurtailAction.direction ------------------------------------


def test_curtail_action_moving_lists_the_actions_each_way():
    assert set(CurtailAction.moving(-1)) == {DISCHARGE, SHED}
    assert set(CurtailAction.moving(+1)) == {CHARGE, CURTAIL}


@pytest.mark.parametrize(("delta_kw", "action"), [(2.5, CHARGE), (-0.1, DISCHARGE), (0.0, DISCHARGE)])
def test_curtail_action_battery_shift_follows_the_sign(delta_kw, action):
    assert CurtailAction.battery_shift(delta_kw) is action


# --- apply_plan --------------------------------------------------------------------------------


def test_apply_plan_shifts_loading_by_action_direction():
    snapshot = Snapshot(
        transformers=(transformer(5.0), transformer(-3.0, transformer_id="T2")),
        agents=(agent("h1"), agent("h2", transformer_id="T2")),
    )
    commands = [
        Command(agent_id="h1", action=SHED, power_kw=1.0),
        Command(agent_id="h1", action=DISCHARGE, power_kw=0.5),
        Command(agent_id="h2", action=CURTAIL, power_kw=2.0),
        Command(agent_id="h2", action=CHARGE, power_kw=0.25),
    ]
    assert apply_plan(snapshot, commands) == pytest.approx({"T1": 3.5, "T2": -0.75})


def test_apply_plan_no_commands_returns_loadings():
    snapshot = Snapshot(transformers=(transformer(5.0),), agents=())
    assert apply_plan(snapshot, []) == {"T1": 5.0}


def test_command_rejects_negative_power():
    with pytest.raises(ValueError):
        Command(agent_id="h1", action=SHED, power_kw=-1.0)


def test_snapshot_agents_on_filters_by_transformer():
    snapshot = Snapshot(transformers=(), agents=(agent("a"), agent("b", transformer_id="T2"), agent("c")))
    assert [a.agent_id for a in snapshot.agents_on("T1")] == ["a", "c"]
    assert snapshot.agents_on("T9") == []


def test_transformer_snapshot_violation_kw():
    assert transformer(13.0).violation_kw == pytest.approx(3.0)
    assert transformer(-12.0).violation_kw == pytest.approx(2.0)
    assert transformer(10.0).violation_kw == 0.0


# --- both planners -----------------------------------------------------------------------------


@pytest.mark.parametrize("planner", [plan_optimal, plan_rule], ids=["optimal", "rule"])
@pytest.mark.parametrize("loading_kw", [0.0, 10.0, -10.0, 7.5, -9.9])
def test_planners_no_violation_no_commands(planner, loading_kw):
    snapshot = Snapshot(
        transformers=(transformer(loading_kw),),
        agents=(agent("b1", discharge_battery=5.0, charge_battery=5.0), agent("h1", curtail_solar=3.0, shed_load=2.0)),
    )
    plan = planner(snapshot)
    assert plan.commands == []
    assert all(kw == 0.0 for kw in violations_after(snapshot, plan.commands).values())


@pytest.mark.parametrize(("name", "function"), [("optimal", plan_optimal), ("rule", plan_rule)])
def test_planners_registry_factory_makes_named_planner(name, function):
    snapshot = Snapshot(
        transformers=(transformer(14.0),),
        agents=(agent("b1", discharge_battery=6.0), agent("h1", shed_load=2.0)),
    )
    planner = PLANNERS[name]()  # a factory: each call makes a fresh planner
    assert planner(snapshot).commands == function(snapshot).commands


# --- plan_optimal: hand cases ------------------------------------------------------------------


def test_plan_optimal_overload_battery_only_exact_excess():
    snapshot = Snapshot(
        transformers=(transformer(13.0),),
        agents=(
            agent("b1", discharge_battery=5.0, charge_battery=5.0),
            agent("h1", curtail_solar=3.0, shed_load=4.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {("b1", DISCHARGE): pytest.approx(3.0, abs=KW_TOL)}
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(10.0, abs=KW_TOL)
    assert violations_after(snapshot, plan.commands) == {"T1": pytest.approx(0.0, abs=KW_TOL)}


def test_plan_optimal_overload_battery_short_then_shed_never_curtail():
    snapshot = Snapshot(
        transformers=(transformer(18.0),),
        agents=(
            agent("b1", discharge_battery=5.0, charge_battery=5.0),
            agent("h1", curtail_solar=3.0, shed_load=4.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {
        ("b1", DISCHARGE): pytest.approx(5.0, abs=KW_TOL),
        ("h1", SHED): pytest.approx(3.0, abs=KW_TOL),
    }
    assert all(c.action is not CURTAIL for c in plan.commands)
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(10.0, abs=KW_TOL)
    assert violations_after(snapshot, plan.commands)["T1"] == pytest.approx(0.0, abs=KW_TOL)


def test_plan_optimal_overload_nothing_enough_reports_unfixed():
    snapshot = Snapshot(
        transformers=(transformer(22.0),),
        agents=(agent("b1", discharge_battery=5.0), agent("h1", curtail_solar=3.0, shed_load=4.0)),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {
        ("b1", DISCHARGE): pytest.approx(5.0, abs=KW_TOL),
        ("h1", SHED): pytest.approx(4.0, abs=KW_TOL),
    }
    assert violations_after(snapshot, plan.commands) == {"T1": pytest.approx(3.0, abs=KW_TOL)}


def test_plan_optimal_reverse_flow_charge_before_curtail():
    snapshot = Snapshot(
        transformers=(transformer(-15.0),),
        agents=(
            agent("b1", charge_battery=3.0, discharge_battery=5.0),
            agent("h1", curtail_solar=4.0, shed_load=2.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {
        ("b1", CHARGE): pytest.approx(3.0, abs=KW_TOL),
        ("h1", CURTAIL): pytest.approx(2.0, abs=KW_TOL),
    }
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(-10.0, abs=KW_TOL)
    assert violations_after(snapshot, plan.commands)["T1"] == pytest.approx(0.0, abs=KW_TOL)


def test_plan_optimal_reverse_flow_battery_enough_no_curtail():
    snapshot = Snapshot(
        transformers=(transformer(-12.0),),
        agents=(agent("b1", charge_battery=3.0), agent("h1", curtail_solar=4.0)),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {("b1", CHARGE): pytest.approx(2.0, abs=KW_TOL)}


def test_plan_optimal_reverse_flow_nothing_enough_reports_unfixed_exactly():
    snapshot = Snapshot(
        transformers=(transformer(-20.0),),
        agents=(
            agent("b1", charge_battery=3.0, discharge_battery=5.0),
            agent("h1", curtail_solar=4.0, shed_load=2.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {
        ("b1", CHARGE): pytest.approx(3.0, abs=KW_TOL),
        ("h1", CURTAIL): pytest.approx(4.0, abs=KW_TOL),
    }
    assert violations_after(snapshot, plan.commands) == {"T1": pytest.approx(3.0, abs=KW_TOL)}
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(-13.0, abs=KW_TOL)


def test_action_cost_order_battery_then_solar_then_load():
    assert (
        HOLD_BACK_COST
        < ACTION_COST[CHARGE]
        == ACTION_COST[DISCHARGE]
        < ACTION_COST[CURTAIL]
        < ACTION_COST[SHED]
        < SLACK_COST
    )


@pytest.mark.parametrize(
    ("battery_power_kw", "action", "headroom_kw", "expected"),
    [
        (2.0, DISCHARGE, 7.0, [(2.0, HOLD_BACK_COST), (5.0, ACTION_COST[DISCHARGE])]),  # charging: stop first
        (2.0, DISCHARGE, 1.5, [(1.5, HOLD_BACK_COST), (0.0, ACTION_COST[DISCHARGE])]),  # headroom caps holding back
        (2.0, CHARGE, 3.0, [(0.0, HOLD_BACK_COST), (3.0, ACTION_COST[CHARGE])]),  # charging more is no hold-back
        (-1.5, CHARGE, 6.5, [(1.5, HOLD_BACK_COST), (5.0, ACTION_COST[CHARGE])]),  # discharging: stop first
        (0.0, DISCHARGE, 5.0, [(0.0, HOLD_BACK_COST), (5.0, ACTION_COST[DISCHARGE])]),
        (2.0, CURTAIL, 4.0, [(4.0, ACTION_COST[CURTAIL])]),
        (2.0, SHED, 4.0, [(4.0, ACTION_COST[SHED])]),
    ],
)
def test_segments_split_battery_headroom(battery_power_kw, action, headroom_kw, expected):
    flex = agent("b1", battery_power_kw=battery_power_kw, **{action.value: headroom_kw})
    assert _segments(flex, action, headroom_kw) == [(pytest.approx(kw), cost) for kw, cost in expected]


def test_plan_optimal_holds_back_charging_battery_first():
    # b1 charges at 2 kW by its own policy, so its discharge headroom spans 2 kW of holding back
    # plus 5 kW of real discharge; b2 is idle. 1.5 kW of excess: only b1, only holding back.
    snapshot = Snapshot(
        transformers=(transformer(11.5),),
        agents=(
            agent("b1", battery_power_kw=2.0, discharge_battery=7.0, charge_battery=3.0),
            agent("b2", discharge_battery=5.0, charge_battery=5.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {("b1", DISCHARGE): pytest.approx(1.5, abs=KW_TOL)}


def test_plan_optimal_holds_back_charging_battery_fully_before_idle_one():
    # 3 kW of excess: b1's 2 kW of holding back is used in full; the last kW may come from either.
    snapshot = Snapshot(
        transformers=(transformer(13.0),),
        agents=(
            agent("b2", discharge_battery=5.0),
            agent("b1", battery_power_kw=2.0, discharge_battery=7.0),
        ),
    )
    plan = plan_optimal(snapshot)
    powers = commanded(plan.commands)
    assert set(powers) <= {("b1", DISCHARGE), ("b2", DISCHARGE)}
    assert powers[("b1", DISCHARGE)] >= 2.0 - KW_TOL
    assert sum(powers.values()) == pytest.approx(3.0, abs=KW_TOL)


def test_plan_optimal_holds_back_discharging_battery_on_reverse_flow():
    snapshot = Snapshot(
        transformers=(transformer(-11.0),),
        agents=(
            agent("b2", charge_battery=5.0),
            agent("b1", battery_power_kw=-1.5, charge_battery=6.5),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {("b1", CHARGE): pytest.approx(1.0, abs=KW_TOL)}


def test_plan_optimal_two_transformers_leaves_normal_one_alone():
    snapshot = Snapshot(
        transformers=(transformer(12.0), transformer(5.0, transformer_id="T2")),
        agents=(
            agent("b1", discharge_battery=5.0),
            agent("h1", shed_load=4.0),
            agent("b2", transformer_id="T2", discharge_battery=5.0, charge_battery=5.0),
            agent("h2", transformer_id="T2", curtail_solar=4.0, shed_load=4.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert {c.agent_id for c in plan.commands} == {"b1"}
    after = apply_plan(snapshot, plan.commands)
    assert after == {"T1": pytest.approx(10.0, abs=KW_TOL), "T2": 5.0}


def test_plan_optimal_two_troubled_transformers_fixed_independently():
    snapshot = Snapshot(
        transformers=(transformer(12.0), transformer(-14.0, transformer_id="T2")),
        agents=(
            agent("b1", discharge_battery=5.0, charge_battery=5.0),
            agent("b2", transformer_id="T2", discharge_battery=5.0, charge_battery=1.0),
            agent("h2", transformer_id="T2", curtail_solar=4.0),
        ),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {
        ("b1", DISCHARGE): pytest.approx(2.0, abs=KW_TOL),
        ("b2", CHARGE): pytest.approx(1.0, abs=KW_TOL),
        ("h2", CURTAIL): pytest.approx(3.0, abs=KW_TOL),
    }
    assert apply_plan(snapshot, plan.commands) == {
        "T1": pytest.approx(10.0, abs=KW_TOL),
        "T2": pytest.approx(-10.0, abs=KW_TOL),
    }


def test_plan_optimal_ignores_negligible_headroom():
    snapshot = Snapshot(
        transformers=(transformer(12.0),),
        agents=(agent("b1", discharge_battery=1e-6), agent("h1", shed_load=5.0)),
    )
    plan = plan_optimal(snapshot)
    assert commanded(plan.commands) == {("h1", SHED): pytest.approx(2.0, abs=KW_TOL)}


# --- plan_rule: hand cases ---------------------------------------------------------------------


def test_plan_rule_overload_spreads_in_proportion_to_headroom():
    # excess 4 kW over 6 + 2 kW of helpful headroom: half of each. Solar curtailment would not help.
    snapshot = Snapshot(
        transformers=(transformer(14.0),),
        agents=(
            agent("b1", discharge_battery=6.0, charge_battery=5.0),
            agent("h1", shed_load=2.0, curtail_solar=10.0),
        ),
    )
    plan = plan_rule(snapshot)
    assert commanded(plan.commands) == {("b1", DISCHARGE): pytest.approx(3.0), ("h1", SHED): pytest.approx(1.0)}
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(10.0)
    assert violations_after(snapshot, plan.commands) == {"T1": 0.0}


def test_plan_rule_reverse_flow_spreads_in_proportion_to_headroom():
    # excess 3 kW over 2 + 4 kW of charge and curtailment: half of each; shedding would not help.
    snapshot = Snapshot(
        transformers=(transformer(-13.0),),
        agents=(
            agent("b1", charge_battery=2.0, discharge_battery=5.0),
            agent("h1", curtail_solar=4.0, shed_load=3.0),
        ),
    )
    plan = plan_rule(snapshot)
    assert commanded(plan.commands) == {("b1", CHARGE): pytest.approx(1.0), ("h1", CURTAIL): pytest.approx(2.0)}
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(-10.0)


def test_plan_rule_caps_at_full_headroom_and_reports_unfixed():
    snapshot = Snapshot(
        transformers=(transformer(20.0),),
        agents=(agent("b1", discharge_battery=5.0), agent("h1", shed_load=3.0, curtail_solar=4.0)),
    )
    plan = plan_rule(snapshot)
    assert commanded(plan.commands) == {("b1", DISCHARGE): pytest.approx(5.0), ("h1", SHED): pytest.approx(3.0)}
    assert violations_after(snapshot, plan.commands) == {"T1": pytest.approx(2.0)}
    assert apply_plan(snapshot, plan.commands)["T1"] == pytest.approx(12.0)


def test_plan_rule_no_helpful_resource_reports_whole_excess():
    snapshot = Snapshot(transformers=(transformer(-16.0),), agents=(agent("h1", shed_load=3.0),))
    plan = plan_rule(snapshot)
    assert plan.commands == []
    assert violations_after(snapshot, plan.commands) == {"T1": pytest.approx(6.0)}


def test_plan_rule_two_transformers_leaves_normal_one_alone():
    snapshot = Snapshot(
        transformers=(transformer(12.0), transformer(5.0, transformer_id="T2")),
        agents=(
            agent("b1", discharge_battery=4.0),
            agent("b2", transformer_id="T2", discharge_battery=5.0, charge_battery=5.0),
        ),
    )
    plan = plan_rule(snapshot)
    assert commanded(plan.commands) == {("b1", DISCHARGE): pytest.approx(2.0)}
    assert apply_plan(snapshot, plan.commands) == {"T1": pytest.approx(10.0), "T2": 5.0}


def test_plan_rule_costs_more_than_optimal_on_hand_case():
    snapshot = Snapshot(
        transformers=(transformer(14.0),),
        agents=(agent("b1", discharge_battery=6.0), agent("h1", shed_load=2.0)),
    )
    optimal_cost = weighted_cost(snapshot, plan_optimal(snapshot).commands)
    rule_cost = weighted_cost(snapshot, plan_rule(snapshot).commands)
    assert optimal_cost == pytest.approx(4.0 * ACTION_COST[DISCHARGE], abs=1e-4)
    assert rule_cost == pytest.approx(3.0 * ACTION_COST[DISCHARGE] + 1.0 * ACTION_COST[SHED])


# --- properties over random snapshots ----------------------------------------------------------

#: Quantities on a quarter-kW grid, so that no LP vertex falls below MIN_COMMAND_KW by accident.
quarter_kw = st.integers(0, 80).map(lambda n: n / 4)


@st.composite
def snapshots(draw) -> Snapshot:
    n_transformers = draw(st.integers(1, 3))
    transformers = tuple(
        TransformerSnapshot(
            transformer_id=f"T{i}",
            rating_kw=draw(st.integers(1, 120)) / 4,
            reverse_limit_kw=draw(st.integers(1, 120)) / 4,
            loading_kw=draw(st.integers(-240, 240)) / 4,
        )
        for i in range(n_transformers)
    )
    agents = []
    for i in range(draw(st.integers(0, 6))):
        actions = draw(st.lists(st.sampled_from(list(CurtailAction)), unique=True))
        agents.append(
            AgentFlex(
                agent_id=f"a{i}",
                transformer_id=f"T{draw(st.integers(0, n_transformers - 1))}",
                net_power_kw=0.0,
                headroom_kw={action: draw(quarter_kw) for action in actions},
                battery_power_kw=draw(st.integers(-20, 20)) / 4,
            )
        )
    return Snapshot(transformers=transformers, agents=tuple(agents))


@settings(max_examples=150, deadline=None)
@given(snapshots())
def test_plan_optimal_never_worsens_a_transformer(snapshot):
    plan = plan_optimal(snapshot)
    after = apply_plan(snapshot, plan.commands)
    for t in snapshot.transformers:
        after_kw = violation_kw(after[t.transformer_id], t.rating_kw, t.reverse_limit_kw)
        assert after_kw <= t.violation_kw + KW_TOL


@settings(max_examples=150, deadline=None)
@given(snapshots())
def test_plan_optimal_commands_within_headroom_on_troubled_transformers(snapshot):
    plan = plan_optimal(snapshot)
    flex = {a.agent_id: a for a in snapshot.agents}
    troubled = {t.transformer_id for t in snapshot.transformers if t.violation_kw > 0}
    commanded(plan.commands)  # at most one command per agent and action
    for command in plan.commands:
        assert flex[command.agent_id].transformer_id in troubled
        assert command.power_kw <= flex[command.agent_id].headroom_kw[command.action] + KW_TOL


@settings(max_examples=150, deadline=None)
@given(snapshots())
def test_plan_optimal_costs_no_more_than_rule(snapshot):
    optimal_cost = weighted_cost(snapshot, plan_optimal(snapshot).commands)
    rule_cost = weighted_cost(snapshot, plan_rule(snapshot).commands)
    assert optimal_cost <= rule_cost + 1e-4 * max(1.0, rule_cost)


@settings(max_examples=150, deadline=None)
@given(snapshots())
def test_plan_rule_never_worsens_a_transformer(snapshot):
    plan = plan_rule(snapshot)
    after = apply_plan(snapshot, plan.commands)
    for t in snapshot.transformers:
        after_kw = violation_kw(after[t.transformer_id], t.rating_kw, t.reverse_limit_kw)
        assert after_kw <= t.violation_kw + KW_TOL
