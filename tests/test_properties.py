"""Property tests: random sequences of steps, commands and restarts on home and battery agents, no HTTP.

Each example drives two copies of one agent in lockstep through the same operations: ``subject``,
which is now and then closed and built again from its saved state (a restart), and ``reference``,
which never restarts. After every operation the physics invariants must hold, and the two copies
must report the same status, so that a restart is invisible.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agents.common.errors import ConflictError
from agents.device.agent import DeviceAgent
from agents.device.battery import BatteryAgent
from agents.device.home import HomeAgent
from models.schemas import AgentStatus, CommandStatus, CurtailAction, CurtailCommand
from models.units import seconds_to_hours
from tests.conftest import BATTERY_CSV, HOME_CSV, make_battery_settings, make_home_settings

#: Power and energy agree to this much (kW, kWh): float rounding over a few dozen steps, nothing more.
TOLERANCE = 1e-9
#: The storage system's share of rated power at the air temperatures of BATTERY_CSV (README: 50% at -10 degC).
DERATING_AT_C = {20.0: 1.0, -10.0: 0.5}
STEP_S = 900.0  # both small CSVs are 15-minute data

PROPERTY_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small home and battery CSVs, written once for the module."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "home.csv").write_text(HOME_CSV, encoding="utf-8")
    (folder / "battery.csv").write_text(BATTERY_CSV, encoding="utf-8")
    return {"home": folder / "home.csv", "battery": folder / "battery.csv"}


# -- operations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Simulate:
    pass


@dataclass(frozen=True)
class Curtail:
    action: CurtailAction
    power_kw: float
    duration_s: float | None
    valid_until_steps: int | None  # valid_until as whole steps from the agent's current time
    reuse: int | None  # reuse the id of the n-th earlier command (mod how many there are)
    same_body: bool  # when reusing: the earlier body (a duplicate) or this one (a conflict)


@dataclass(frozen=True)
class Restart:
    pass


powers = st.one_of(
    st.sampled_from([0.0, 1e-12, 0.1, 1.0, 3.0, 5.0, 25.0, 100.0]),
    st.floats(min_value=0.0, max_value=40.0, allow_nan=False, allow_infinity=False),
)
curtails = st.builds(
    Curtail,
    action=st.sampled_from(list(CurtailAction)),
    power_kw=powers,
    duration_s=st.sampled_from([None, 1.0, 450.0, 900.0, 1800.0, 1800.0, 3600.0, 3600.0, 86_400.0]),
    valid_until_steps=st.one_of(st.none(), st.integers(min_value=-2, max_value=4)),
    reuse=st.one_of(st.none(), st.none(), st.integers(min_value=0, max_value=20)),
    same_body=st.booleans(),
)
#: A command that holds for two steps, ends, and then a restart:
#: the agent must still say why it is back on local policy.
HELD_THEN_RESTART = [
    Simulate(),
    Curtail(CurtailAction.discharge_battery, 1.0, 1800.0, None, None, False),
    Curtail(CurtailAction.curtail_solar, 1.0, 1800.0, None, None, False),
    Simulate(),
    Simulate(),
    Restart(),
    Simulate(),
]
operations = st.lists(
    st.one_of(st.just(Simulate()), st.just(Simulate()), st.just(Simulate()), curtails, curtails, st.just(Restart())),
    min_size=1,
    max_size=30,
)


# -- the harness -----------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the test itself knows of an agent's battery: the SoC it began with and each finished step's power."""

    soc_start_fraction: float
    finished_step_powers_kw: list[float] = field(default_factory=list)


def stored_kwh(power_kw: float, eta_charge: float, eta_discharge: float) -> float:
    """Energy into the cells over one step at ``power_kw`` (> 0 charges): P*dt*eta_c, or P*dt/eta_d."""
    return power_kw * seconds_to_hours(STEP_S) * (eta_charge if power_kw > 0 else 1.0 / eta_discharge)


