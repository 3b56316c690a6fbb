"""The wire contract: Pydantic schemas every agent shares.

Units travel in the field names. ``net_power_kw`` > 0 imports from the grid; a battery's
``power_kw`` > 0 charges it.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from models.grid import TransformerState

#: An agent id is a URL path segment (/agents/{agent_id}/...) and names files: no leading dot, so never "." or "..",
#: which clients fold away as dot segments before the request leaves them.
AgentId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")]
NonNegativeKw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: On the wire a command's power must be a JSON number: no "0.1" strings, no booleans.
StrictNonNegativeKw = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
#: Numbers and counts that arrive from clients must be JSON numbers: no true, no "1.5".
Number = Annotated[float, Field(strict=True)]


def _json_integer(value: object) -> object:
    """JSON Schema's integer: 3 and 3.0 are, true and "3" are not."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Count = Annotated[int, BeforeValidator(_json_integer)]
#: A network's bus index (>= 0). The schema is stated: pydantic drops ``minimum`` for a validated int in a union.
BusIndex = Annotated[Count, Field(ge=0), WithJsonSchema({"type": "integer", "minimum": 0})]


def _no_numbers_for_time(value: object) -> object:
    if isinstance(value, (int, float)):  # pydantic would read a number as Unix seconds
        raise ValueError("give an ISO 8601 time such as 2025-07-15T17:00:00, not a number")
    return value


#: Simulated time in answers: ISO 8601 on the data's own local clock, so with no UTC offset
#: (2025-06-01T00:30:00). JSON Schema's ``date-time`` demands an offset, so answers say what they send.
SimulatedTime = Annotated[
    datetime,
    BeforeValidator(_no_numbers_for_time),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$"},
        mode="serialization",
    ),
]


class AgentType(str, Enum):
    """Kinds of agent."""

    grid = "grid"
    home = "home"
    battery = "battery"
    ven = "ven"  # an OpenADR 3 VEN's resource, on the feeder through the grid agent's VTN


class CurtailAction(str, Enum):
    """What a command asks an agent to do; each shifts its net power by the command's power_kw."""

    # which way each one shifts it is ``direction``, and nowhere else: planners, agents and benches ask it
    curtail_solar = "curtail_solar"
    shed_load = "shed_load"
    charge_battery = "charge_battery"
    discharge_battery = "discharge_battery"

    @property
    def direction(self) -> int:
        """+1 when the action raises the agent's net power, -1 when it lowers it."""
        return 1 if self in (CurtailAction.curtail_solar, CurtailAction.charge_battery) else -1

    @classmethod
    def moving(cls, direction: int) -> tuple[CurtailAction, ...]:
        """The actions that move net power ``direction`` (+1 raises, -1 lowers)."""
        return tuple(action for action in cls if action.direction == direction)

    @classmethod
    def battery_shift(cls, delta_kw: float) -> CurtailAction:
        """The battery action that moves a setpoint by ``delta_kw`` (> 0 towards charging).

        A battery's power counts one for one in its site's net power (``models.policies.net_power_kw``),
        so it is the battery action whose direction has the sign of ``delta_kw``.
        """
        return cls.charge_battery if cls.charge_battery.direction * delta_kw > 0 else cls.discharge_battery


class FallbackKind(str, Enum):
    """Why the ai planner's own plan was not used (the optimal plan was): a fixed set, for labels and reports."""

    missing_key = "missing_key"  # no OpenAI key: the model is never asked
    timeout = "timeout"  # no answer within the planner's deadline
    rate_limited = "rate_limited"  # HTTP 429
    server_error = "server_error"  # any other HTTP error status from the model's server
    connection = "connection"  # the model's server could not be reached
    call_failed = "call_failed"  # any other failure of the OpenAI client
    no_answer = "no_answer"  # an answer without a message
    refusal = "refusal"  # the model refused, or its answer was filtered
    truncated = "truncated"  # the answer was cut off at its length limit
    bad_json = "bad_json"  # not JSON, or not the plan's schema
    unknown_agent = "unknown_agent"  # a command for an agent the prompt did not list
    duplicate_command = "duplicate_command"  # two commands for one agent and action
    infeasible = "infeasible"  # a command beyond what its agent can apply (headroom) or with no finite power
    worsens = "worsens"  # the plan pushes a transformer further outside its limits
    short_of_optimal = "short_of_optimal"  # it leaves more outside the limits than the optimal plan


