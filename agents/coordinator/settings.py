"""The coordinator's flags (run_distributed_simulation.py --help lists them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from agents.common.settings import ServerSettings

#: The project's folder: the agents' scripts live there.
ROOT = Path(__file__).resolve().parents[2]


class CoordinatorSettings(ServerSettings):
    """Flags of run_distributed_simulation.py."""

    cycles: int = Field(3, ge=0, description="Coordination cycles to run")
    interval: float = Field(5.0, ge=0, description="Seconds between cycles (0 = as fast as possible)")
    exit: bool = Field(False, description="Stop the agents and exit after the last cycle instead of waiting for Ctrl+C")
    base_port: int = Field(8000, ge=1, le=65533, description="Grid agent's port; home and battery take the next two")
    planner: str = Field(
        "auto",
        pattern=r"^(auto|optimal|rule|ai|mpc)$",
        description="auto (ai with an OpenAI key, else optimal), optimal, rule, ai or mpc",
    )
    homes: int = Field(
        1,
        ge=1,
        le=100_000,
        description="Homes on a generated feeder (1 = the seed's feeder of one home and one battery)",
    )
    homes_per_process: int = Field(250, ge=1, le=1000, description="Homes hosted by each home agent process")
    transformer_rating_kw: float | None = Field(
        None, gt=0, description="Rating of every transformer (grid agent's default if unset)"
    )
    scenario: Path | None = Field(None, description="Scenario file handed to the grid agent")
    start: str | None = Field(None, description="Simulated start time, ISO 8601 (default: the first row of the data)")
    resume: bool = Field(False, description="Continue from the agents' saved state instead of starting afresh")
    startup_timeout_s: float = Field(30.0, gt=0, description="How long to wait for each agent to come up")
    report: Path | None = Field(
        None, description="Write summary.json, cycles.jsonl and PNG plots of the run into this folder"
    )
    network: str | None = Field(
        None, description="A SimBench code or pandapower JSON file: its loads, PV and storage become the agents"
    )
    slack_vm_pu: float | None = Field(None, gt=0.5, lt=1.5, description="External grid voltage setpoint (p.u.)")
    vm_min_pu: float | None = Field(None, gt=0.5, lt=1.5, description="Lowest voltage at buses below 1 kV (p.u.)")
    vm_max_pu: float | None = Field(None, gt=0.5, lt=1.5, description="Highest voltage at buses below 1 kV (p.u.)")
    pv_reactive: str = Field("unity", pattern=r"^(unity|cosphi_p)$", description="PV reactive power: unity or cosphi_p")
    openadr3: bool = Field(False, description="Start the grid agent with its OpenADR 3 VTN on (--openadr3)")
    openadr3_clients: Path | None = Field(
        None,
        description="With --openadr3: the VTN's clients file, handed to the grid agent (default: OPENADR3_CLIENTS)",
    )
    max_restarts: int = Field(
        5, ge=0, le=100, description="Restarts of each agent process that dies before the coordinator gives up on it"
    )
    heartbeat_s: float = Field(5.0, gt=0, description="Seconds between the devices' heartbeats to the grid agent")
    ray: str | None = Field(
        None,
        pattern=r"^(auto|local|(ray://)?[A-Za-z0-9.\-]+:\d{1,5})$",
        description="Place the agents as actors on the Ray cluster at this address: HOST:PORT, auto (the cluster"
        " this machine belongs to) or local (a new one-machine cluster); needs requirements-ray.txt",
    )

    @model_validator(mode="after")
    def _own_client_certificate(self) -> CoordinatorSettings:
        if self.tls_require_client_cert and self.tls_client_certfile is None:
            raise ValueError(
                "--tls-require-client-cert needs --tls-client-certfile and --tls-client-keyfile: the coordinator "
                "calls its agents too"
            )
        return self

    def tls_flags(self) -> list[str]:
        """The TLS flags handed to every child, with absolute paths."""
        files = {
            "--tls-certfile": self.tls_certfile,
            "--tls-keyfile": self.tls_keyfile,
            "--tls-ca-file": self.tls_ca_file,
            "--tls-client-certfile": self.tls_client_certfile,
            "--tls-client-keyfile": self.tls_client_keyfile,
        }
        flags = [part for flag, path in files.items() if path is not None for part in (flag, str(path.resolve()))]
        return flags + (["--tls-require-client-cert"] if self.tls_require_client_cert else [])
