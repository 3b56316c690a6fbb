"""Settings of every agent: flags, then ``EMS_*`` environment variables, then defaults."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, FilePath, ValidationError, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from models.schemas import AgentId

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

S = TypeVar("S", bound="ServerSettings")

logger = logging.getLogger(__name__)


class ServerSettings(BaseSettings):
    """What every agent server takes."""

    model_config = SettingsConfigDict(env_prefix="EMS_", cli_kebab_case=True, cli_implicit_flags=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    log_dir: Path = Field(Path("logs"), description="Folder for the CSV logs")
    state_dir: Path = Field(Path("state"), description="Folder for durable agent state")
    log_level: str = Field("info", description="Server log level (debug, info, warning, error)")
    tls_certfile: FilePath | None = Field(
        None, description="Serve HTTPS with this certificate (PEM; with --tls-keyfile)"
    )
    tls_keyfile: FilePath | None = Field(None, description="Private key of --tls-certfile (PEM)")
    tls_ca_file: FilePath | None = Field(
        None, description="CA (PEM) that clients verify servers with, and servers verify client certificates with"
    )
    tls_client_certfile: FilePath | None = Field(
        None, description="Certificate (PEM) this process presents when it calls other agents (mutual TLS)"
    )
    tls_client_keyfile: FilePath | None = Field(None, description="Private key of --tls-client-certfile (PEM)")
    tls_require_client_cert: bool = Field(
        False, description="Refuse every client without a certificate signed by --tls-ca-file (mutual TLS)"
    )

    @model_validator(mode="after")
    def _tls_files_in_pairs(self) -> ServerSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("--tls-certfile and --tls-keyfile go together")
        if (self.tls_client_certfile is None) != (self.tls_client_keyfile is None):
            raise ValueError("--tls-client-certfile and --tls-client-keyfile go together")
        if self.tls_require_client_cert and (self.tls_certfile is None or self.tls_ca_file is None):
            raise ValueError("--tls-require-client-cert needs --tls-certfile, --tls-keyfile and --tls-ca-file")
        return self

    @property
    def tls_on(self) -> bool:
        """Whether any TLS file is given: then nothing goes over plain HTTP beyond loopback (see agents.common.tls)."""
        return any(f is not None for f in (self.tls_certfile, self.tls_ca_file, self.tls_client_certfile))

    @property
    def scheme(self) -> str:
        """``https`` when this process serves TLS, else ``http``."""
        return "https" if self.tls_certfile is not None else "http"

    @classmethod
    def from_cli(cls: type[S], args: list[str] | None = None, prog: str | None = None) -> S:
        """Parse flags and environment; on bad values print one line per field and exit 2."""
        try:
            return CliApp.run(cls, cli_args=args if args is not None else sys.argv[1:])
        except ValidationError as exc:
            for error in exc.errors():
                if not error["loc"]:  # a rule across flags: its message names them
                    print(f"error: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
                    continue
                field = "--" + "-".join(str(part) for part in error["loc"]).replace("_", "-")
                print(f"error: {field}: {error['msg']} (got {error.get('input')!r})", file=sys.stderr)
            raise SystemExit(2) from None


class DeviceSettings(ServerSettings):
    """What home and battery agents take."""

    agent_id: AgentId = Field("home_1")
    grid_url: str = Field("http://127.0.0.1:8000", description="Base URL of the grid agent")
    public_url: str | None = Field(
        None, description="URL the grid agent should call (default http://HOST:PORT, https with --tls-certfile)"
    )
    transformer_id: str = Field("T1", min_length=1, max_length=64)
    data_file: Path = Field(DATA_DIR / "historical_data.csv", description="Historical data CSV")
    start: str | None = Field(None, description="Simulated start time (ISO 8601); default the first row")
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between heartbeats to the grid agent")
    request_timeout_s: float = Field(2.0, gt=0, description="Timeout of calls to the grid agent")
    fresh: bool = Field(False, description="Discard the saved state and start again from the first step")
    fail_safe_after_s: float = Field(
        30.0, gt=0, description="With no word from the grid agent this long, drop its commands and run on local policy"
    )
    scenario: Path | None = Field(None, description="Host this process's share of the scenario's agents instead of one")
    shard: str = Field(
        "0/1", pattern=r"^\d+/[1-9]\d*$", description="With --scenario: host agents i, i+n, i+2n... written i/n"
    )
    max_agents_per_process: int = Field(1000, ge=1, description="Refuse to host more agents than this in one process")
    bus: int | None = Field(None, ge=0, description="The network bus the agent is connected at (homes from a network)")
    data_row: int | None = Field(
        None, ge=0, description="With a profile array (.npy) as --data-file: this agent's row; the values are its own"
    )
    protocol: str = Field(
        "rest",
        pattern=r"^(rest|openadr3)$",
        description="rest (the grid agent calls /simulate and /curtail), or openadr3: a VEN of the VTN at --vtn-url",
    )
    vtn_url: str | None = Field(
        None, description="With --protocol openadr3: the VTN's base URL (http://GRID/openadr3/3.0.1)"
    )
    openadr3_client_id: str | None = Field(
        None,
        min_length=1,
        description="With --protocol openadr3: this VEN's client id (secret: OPENADR3_CLIENT_SECRET)",
    )

    @model_validator(mode="after")
    def _openadr3_needs_a_vtn(self) -> DeviceSettings:
        if self.protocol == "openadr3":
            missing = [
                flag
                for flag, value in (("--vtn-url", self.vtn_url), ("--openadr3-client-id", self.openadr3_client_id))
                if not value
            ]
            if missing:
                raise ValueError(f"--protocol openadr3 needs {' and '.join(missing)}")
            if self.scenario is not None:
                raise ValueError("--protocol openadr3 runs one agent as one VEN: leave out --scenario")
        return self

    @property
    def shard_index(self) -> tuple[int, int]:
        """(i, n) of --shard."""
        i, n = (int(part) for part in self.shard.split("/"))
        return i, n

    @property
    def own_url(self) -> str:
        """The base URL at which the grid agent reaches this agent."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        return f"{self.scheme}://{host}:{self.port}"