class StartedFrom(str, Enum):
    """Where a device agent's simulated time began when its process last started."""

    start = "start"  # a new run: --start (or its data's first row)
    saved_state = "saved_state"  # resumed at its committed step from its state file
    feeder = "feeder"  # nothing saved, the feeder already running: afresh at the feeder's next step


class CommandStatus(str, Enum):
    """How an agent answered a command."""

    applied = "applied"
    partial = "partial"
    rejected = "rejected"
    duplicate = "duplicate"


class SolarStatus(BaseModel):
    """Rooftop PV this step (kW, all >= 0)."""

    capacity_kwp: Number
    available_kw: Number
    output_kw: Number
    curtailed_kw: Number


class LoadStatus(BaseModel):
    """Household demand this step (kW, all >= 0)."""

    demand_kw: Number
    served_kw: Number
    shed_kw: Number
    flexible_kw: Number
    served_kvar: Number | None = Field(
        None, description="Reactive power of the served load (kvar, > 0 drawn), when the data gives one (a network's)"
    )


class BatteryStatus(BaseModel):
    """Battery this step: ``power_kw`` > 0 charges; ``soc_fraction`` at the end of the step.

    The last four fields came later: an agent that does not send them is read as described in
    ``agents.planners.snapshot`` (efficiencies assumed, start of step worked back from the end).
    """

    soc_fraction: Number
    power_kw: Number
    capacity_kwh: Number
    max_charge_kw: Number
    max_discharge_kw: Number
    soc_min_fraction: Number
    soc_max_fraction: Number
    soc_start_fraction: Number | None = Field(
        None, description="State of charge (0-1) when this step began, before any setpoint of this step acted"
    )
    charge_efficiency_fraction: Number | None = Field(
        None, description="Share (0-1] of the energy drawn while charging that is stored"
    )
    discharge_efficiency_fraction: Number | None = Field(
        None, description="Energy delivered per unit taken from the cells while discharging (0-1]"
    )
    local_setpoint_kw: Number | None = Field(
        None,
        description="kW (> 0 charges) the agent's own policy chose this step, within the physics' limits, "
        "before any command from the grid agent",
    )


class Flexibility(BaseModel):
    """The most each action could still apply this step (kW, >= 0)."""

    curtail_solar_kw: Number = 0.0
    shed_load_kw: Number = 0.0
    charge_battery_kw: Number = 0.0
    discharge_battery_kw: Number = 0.0

    def headroom_kw(self, action: CurtailAction) -> float:
        """The headroom of one action."""
        return getattr(self, f"{action.value}_kw")


class AgentStatus(BaseModel):
    """What a home or battery agent reports about itself."""

    agent_id: AgentId
    agent_type: AgentType
    transformer_id: str
    bus: BusIndex | None = Field(None, description="The network bus it is connected at (agents from a network)")
    step: Count = Field(ge=0, description="Steps simulated so far")
    timestamp: SimulatedTime | None = Field(description="Simulated time of the current step; null before the first")
    step_s: Number = Field(gt=0, description="Length of one step in seconds")
    net_power_kw: Number = Field(allow_inf_nan=False, description="> 0 imports from the grid, < 0 exports")
    solar: SolarStatus | None = None
    load: LoadStatus | None = None
    battery: BatteryStatus | None = None
    price_per_kwh: Number | None = None
    temp_air_c: Number | None = None
    flexibility: Flexibility = Field(default_factory=Flexibility)
    control: Literal["local", "grid"] = Field(
        "local", description="grid while a command holds this step, else local policy"
    )
    control_reason: str | None = Field(None, description="Why the agent last went back to its local policy")
    active_commands: list[ActiveCommand] = Field(default_factory=list)
    started_from: StartedFrom | None = Field(
        None,
        description="Where its simulated time began: start (a new run, at --start), saved_state (resumed at its "
        "committed step), feeder (no saved state: afresh at the running feeder's step); before its first step, "
        "start may still become feeder when the grid agent's answer brings the feeder's clock",
    )
    start_note: str | None = Field(None, description="The same in a sentence: which state file, which time")


