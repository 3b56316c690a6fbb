"""What home and battery agents share: the step/curtail state machine, without its transport."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from agents.common.csvlog import CsvLogWriter
from agents.common.data import TimeSeries
from agents.common.errors import ConflictError
from agents.common.metrics import DeviceMetrics
from agents.common.settings import DeviceSettings, StartupError
from agents.common.state import StateStore
from agents.device.timeline import cycle_number, feeder_index, split_cycle_id, start_index
from models.devices import POWER_TOLERANCE_KW, BatteryModule
from models.schemas import (
    ActiveCommand,
    AgentStatus,
    AgentType,
    BatteryStatus,
    CommandStatus,
    CurtailAction,
    CurtailCommand,
    CurtailResult,
    FeederClock,
    Flexibility,
    StartedFrom,
)

logger = logging.getLogger(__name__)

#: How many answered command ids an agent remembers for idempotency.
SEEN_COMMANDS_LIMIT = 10_000

STEP_LOG_COLUMNS = (
    "step",
    "timestamp",
    "net_power_kw",
    "solar_available_kw",
    "solar_output_kw",
    "solar_curtailed_kw",
    "load_demand_kw",
    "load_served_kw",
    "load_shed_kw",
    "battery_power_kw",
    "battery_soc_fraction",
    "price_per_kwh",
    "temp_air_c",
    "commands",
)


class DeviceAgent:
    """A home or storage agent without its transport: steps through data, applies commands.

    Subclasses set ``agent_type`` and implement ``_begin_step`` (the local policy) and
    ``_apply`` (one command's physics). Everything here runs on the event loop without
    awaiting, so each request sees and leaves a consistent state.
    """

    agent_type: AgentType
    description: str = ""

    def __init__(
        self, settings: DeviceSettings, data: TimeSeries, battery: BatteryModule | None, store: StateStore | None = None
    ) -> None:
        self.settings = settings
        self.agent_id = settings.agent_id
        self.data = data
        self.battery = battery
        self.start_index = start_index(data, settings.start) if settings.start else 0
        self.step = 0
        self.logged_step = 0
        self.row: dict[str, float] = {}
        self.commands_this_step = 0
        self._status: AgentStatus | None = None
        self.active: dict[str, ActiveCommand] = {}
        self.control_reason: str | None = None
        self.last_cycle_id: str | None = None  # the X-Cycle-Id it last stepped for
        self.local_setpoint_kw = 0.0  # the battery setpoint the local policy chose this step, before commands
        self._timestamp_index: int | None = None  # the data row ``_timestamp`` is the time of
        self._timestamp: datetime | None = None
        self.last_grid_contact: float | None = None  # time.monotonic() of the last word from the grid agent
        self._seen: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._unsaved: dict[str, dict[str, Any]] = {}
        self.started_from, self.start_note = StartedFrom.start, ""  # where its simulated time began (see _restore)
        self._why_new = ""  # why it starts without saved progress, for start_note
        self._feeder_clock: FeederClock | None = None  # the running feeder's clock, heard before the first step
        self.metrics = DeviceMetrics(self.status)
        try:
            self.own_store = store is None  # a process hosting many agents shares one store
            self.store = (
                store if store is not None else StateStore(settings.state_dir, self.agent_id, fresh=settings.fresh)
            )
            self.log = CsvLogWriter(
                settings.log_dir / f"{self.agent_id}_log.csv", STEP_LOG_COLUMNS, fresh=settings.fresh
            )
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(
                f"agent {self.agent_id}: cannot keep its state in {settings.state_dir} or its log in "
                f"{settings.log_dir}: {exc}"
            ) from exc
        self._restore()
        last_logged = self.log.last_value("step")
        if last_logged and last_logged.isdigit() and int(last_logged) <= self.step:
            # a kill after a row was written but before the next commit: the log, not the state, knows it is written
            self.logged_step = max(self.logged_step, int(last_logged))

    # -- state -------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Resume where the saved state left off: same step, same SoC, same operating point.

        With no saved state, or one from before the first step, the agent is new: it starts at ``--start``,
        unless the grid agent's clock says the feeder is running already (``follow_feeder``).
        """
        saved = self.store.load(self.agent_id)
        self._seen.update(self.store.commands(self.agent_id, SEEN_COMMANDS_LIMIT))
        path = self.store.path
        if saved:  # what it answered and was told is kept even before its first step
            self.commands_this_step = int(saved.get("commands_this_step", 0))
            self.active = {c["command_id"]: ActiveCommand.model_validate(c) for c in saved.get("active_commands", [])}
            self.control_reason = saved.get("control_reason")
            self.last_cycle_id = saved.get("last_cycle_id")
            if self.battery is not None and saved.get("soc_start_fraction") is not None:
                self.battery.soc_fraction = float(saved["soc_start_fraction"])
                self.battery.begin_step()
        if not saved or not int(saved["step"]):
            if self.settings.fresh:
                self._why_new = f"--fresh: started without the state in {path}"
            else:
                self._why_new = f"no saved state in {path}" if not saved else f"nothing stepped yet in {path}"
            when = self.data.timestamp(self.start_index).isoformat()
            where = f"--start {when}" if self.settings.start else f"its data's first row, {when}"
            self.start_note = f"{self._why_new}; a new run, started at {where}"
            return
        self.step = int(saved["step"])
        self.logged_step = int(saved.get("logged_step", self.step - 1))
        self.start_index = int(saved.get("start_index", self.start_index))
        self.row = self._read_row(self.start_index + self.step - 1)
        self._follow_local_policy(self.row)
        self._restore_operating_point(saved)
        self.started_from = StartedFrom.saved_state
        self.start_note = f"resumed at step {self.step} ({self.timestamp.isoformat()}) from its state in {path}"
        logger.info("%s: %s", self.agent_id, self.start_note)

    def follow_feeder(self, clock: FeederClock | None) -> None:
        """Before its first step, a new agent (no saved progress) lines its data up with the running feeder.

        ``clock`` comes with the grid agent's answer to each registration and heartbeat (None in a new run:
        the agent stays at ``--start``). The agent's first step then lands on the feeder's next step; the
        cycle that steps it corrects for cycles run meanwhile (``simulate``). Once stepped, it never jumps.
        """
        if clock is None or self.step > 0:
            return
        self._feeder_clock = clock
        self._join_feeder(clock.cycle + 1)

    def _join_feeder(self, cycle: int) -> None:
        """Start at the feeder's step in its ``cycle``: that of the clock's, ``step_s`` on for each cycle after."""
        clock = self._feeder_clock
        assert clock is not None, "follow_feeder keeps the clock before the first step"
        try:
            when = clock.timestamp.replace(tzinfo=None) + timedelta(seconds=clock.step_s * (cycle - clock.cycle))
            index, caveats = feeder_index(self.data, when)
        except (OverflowError, ValueError) as exc:  # a clock no data could follow: stay where it is, and say why
            logger.warning("%s: cannot follow the feeder's clock %s: %s", self.agent_id, clock.model_dump_json(), exc)
            return
        if clock.step_s != self.data.step_s:
            caveats.append(f"its data's step ({self.data.step_s:g} s) is not the feeder's ({clock.step_s:g} s)")
        note = "; ".join([f"{self._why_new}; started afresh at the feeder's step {when.isoformat()}", *caveats])
        if (self.started_from, self.start_index, self.start_note) == (StartedFrom.feeder, index, note):
            return
        self.started_from, self.start_index, self.start_note = StartedFrom.feeder, index, note
        self._status = None
        logger.warning("%s: %s", self.agent_id, note)

    def _operating_point(self) -> dict[str, Any]:
        """What commands changed this step, so that a restart restores it."""
        if self.battery is None:
            return {}
        return {"soc_start_fraction": self.battery.soc_start_fraction, "battery_power_kw": self.battery.power_kw}

    def _restore_operating_point(self, saved: dict[str, Any]) -> None:
        if self.battery is not None and saved.get("battery_power_kw") is not None:
            self.battery.set_power(float(saved["battery_power_kw"]))

    def current_status(self) -> AgentStatus:
        """``status()``, built once per change of state: a step is reported, logged and answered from one object."""
        if self._status is None:
            self._status = self.status()
        return self._status

    def _save(self) -> None:
        self._status = None  # every change of state is saved, so here the cached status goes stale
        state = {
            "step": self.step,
            "logged_step": self.logged_step,
            "start_index": self.start_index,
            "commands_this_step": self.commands_this_step,
            "active_commands": [c.model_dump(mode="json") for c in self.active.values()],
            "control_reason": self.control_reason,
            "last_cycle_id": self.last_cycle_id,
            **self._operating_point(),
        }
        self.store.save(self.agent_id, state, self._unsaved)
        self._unsaved = {}

    # -- the step ----------------------------------------------------------------------------
    @property
    def timestamp(self) -> datetime | None:
        """Simulated time of the current step; None before the first."""
        if self.step <= 0:
            return None
        index = self.start_index + self.step - 1
        if index != self._timestamp_index:  # asked for several times a step: worked out once
            self._timestamp_index, self._timestamp = index, self.data.timestamp(index)
        return self._timestamp

    def heard_from_grid(self) -> None:
        """The grid agent called, or answered a heartbeat."""
        self.last_grid_contact = time.monotonic()

    def check_fail_safe(self) -> bool:
        """Drop the grid agent's commands and return to local policy if it has been silent too long."""
        if self.last_grid_contact is None or not (self.active or self.commands_this_step):
            return False
        silent_s = time.monotonic() - self.last_grid_contact
        if silent_s <= self.settings.fail_safe_after_s:
            return False
        self._revert(f"fail-safe: no word from the grid agent for {silent_s:.0f} s")
        return True

    def _revert(self, reason: str) -> None:
        """Back to the local policy for this step: active commands dropped, the step re-planned locally."""
        dropped = len(self.active) + self.commands_this_step
        self.active.clear()
        self.commands_this_step = 0
        if self.step > 0:
            self._follow_local_policy(self.row)  # the battery re-plans from the SoC the step began with
        self.control_reason = reason
        self._save()
        logger.warning(
            "%s step %d: %s; dropped %d command(s), back on local policy", self.agent_id, self.step, reason, dropped
        )

    def simulate(self, cycle_id: str | None = None) -> AgentStatus:
        """Advance one step through the data, run the local policy, then re-apply commands still holding.

        ``cycle_id`` (``X-Cycle-Id``, ``run:cycle``) makes it at most once a cycle: a cycle already stepped for,
        or an earlier cycle of the same run, answers the status as it is (see ``models.schemas.CYCLE_ID_PATTERN``).
        """
        if cycle_id is not None and self._stepped_for(cycle_id):
            return self.current_status()
        if self._feeder_clock is not None:  # a new agent on a running feeder: its first step is the feeder's
            self._join_feeder(cycle_number(cycle_id, self._feeder_clock))
            self._feeder_clock = None
        if cycle_id is not None:
            self.last_cycle_id = cycle_id
        self._write_log_row()
        self.step += 1
        self.row = self._read_row(self.start_index + self.step - 1)
        self.commands_this_step = 0
        if self.battery is not None:
            self.battery.begin_step()
        self._follow_local_policy(self.row)
        now = self.timestamp
        for command_id, command in list(self.active.items()):
            if command.valid_until <= now:
                del self.active[command_id]
                self.control_reason = f"command {command_id} ended at {command.valid_until.isoformat()}"
                continue
            applied, _ = self._apply(command.action, command.power_kw)
            self.commands_this_step += applied > POWER_TOLERANCE_KW
        self._save()
        return self.current_status()

    def _stepped_for(self, cycle_id: str) -> bool:
        """Whether this agent has stepped for ``cycle_id`` or a later cycle of the same grid agent's run."""
        if self.last_cycle_id is None:
            return False
        run, number = split_cycle_id(cycle_id)
        last_run, last_number = split_cycle_id(self.last_cycle_id)
        if run != last_run or number > last_number:
            return False
        logger.info("%s: no step for cycle %s, already stepped for %s", self.agent_id, cycle_id, self.last_cycle_id)
        return True

    def _read_row(self, index: int) -> dict[str, float]:
        """The data this agent sees at row ``index`` (wrapping at the end of the data)."""
        return self.data.row(index)

    def _follow_local_policy(self, row: dict[str, float]) -> None:
        """Run the local policy for the step and remember the battery setpoint it chose, before any command."""
        self._begin_step(row)
        self.local_setpoint_kw = self.battery.power_kw if self.battery is not None else 0.0

    def _begin_step(self, row: dict[str, float]) -> None:
        raise NotImplementedError

    def _apply(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        """Apply one command; return the kW applied and, when short of the request, why."""
        raise NotImplementedError

    def _apply_battery(self, action: CurtailAction, power_kw: float) -> tuple[float, str | None]:
        if self.battery is None:
            return 0.0, "this agent has no battery"
        if self.step == 0:
            return 0.0, "no step simulated yet"
        # a battery's power counts one for one in net power, so the setpoint moves the way the action moves net power
        shift = self.battery.shift(action.direction * power_kw)
        applied = abs(shift)
        limit = (
            "full or at its charge limit"
            if action is CurtailAction.charge_battery
            else "empty or at its discharge limit"
        )
        return applied, None if applied >= power_kw - POWER_TOLERANCE_KW else f"battery {limit}"

    def url(self, base_url: str, at_root: bool) -> str:
        """Where the grid agent reaches this agent's endpoints."""
        return base_url if at_root else f"{base_url}/agents/{self.agent_id}"

    def check_addressee(self, expected: str | None) -> None:
        """A call meant for another agent (a stale or wrong URL) must not step or command this one."""
        if expected is not None and expected != self.agent_id:
            raise ConflictError(f"this is agent {self.agent_id}, not {expected}", self.agent_id)

    def _valid_until(self, command: CurtailCommand) -> datetime | None:
        """When a command ends in simulated time; None before the first step (it cannot apply)."""
        if self.timestamp is None:
            return None
        if command.valid_until is not None:
            return command.valid_until.replace(tzinfo=None)
        return self.timestamp + timedelta(seconds=command.duration_s or self.data.step_s)

    def curtail(self, command: CurtailCommand) -> CurtailResult:
        """Apply a command once; a repeated id answers ``duplicate``, a reused id with another body 409."""
        body = command.model_dump(mode="json", exclude={"command_id"}, exclude_none=True)
        seen = self._seen.get(command.command_id)
        if seen is not None:
            if seen["body"] != body:
                raise ConflictError(
                    f"command_id {command.command_id!r} was already used with another body", self.agent_id
                )
            first = seen["result"]
            self.metrics.command(command.action, CommandStatus.duplicate)
            return CurtailResult(**{**first, "status": CommandStatus.duplicate, "agent_status": self.current_status()})
        valid_until = self._valid_until(command)
        expired = valid_until is not None and valid_until <= self.timestamp
        if expired:
            applied, reason = (
                0.0,
                f"expired: valid until {valid_until.isoformat()}, the agent is at {self.timestamp.isoformat()}",
            )
        else:
            applied, reason = self._apply(command.action, command.power_kw)
            self._status = None  # the operating point moved
            if applied > POWER_TOLERANCE_KW and valid_until > self.timestamp + timedelta(seconds=self.data.step_s):
                self.active[command.command_id] = ActiveCommand(
                    command_id=command.command_id,
                    action=command.action,
                    power_kw=command.power_kw,
                    valid_until=valid_until,
                )
        applied = min(max(applied, 0.0), command.power_kw)
        if applied >= command.power_kw - POWER_TOLERANCE_KW and not expired:  # an expired 0 kW command is rejected too
            status, applied = CommandStatus.applied, command.power_kw
        elif applied > POWER_TOLERANCE_KW:
            status = CommandStatus.partial
        else:
            status, applied = CommandStatus.rejected, 0.0
        if applied > 0:
            self.commands_this_step += 1
        result = CurtailResult(
            command_id=command.command_id,
            action=command.action,
            status=status,
            requested_kw=command.power_kw,
            applied_kw=applied,
            reason=reason if status is not CommandStatus.applied else None,
            agent_status=self.current_status(),
        )
        record = {"body": body, "result": result.model_dump(mode="json", exclude={"agent_status"})}
        self._seen[command.command_id] = record
        self._unsaved[command.command_id] = record
        while len(self._seen) > SEEN_COMMANDS_LIMIT:
            self._seen.popitem(last=False)
        self._save()
        logger.debug(
            "%s step %d: %s %.3f kW -> %s %.3f kW",
            self.agent_id,
            self.step,
            command.action.value,
            command.power_kw,
            status.value,
            applied,
        )
        self.metrics.command(command.action, status)
        return result

    # -- reporting ---------------------------------------------------------------------------
    def _battery_status(self) -> BatteryStatus | None:
        b = self.battery
        if b is None:
            return None
        return BatteryStatus(
            soc_fraction=b.soc_fraction,
            power_kw=b.power_kw,
            capacity_kwh=b.spec.capacity_kwh,
            max_charge_kw=b.spec.max_charge_kw,
            max_discharge_kw=b.spec.max_discharge_kw,
            soc_min_fraction=b.spec.soc_min_fraction,
            soc_max_fraction=b.spec.soc_max_fraction,
            soc_start_fraction=b.soc_start_fraction,
            charge_efficiency_fraction=b.spec.charge_efficiency_fraction,
            discharge_efficiency_fraction=b.spec.discharge_efficiency_fraction,
            local_setpoint_kw=self.local_setpoint_kw,
        )

    def _flexibility(self, **own_kw: float) -> Flexibility:
        """This step's headroom: the battery's, and what the kind of agent adds (``own_kw``); none before the
        first step."""
        if self.step == 0:
            return Flexibility()
        if self.battery is None:
            return Flexibility(**own_kw)
        return Flexibility(
            charge_battery_kw=self.battery.charge_headroom_kw,
            discharge_battery_kw=self.battery.discharge_headroom_kw,
            **own_kw,
        )

    def status(self) -> AgentStatus:
        raise NotImplementedError

    def _common_status(self) -> dict[str, Any]:
        """The status fields every kind of agent reports: who and where, its step, its battery, who is in charge."""
        in_charge = "grid" if (self.active or self.commands_this_step) else "local"
        return {
            "agent_id": self.agent_id,
            "agent_type": self.agent_type,
            "transformer_id": self.settings.transformer_id,
            "bus": self.settings.bus,
            "step": self.step,
            "timestamp": self.timestamp,
            "step_s": self.data.step_s,
            "battery": self._battery_status(),
            "temp_air_c": self.row.get("temp_air_c"),
            "control": in_charge,
            "control_reason": self.control_reason,
            "active_commands": list(self.active.values()),
            "started_from": self.started_from,
            "start_note": self.start_note,
        }

    def _write_log_row(self) -> None:
        """Log the current step once it is final (when the next begins, or at shutdown)."""
        if self.step <= self.logged_step:
            return
        self.logged_step = self.step
        s = self.current_status()
        solar, load, battery = s.solar, s.load, s.battery
        self.log.write_values(
            (
                s.step,
                s.timestamp,
                s.net_power_kw,
                *((solar.available_kw, solar.output_kw, solar.curtailed_kw) if solar else (None, None, None)),
                *((load.demand_kw, load.served_kw, load.shed_kw) if load else (None, None, None)),
                *((battery.power_kw, battery.soc_fraction) if battery else (None, None)),
                s.price_per_kwh,
                s.temp_air_c,
                self.commands_this_step,
            )
        )

    def close(self) -> None:
        """Write the last step's row, save the state and close the files."""
        self._write_log_row()
        self._save()
        self.log.close()
        if self.own_store:
            self.store.close()