class Pair:
    """A subject that restarts and a reference that does not, driven in lockstep."""

    def __init__(self, build: Callable[[Path, bool], DeviceAgent], root: Path) -> None:
        self.build = build
        self.root = root
        self.subject = build(root / "subject", True)
        self.reference = build(root / "reference", True)
        battery = self.subject.status().battery
        self.ledger = Ledger(battery.soc_fraction) if battery else None
        self.commands: list[CurtailCommand] = []
        self.answers: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.subject.close()
        self.reference.close()

    def restart(self) -> None:
        before = self.subject.status()
        self.subject.close()
        self.subject = self.build(self.root / "subject", False)
        after = self.subject.status()
        assert _same(after, before), _diff(before, after)

    def simulate(self) -> None:
        if self.ledger is not None:
            self.ledger.finished_step_powers_kw.append(self.subject.status().battery.power_kw)
        s, r = self.subject.simulate(), self.reference.simulate()
        assert _same(s, r), _diff(r, s)

    def command(self, op: Curtail) -> CurtailCommand:
        now = self.subject.timestamp
        valid_until = None
        duration_s = op.duration_s
        if op.valid_until_steps is not None and now is not None:
            valid_until, duration_s = now + timedelta(seconds=STEP_S * op.valid_until_steps), None
        fresh = CurtailCommand(
            command_id=f"c{len(self.commands)}",
            action=op.action,
            power_kw=op.power_kw,
            duration_s=duration_s,
            valid_until=valid_until,
        )
        if op.reuse is None or not self.commands:
            return fresh
        earlier = self.commands[op.reuse % len(self.commands)]
        return earlier if op.same_body else fresh.model_copy(update={"command_id": earlier.command_id})

    def curtail(self, op: Curtail) -> None:
        command = self.command(op)
        before = self.subject.status()
        if command.command_id in self.answers and _body(command) != self.answers[command.command_id]["body"]:
            for agent in (self.subject, self.reference):
                with pytest.raises(ConflictError):
                    agent.curtail(command)
            assert self.subject.status() == before  # a conflict changes nothing
            assert _same(self.reference.status(), before)
            return
        result, reference = self.subject.curtail(command), self.reference.curtail(command)
        assert result.model_copy(update={"agent_status": None}) == reference.model_copy(update={"agent_status": None})
        assert _same(result.agent_status, reference.agent_status), _diff(reference.agent_status, result.agent_status)
        after = result.agent_status
        assert after == self.subject.status()

        if command.command_id in self.answers:
            first = self.answers[command.command_id]
            assert result.status is CommandStatus.duplicate
            assert result.applied_kw == first["applied_kw"]
            assert after == before  # a duplicate is not applied again
            return
        self.commands.append(command)
        self.answers[command.command_id] = {"body": _body(command), "applied_kw": result.applied_kw}

        # what was applied: never negative, never above the request; the status says which
        assert 0.0 <= result.applied_kw <= command.power_kw
        assert result.requested_kw == command.power_kw
        if result.status is CommandStatus.applied:
            assert result.applied_kw == command.power_kw
        elif result.status is CommandStatus.rejected:
            assert result.applied_kw == 0.0
            assert result.reason
        else:
            assert result.status is CommandStatus.partial
            assert 0.0 < result.applied_kw < command.power_kw
            assert result.reason
        # net power moves by exactly the applied amount, in the action's direction
        moved = after.net_power_kw - before.net_power_kw
        expected = command.action.direction * result.applied_kw
        assert moved == pytest.approx(expected, abs=TOLERANCE), (command, before.net_power_kw, after.net_power_kw)
        expired = (
            command.valid_until is not None and before.timestamp is not None and command.valid_until <= before.timestamp
        )
        if expired or (
            after.step == 0 and command.power_kw > TOLERANCE
        ):  # before the first step a 0 kW command is a no-op
            assert result.status is CommandStatus.rejected

    def check_invariants(self, rated_kw: Callable[[AgentStatus], float]) -> None:
        status = self.subject.status()
        assert status.step == self.reference.status().step
        battery = status.battery
        if battery is None:
            return
        tolerance = 1e-12
        assert battery.soc_min_fraction - tolerance <= battery.soc_fraction <= battery.soc_max_fraction + tolerance
        limit_kw = rated_kw(status)
        assert battery.max_charge_kw == pytest.approx(limit_kw) and battery.max_discharge_kw == pytest.approx(limit_kw)
        assert -limit_kw - TOLERANCE <= battery.power_kw <= limit_kw + TOLERANCE
        # energy balance: capacity * (soc_now - soc_start) == sum over steps of charge*eta_c - discharge/eta_d
        spec = self.subject.battery.spec
        powers = [*self.ledger.finished_step_powers_kw, battery.power_kw]
        into_cells_kwh = math.fsum(
            stored_kwh(p, spec.charge_efficiency_fraction, spec.discharge_efficiency_fraction) for p in powers
        )
        held_kwh = battery.capacity_kwh * (battery.soc_fraction - self.ledger.soc_start_fraction)
        assert held_kwh == pytest.approx(into_cells_kwh, abs=1e-9), (held_kwh, into_cells_kwh, powers)