class Health(BaseModel):
    """Liveness answer."""

    status: Literal["ok"] = "ok"
    agent_id: str
    agent_type: AgentType


class AgentInfo(BaseModel):
    """What an agent is, for ``GET /``."""

    agent_id: str
    agent_type: AgentType
    description: str
    endpoints: list[str]


#: The longest a command may hold (366 days): beyond a year of data it means nothing,
#: and far beyond it the clock overflows.
MAX_COMMAND_DURATION_S = 366 * 24 * 3600.0


class CurtailCommand(BaseModel):
    """A command from the grid agent: shift net power by ``power_kw`` through ``action``."""

    # "not both" in the schema too, so that a client generated from it never sends what the validator refuses
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["duration_s", "valid_until"],
                "properties": {"duration_s": {"type": "number"}, "valid_until": {"type": "string"}},
            }
        },
    )

    command_id: str = Field(min_length=1, max_length=128, description="Client-chosen id; a repeat is not re-applied")
    action: CurtailAction
    power_kw: StrictNonNegativeKw
    duration_s: Number | None = Field(
        None,
        gt=0,
        le=MAX_COMMAND_DURATION_S,
        allow_inf_nan=False,
        strict=True,
        description="How long it holds, in simulated seconds (at most 366 days); default: this step only",
    )
    valid_until: SimulatedTime | None = Field(
        None, description="Simulated time it ends (instead of duration_s); an expired command is rejected"
    )

    @model_validator(mode="after")
    def _one_end(self) -> CurtailCommand:
        if self.duration_s is not None and self.valid_until is not None:
            raise ValueError("give duration_s or valid_until, not both")
        return self


class ActiveCommand(BaseModel):
    """A command that holds beyond the step it arrived in; re-applied after the local policy each step."""

    command_id: str
    action: CurtailAction
    power_kw: Number
    valid_until: SimulatedTime


class CurtailResult(BaseModel):
    """An agent's answer to a command."""

    command_id: str
    action: CurtailAction
    status: CommandStatus
    requested_kw: float
    applied_kw: float
    reason: str | None = None
    agent_status: AgentStatus


class AgentReport(BaseModel):
    """Registration and heartbeat body: where the agent is and how it stands."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=512, pattern=r"^https?://", description="Base URL the grid agent calls")
    batch_url: str | None = Field(
        None,
        max_length=512,
        pattern=r"^https?://",
        description="Base URL of the process hosting the agent, if it serves /batch/simulate and /batch/curtail",
    )
    status: AgentStatus


class Registrations(BaseModel):
    """Many agents of one process registering, or heartbeating, at once."""

    model_config = ConfigDict(extra="forbid")

    reports: list[AgentReport] = Field(max_length=10_000)


class FeederClock(BaseModel):
    """The feeder's simulated time as the grid agent knows it, in its answers to registrations and heartbeats.

    As of the grid agent's cycle ``cycle`` of its run ``run_id`` (``X-Cycle-Id`` is ``run_id:cycle``), the feeder's
    agents stood at ``timestamp``; each later cycle steps them ``step_s`` on, so cycle ``cycle + k`` steps them to
    ``timestamp + k * step_s``. An agent with no saved state lines its data up with it before its first step.
    """

    run_id: str = Field(description="The grid agent's run, as in X-Cycle-Id")
    cycle: int = Field(ge=0, description="The grid agent's cycle as of which its agents stood at timestamp")
    timestamp: SimulatedTime = Field(description="Simulated time of the feeder's latest step")
    step_s: float = Field(gt=0, description="Length of one step in seconds")


class RegistrationsResult(BaseModel):
    """How many agents a batch registered, and the feeder's clock."""

    registered: int
    feeder_clock: FeederClock | None = Field(
        None, description="The feeder's simulated time; null until an agent has reported one (a new run)"
    )