class HomeSettings(DeviceSettings):
    """A home: rooftop PV, household load with a flexible share, a home battery."""

    port: int = Field(8001, ge=0, le=65535)
    pv_kwp: float = Field(6.0, gt=0, description="PV size; the data file's solar_kw is for 6 kWp")
    annual_load_kwh: float = Field(4500.0, gt=0, description="Annual consumption; the data file's is 4,500 kWh")
    flexible_fraction: float = Field(0.3, ge=0, le=1, description="Share of demand that may be shed")
    battery_kwh: float = Field(13.5, ge=0, description="Home battery capacity; 0 for none")
    battery_kw: float = Field(5.0, ge=0, description="Home battery power limit (charge and discharge)")
    initial_soc_fraction: float = Field(0.5, ge=0, le=1)
    solar_shift_steps: int = Field(0, ge=-8, le=8, description="Shift of the PV profile in data steps (orientation)")
    load_shift_steps: int = Field(0, ge=-8, le=8, description="Shift of the load profile in data steps (habits)")


class BatterySettings(DeviceSettings):
    """A storage system driven by price and temperature."""

    agent_id: AgentId = Field("battery_agent_1")
    port: int = Field(8002, ge=0, le=65535)
    data_file: Path = Field(DATA_DIR / "battery_historical_data.csv", description="Historical data CSV")
    capacity_kwh: float = Field(50.0, gt=0)
    power_kw: float = Field(25.0, gt=0, description="Power limit (charge and discharge)")
    initial_soc_fraction: float = Field(0.5, ge=0, le=1)
    charge_below_price_per_kwh: float = Field(0.12, description="Charge at full power at or below this price")
    discharge_above_price_per_kwh: float = Field(0.30, description="Discharge at full power at or above this price")