def _body(command: CurtailCommand) -> dict[str, Any]:
    return command.model_dump(mode="json", exclude={"command_id"}, exclude_none=True)


#: Where an agent's simulated time began (which state file, whether it resumed): a restarted subject and its
#: reference differ there by design, and nowhere else.
ORIGIN = {"started_from", "start_note"}


def _same(a: AgentStatus, b: AgentStatus) -> bool:
    return a.model_dump(exclude=ORIGIN) == b.model_dump(exclude=ORIGIN)


def _diff(expected: AgentStatus, got: AgentStatus) -> str:
    a, b = expected.model_dump(mode="json", exclude=ORIGIN), got.model_dump(mode="json", exclude=ORIGIN)
    return "; ".join(f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b.get(k))


def run(pair: Pair, ops: list[Any], rated_kw: Callable[[AgentStatus], float]) -> None:
    try:
        pair.check_invariants(rated_kw)
        for op in ops:
            if isinstance(op, Simulate):
                pair.simulate()
            elif isinstance(op, Restart):
                pair.restart()
            else:
                pair.curtail(op)
            pair.check_invariants(rated_kw)
    finally:
        pair.close()


# -- the properties --------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(
    ops=operations,
    battery_kwh=st.sampled_from([0.0, 1.0, 13.5]),
    initial_soc=st.sampled_from([0.0, 0.1, 0.5, 0.94, 1.0]),
    start=st.sampled_from(["2025-06-01T00:00", "2025-06-01T00:30", "2025-06-01T01:30"]),
    flexible=st.sampled_from([0.0, 0.3, 1.0]),
)
@example(ops=HELD_THEN_RESTART, battery_kwh=13.5, initial_soc=0.5, start="2025-06-01T00:30", flexible=0.3)
def test_home_agent_invariants_over_random_commands_and_restarts(
    data_files, ops, battery_kwh, initial_soc, start, flexible
):
    def build(folder: Path, fresh: bool) -> HomeAgent:
        return HomeAgent(
            make_home_settings(
                folder,
                data_file=data_files["home"],
                start=start,
                battery_kwh=battery_kwh,
                battery_kw=5.0,
                initial_soc_fraction=initial_soc,
                flexible_fraction=flexible,
                fresh=fresh,
            )
        )

    with tempfile.TemporaryDirectory() as root:
        pair = Pair(build, Path(root))
        run(pair, ops, rated_kw=lambda status: 5.0)


@PROPERTY_SETTINGS
@given(
    ops=operations,
    capacity_kwh=st.sampled_from([2.0, 10.0, 50.0]),
    initial_soc=st.sampled_from([0.0, 0.1, 0.5, 0.94, 1.0]),
    start=st.sampled_from(["2025-06-01T00:00", "2025-06-01T00:30", "2025-06-01T00:45"]),
)
@example(ops=HELD_THEN_RESTART, capacity_kwh=50.0, initial_soc=0.5, start="2025-06-01T00:00")
def test_battery_agent_invariants_over_random_commands_and_restarts(data_files, ops, capacity_kwh, initial_soc, start):
    def build(folder: Path, fresh: bool) -> BatteryAgent:
        return BatteryAgent(
            make_battery_settings(
                folder,
                data_file=data_files["battery"],
                start=start,
                capacity_kwh=capacity_kwh,
                power_kw=25.0,
                initial_soc_fraction=initial_soc,
                fresh=fresh,
            )
        )

    def rated_kw(status: AgentStatus) -> float:
        return 25.0 * DERATING_AT_C[status.temp_air_c] if status.temp_air_c is not None else 25.0

    with tempfile.TemporaryDirectory() as root:
        pair = Pair(build, Path(root))
        run(pair, ops, rated_kw)


@pytest.mark.parametrize("power_kw", [0.0, 0.2])
def test_expired_command_is_rejected_whatever_its_power(data_files, tmp_path, power_kw):
    agent = HomeAgent(make_home_settings(tmp_path, data_file=data_files["home"], start="2025-06-01T00:30"))
    agent.simulate()
    before = agent.status()
    late = CurtailCommand(
        command_id="late", action=CurtailAction.shed_load, power_kw=power_kw, valid_until=before.timestamp
    )
    result = agent.curtail(late)
    agent.close()
    assert (result.status, result.applied_kw) == (CommandStatus.rejected, 0.0)
    assert result.reason.startswith("expired: valid until 2025-06-01T00:30:00")
    assert result.agent_status == before  # and nothing moved