#: ``X-Cycle-Id`` on /simulate and /batch/simulate: ``{the grid agent's run id}:{cycle}``. An agent steps at most once a
#: cycle: a call whose cycle it has already stepped for, or an earlier one of the same grid agent's run (a request
#: the grid agent gave up on, delivered late by TCP after a partition healed), answers its status unstepped.
CYCLE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}:[0-9]{1,18}$"


class BatchSimulate(BaseModel):
    """Step these hosted agents."""

    model_config = ConfigDict(extra="forbid")

    agent_ids: list[AgentId] = Field(max_length=10_000)


class BatchError(BaseModel):
    """One agent of a batch that could not be served."""

    agent_id: str
    command_id: str | None = None
    error: str


#: What a batch answer leaves out of each status: ``start_note`` says the same sentence every step (``GET
#: /agents/{agent_id}/status`` has it, and ``started_from`` says the gist); at 1,000 homes it was an eighth of
#: the answer.
BATCH_STATUS_EXCLUDE = {"start_note"}


class BatchSimulateResult(BaseModel):
    """The statuses of the agents stepped, and those that could not be."""

    statuses: list[AgentStatus]
    errors: list[BatchError]

    def to_json(self) -> bytes:
        """The answer as sent: each status without ``BATCH_STATUS_EXCLUDE``."""
        return self.model_dump_json(exclude={"statuses": {"__all__": BATCH_STATUS_EXCLUDE}}).encode()


class AddressedCommand(BaseModel):
    """A command for one hosted agent."""

    model_config = ConfigDict(extra="forbid")

    agent_id: AgentId
    command: CurtailCommand


class BatchCurtail(BaseModel):
    """Commands for hosted agents."""

    model_config = ConfigDict(extra="forbid")

    commands: list[AddressedCommand] = Field(max_length=10_000)


class BatchCurtailResult(BaseModel):
    """Each agent's answer, and the commands that could not be delivered."""

    results: list[CurtailResult]
    errors: list[BatchError]

    def to_json(self) -> bytes:
        """The answer as sent: each result's status without ``BATCH_STATUS_EXCLUDE``."""
        return self.model_dump_json(exclude={"results": {"__all__": {"agent_status": BATCH_STATUS_EXCLUDE}}}).encode()


class HostInfo(BaseModel):
    """What a process hosting many agents serves, for its ``GET /``."""

    host_id: str
    agent_type: AgentType
    agent_ids: list[str]
    endpoints: list[str]


class AgentRecord(BaseModel):
    """The grid agent's view of one registered agent."""

    agent_id: str
    agent_type: AgentType
    url: str
    batch_url: str | None = None
    transformer_id: str
    bus: int | None = Field(None, description="The network bus it is connected at, as it reports")
    healthy: bool
    last_seen: datetime
    last_status: AgentStatus | None = None


class RegistrationResult(AgentRecord):
    """The answer to one agent's registration or heartbeat: its record, and the feeder's clock."""

    feeder_clock: FeederClock | None = Field(
        None, description="The feeder's simulated time; null until an agent has reported one (a new run)"
    )


class TransformerReport(BaseModel):
    """One transformer in one coordination cycle."""

    transformer_id: str
    rating_kw: float
    reverse_limit_kw: float
    loading_before_kw: float
    loading_after_kw: float
    state_before: TransformerState
    state_after: TransformerState
    unfixed_kw: float = Field(description="How far the loading is still outside its limits after acting")
    agents_reporting: int = Field(0, description="Agents whose net power this loading sums")
    agents_unreachable: int = Field(
        0, description="Registered agents on this transformer that did not answer (not in the loading)"
    )
    loading_percent_before: float | None = Field(
        None, description="AC loading against the rated apparent power, by the power flow before planning (network)"
    )
    loading_percent_after: float | None = Field(None, description="AC loading from the power flow after acting")
    ac_power_kw_before: float | None = Field(
        None, description="Active power at its high-voltage side before planning (kW, > 0 towards the agents)"
    )
    ac_power_kw_after: float | None = Field(None, description="Active power at the high-voltage side after acting (kW)")