class GridSettings(ServerSettings):
    """The grid agent: transformers, planner, fan-out."""

    port: int = Field(8000, ge=0, le=65535)
    agent_id: str = Field("grid_agent", min_length=1, max_length=64)
    transformer_rating_kw: float = Field(
        15.0, gt=0, description="Rating of every transformer the scenario does not rate"
    )
    reverse_limit_kw: float | None = Field(None, gt=0, description="Reverse-flow limit (default: the rating)")
    scenario: Path | None = Field(None, description="Scenario file (transformers and their limits)")
    planner: str = Field(
        "auto",
        pattern=r"^(auto|optimal|rule|ai|mpc)$",
        description="auto (ai with an OpenAI key, else optimal), optimal, rule, ai or mpc",
    )
    ai_timeout_s: float = Field(5.0, gt=0, description="Deadline of one model call; past it the optimal plan is used")
    step_timeout_s: float = Field(2.0, gt=0, description="Timeout of each /simulate and /curtail call")
    max_concurrency: int = Field(64, ge=1, description="Calls to agents in flight at once")
    curtail_retries: int = Field(
        2, ge=0, le=5, description="Retries of a /curtail that could not connect (same command_id)"
    )
    stale_after_s: float = Field(15.0, gt=0, description="An agent unheard of this long is unhealthy")
    coordinate_wait_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long POST /coordinate, /coordinate/batch and /runs wait for the feeder, then 409",
    )
    forget_after_s: float = Field(
        300.0, gt=0, description="An agent unheard of this long is forgotten, its metrics too (it registers again)"
    )
    probe_timeout_s: float = Field(
        2.0, gt=0, le=30, description="Timeout of the GET {url}/health that checks a new or changed callback URL"
    )
    resume_cycles: bool = Field(
        False, description="Count cycles on from the last one this agent's state folder recorded (after a restart)"
    )
    network: str | None = Field(
        None, description="A SimBench code (1-LV-rural1--2-sw) or a pandapower JSON file: an AC power flow every cycle"
    )
    slack_vm_pu: float | None = Field(
        None, gt=0.5, lt=1.5, description="External grid voltage setpoint (p.u.) instead of the network's own"
    )
    vm_min_pu: float | None = Field(None, gt=0.5, lt=1.5, description="Lowest voltage at buses below 1 kV (p.u.)")
    vm_max_pu: float | None = Field(None, gt=0.5, lt=1.5, description="Highest voltage at buses below 1 kV (p.u.)")
    pv_reactive: str = Field(
        "unity", pattern=r"^(unity|cosphi_p)$", description="PV reactive power: unity, or cosphi_p (VDE-AR-N 4105)"
    )
    openadr3: bool = Field(False, description="Serve the OpenADR 3.0.1 VTN API under /openadr3/3.0.1")
    ven_report_timeout_s: float | None = Field(
        None,
        gt=0,
        le=300,
        description="How long a cycle waits for each VEN's report of its interval (default: --step-timeout-s)",
    )
    openadr3_clients: FilePath | None = Field(
        None,
        description="JSON list of OpenADR 3 clients {client_id, client_secret, role} (default: OPENADR3_CLIENTS)",
    )


def agent_token_from_env() -> str | None:
    """The shared bearer token, from ``AGENT_TOKEN`` only (never a flag, never logged)."""
    return os.environ.get("AGENT_TOKEN") or None


def openai_settings_from_env() -> tuple[str | None, str, str | None]:
    """(OPENAI_API_KEY, OPENAI_MODEL or gpt-3.5-turbo, OPENAI_BASE_URL): environment only, never flags."""
    return (
        os.environ.get("OPENAI_API_KEY") or None,
        os.environ.get("OPENAI_MODEL") or "gpt-3.5-turbo",
        os.environ.get("OPENAI_BASE_URL") or None,
    )


def configure_logging(level: str) -> None:
    """Configure the root logger once, for an entry point."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the agents' own


class StartupError(Exception):
    """An agent cannot start: bad data file, bad scenario. The message says what and where."""