class ActionReport(BaseModel):
    """One command sent in a cycle and what came of it."""

    agent_id: str
    transformer_id: str
    action: CurtailAction
    requested_kw: float
    applied_kw: float
    status: CommandStatus | Literal["unreachable", "sent"] = Field(
        description="The agent's answer; `sent`: an OpenADR 3 event for a VEN, which it follows on its own"
    )
    reason: str | None = None


class CoordinationResult(BaseModel):
    """The record of one coordination cycle."""

    cycle: int
    timestamp: SimulatedTime | None
    step_s: float | None = Field(None, description="Length of the simulated step the agents took")
    planner: str
    fallback_reason: str | None = None
    fallback_kind: FallbackKind | None = Field(None, description="The kind of fallback_reason, from a fixed set")
    transformers: list[TransformerReport]
    actions: list[ActionReport]
    unreachable: list[str]
    agents_stepped: int
    duration_ms: float
    phase_ms: dict[str, float]
    network: NetworkCycle | None = Field(None, description="The AC power flows before planning and after acting")


class NetworkCycle(BaseModel):
    """One cycle's AC power flows: before planning and after acting. A figure is null when its power flow failed."""

    converged: bool = Field(description="Both power flows converged")
    error: str | None = Field(None, description="Why a power flow failed; then the transformer-only assessment stands")
    vm_min_pu_before: float | None = None
    vm_max_pu_before: float | None = None
    vm_min_pu_after: float | None = None
    vm_max_pu_after: float | None = None
    line_loading_max_percent_before: float | None = None
    line_loading_max_percent_after: float | None = None
    buses_outside_before: int | None = Field(None, description="Buses with a voltage outside their limits")
    buses_outside_after: int | None = None
    lines_outside_before: int | None = Field(None, description="Lines loaded above 100 %")
    lines_outside_after: int | None = None
    transformer_loading_max_percent_before: float | None = Field(
        None, description="The highest AC loading of a transformer against its rated apparent power"
    )
    transformer_loading_max_percent_after: float | None = None
    transformers_outside_before: int | None = Field(None, description="Transformers loaded above 100 %")
    transformers_outside_after: int | None = None
    most_loaded_line_before: int | None = Field(None, description="The network's index of the most loaded line")
    most_loaded_line_after: int | None = None
    most_loaded_transformer_before: str | None = Field(None, description="The transformer_id of the most loaded one")
    most_loaded_transformer_after: str | None = None
    agents_placed: int = Field(0, description="Agents whose net power entered the power flow at their bus")
    agents_unplaced: list[str] = Field(default_factory=list, description="Agents with no bus or one the network lacks")
    powerflow_ms: float = Field(0.0, description="Time spent in both power flows")
    constraint_rows: int = Field(0, description="Near-limit buses, lines and transformers the planner constrained")
    replanned: bool = Field(False, description="The AC check after acting found a limit broken and planned again")
    replans: int = Field(0, description="Cycles so far that planned a second time (at most once a cycle)")
    sensitivity_refreshes: int = Field(0, description="Times so far the sensitivities were taken afresh")


class NetworkBus(BaseModel):
    """One bus as of the last power flow; powers in the load convention of net_power_kw (> 0 drawn)."""

    bus: int = Field(description="The network's own bus index")
    name: str | None
    vn_kv: float
    vm_pu: float | None = Field(description="Null when it is not energised or the power flow failed")
    min_vm_pu: float
    max_vm_pu: float
    p_kw: float = Field(description="Sum of the net power of the agents at this bus")
    q_kvar: float = Field(description="Their reactive power: load at its power factor, PV by --pv-reactive")


class NetworkLine(BaseModel):
    """One line as of the last power flow."""

    line: int
    from_bus: int
    to_bus: int
    loading_percent: float | None


class NetworkTransformer(BaseModel):
    """One transformer as of the last power flow."""

    transformer: int
    name: str | None
    transformer_id: str = Field(description="The id agents on its low-voltage side report as their transformer_id")
    loading_percent: float | None
    p_kw: float | None = Field(description="Active power at its high-voltage side (kW, > 0 flowing to its LV side)")


class NetworkState(BaseModel):
    """The network as of the last power flow after acting (``GET /network``)."""

    network: str = Field(description="The SimBench code or file the grid agent loaded")
    cycle: int = Field(description="The cycle of that power flow; 0 = the unloaded network at start-up")
    timestamp: SimulatedTime | None
    converged: bool
    buses: list[NetworkBus]
    lines: list[NetworkLine]
    transformers: list[NetworkTransformer]


#: Most cycles one ``POST /coordinate/batch`` runs: it holds the feeder for the whole request, so
#: longer runs go through ``POST /runs``, which answers at once and can be stopped.
BATCH_CYCLES_MAX = 100
#: Most cycles of one run (28 years of 15-minute steps): a sanity bound, not a resource one.
RUN_CYCLES_MAX = 1_000_000


class CoordinateBatch(BaseModel):
    """Run this many cycles back to back."""

    model_config = ConfigDict(extra="forbid")

    cycles: Count = Field(ge=1, le=BATCH_CYCLES_MAX, description=f"At most {BATCH_CYCLES_MAX}; longer runs: POST /runs")


class CoordinationBatch(BaseModel):
    """The records of cycles run back to back."""

    results: list[CoordinationResult]


class RunStatus(str, Enum):
    """Where a run stands: ``stopped`` by DELETE /runs/{run_id}; ``failed`` by an error or a grid agent that stopped."""

    running = "running"
    done = "done"
    stopped = "stopped"
    failed = "failed"


class RunStart(BaseModel):
    """Start a run of this many coordination cycles, back to back, as a job of the grid agent."""

    model_config = ConfigDict(extra="forbid")

    cycles: Count = Field(ge=1, le=RUN_CYCLES_MAX)


class RunInfo(BaseModel):
    """A run of coordination cycles: how far it got and how it ended. Times are wall clock, UTC."""

    run_id: str
    status: RunStatus
    cycles: int = Field(description="Cycles asked for")
    cycles_done: int = Field(description="Cycles finished so far")
    started_at: datetime
    finished_at: datetime | None = None
    first_cycle: int | None = Field(None, description="The grid agent's number of the run's first cycle")
    last_cycle: int | None = Field(None, description="The grid agent's number of the run's latest cycle")
    last_timestamp: SimulatedTime | None = Field(None, description="Simulated time of the run's latest cycle")
    stop_requested: bool = Field(False, description="DELETE asked it to stop after the cycle in flight")
    error: str | None = Field(None, description="Why it failed")


class RunResults(BaseModel):
    """A run's cycle results after ``since``, oldest first, with where the run stands."""

    run_id: str
    status: RunStatus
    cycles: int
    cycles_done: int
    first_kept_cycle: int | None = Field(
        None, description="Oldest cycle still kept in memory (none: none kept, e.g. after a restart)"
    )
    results: list[CoordinationResult]


class GridStatus(BaseModel):
    """The grid agent's view of the feeder."""

    agent_id: str
    agent_type: AgentType = AgentType.grid
    planner: str
    cycles: int
    agents_registered: int
    agents_healthy: int
    transformers: list[TransformerReport]
    last_cycle: CoordinationResult | None
    median_cycle_ms: float | None = Field(None, description="Median duration of the last 1,000 cycles")
    ai: dict | None = Field(None, description="The ai planner's model calls, tokens, latency and fallbacks")
    network_replans: int | None = Field(None, description="With --network: cycles that planned a second time")
    sensitivity_refreshes: int | None = Field(None, description="With --network: times the sensitivities were taken")


class ErrorBody(BaseModel):
    """The one shape of every error answer."""

    error: str
    message: str
    agent_id: str
    detail: list[dict] | None = None
