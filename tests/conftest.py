"""Shared test factories: agent settings under tmp_path, small data CSVs, the kinds of device agent, a feeder."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from agents import battery, grid, home
from agents.common.settings import BatterySettings, GridSettings, HomeSettings
from agents.device.agent import DeviceAgent
from agents.device.battery import BatteryAgent
from agents.device.home import HomeAgent
from models.schemas import AgentReport

HOME_ID = "home_1"
BATTERY_ID = "battery_agent_1"

#: A small home data file (15-minute rows): two night rows, then sunny rows.
#: Night: solar 0, load 1 kW. Day: solar 4 kW, load 1 kW, so the home battery charges 3 kW.
HOME_CSV = """timestamp,solar_kw,load_kw,temp_air_c
2025-06-01T00:00:00,0.0,1.0,15.0
2025-06-01T00:15:00,0.0,1.0,15.0
2025-06-01T00:30:00,4.0,1.0,20.0
2025-06-01T00:45:00,4.0,1.0,20.0
2025-06-01T01:00:00,4.0,1.0,20.0
2025-06-01T01:15:00,4.0,1.0,20.0
2025-06-01T01:30:00,4.0,1.0,20.0
2025-06-01T01:45:00,4.0,1.0,20.0
"""
HOME_NIGHT_START = "2025-06-01T00:00"
HOME_DAY_START = "2025-06-01T00:30"

#: A small battery data file: cheap (charge at full power), middling (idle), dear (discharge), cold.
BATTERY_CSV = """timestamp,price_per_kwh,temp_air_c
2025-06-01T00:00:00,0.10,20.0
2025-06-01T00:15:00,0.20,20.0
2025-06-01T00:30:00,0.40,20.0
2025-06-01T00:45:00,0.20,-10.0
2025-06-01T01:00:00,0.10,20.0
2025-06-01T01:15:00,0.10,20.0
"""
BATTERY_CHEAP_START = "2025-06-01T00:00"
BATTERY_IDLE_START = "2025-06-01T00:15"
BATTERY_DEAR_START = "2025-06-01T00:30"
BATTERY_COLD_START = "2025-06-01T00:45"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token, no OpenAI or OpenWeatherMap key (so no network), no EMS_* settings or OpenADR 3 clients leak in."""
    monkeypatch.delenv("AGENT_TOKEN", raising=False)
    monkeypatch.delenv("OPENWEATHERMAP_API_KEY", raising=False)
    for name in list(os.environ):
        if name.startswith(("EMS_", "OPENAI_", "OPENADR3_")):
            monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files made by trustme: a CA, a server certificate for 127.0.0.1 and localhost (good for client
    authentication too), a client-only certificate, and a certificate from another CA."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """One trustme CA and its certificates on disk for the whole session."""
    folder = tmp_path_factory.mktemp("tls")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(folder / "ca.pem")
    for name, cert in (
        ("server", ca.issue_cert("127.0.0.1", "localhost")),
        ("client", ca.issue_cert("client.lab")),
        ("stranger", stranger_ca.issue_cert("127.0.0.1", "localhost")),
    ):
        cert.cert_chain_pems[0].write_to_path(folder / f"{name}.pem")
        cert.private_key_pem.write_to_path(folder / f"{name}-key.pem")
    return TlsFiles(
        ca=folder / "ca.pem",
        cert=folder / "server.pem",
        key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
        stranger_cert=folder / "stranger.pem",
        stranger_key=folder / "stranger-key.pem",
    )


def _dirs(tmp_path: Path) -> dict[str, Path]:
    return {"log_dir": tmp_path / "logs", "state_dir": tmp_path / "state"}


def make_home_settings(tmp_path: Path, **overrides: Any) -> HomeSettings:
    """Home settings with logs and state under tmp_path and a fresh start; overrides win."""
    return HomeSettings(**{**_dirs(tmp_path), "fresh": True, **overrides})


def make_battery_settings(tmp_path: Path, **overrides: Any) -> BatterySettings:
    """Battery settings with logs and state under tmp_path and a fresh start; overrides win."""
    return BatterySettings(**{**_dirs(tmp_path), "fresh": True, **overrides})


def make_grid_settings(tmp_path: Path, **overrides: Any) -> GridSettings:
    """Grid settings with logs and state under tmp_path; overrides win. In process, a registration's probe
    answers within microseconds; its timeout is generous so that a machine loaded by other runs cannot fail it."""
    return GridSettings(**{**_dirs(tmp_path), "probe_timeout_s": 10.0, **overrides})


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device agent: how to build it, and the facts about it that tests of every kind use."""

    name: str  # also its agent_type
    agent_id: str
    agent_class: type[DeviceAgent]
    create_app: Callable[..., FastAPI]
    make_settings: Callable[..., Any]
    csv: str  # its small data file
    first_start: str  # the data's first row, where it starts by default
    active_start: str  # a row where its local policy charges the battery (home: sunny, 3 kW; battery: cheap, 25 kW)
    command: tuple[str, float]  # a command it applies in full at active_start
    actions: tuple[str, ...]  # the actions it can take
    modules: tuple[str, ...]  # the modules it reports; the others are null


HOME_KIND = DeviceKind(
    name="home",
    agent_id=HOME_ID,
    agent_class=HomeAgent,
    create_app=home.create_app,
    make_settings=make_home_settings,
    csv=HOME_CSV,
    first_start=HOME_NIGHT_START,
    active_start=HOME_DAY_START,
    command=("shed_load", 0.1),
    actions=("charge_battery", "curtail_solar", "discharge_battery", "shed_load"),
    modules=("solar", "load", "battery"),
)
BATTERY_KIND = DeviceKind(
    name="battery",
    agent_id=BATTERY_ID,
    agent_class=BatteryAgent,
    create_app=battery.create_app,
    make_settings=make_battery_settings,
    csv=BATTERY_CSV,
    first_start=BATTERY_CHEAP_START,
    active_start=BATTERY_CHEAP_START,
    command=("discharge_battery", 1.0),
    actions=("charge_battery", "discharge_battery"),
    modules=("battery",),
)
DEVICE_KINDS = (HOME_KIND, BATTERY_KIND)


@pytest.fixture
def home_csv(tmp_path: Path) -> Path:
    """The small home data file on disk."""
    path = tmp_path / "home_data.csv"
    path.write_text(HOME_CSV, encoding="utf-8")
    return path


@pytest.fixture
def battery_csv(tmp_path: Path) -> Path:
    """The small battery data file on disk."""
    path = tmp_path / "battery_data.csv"
    path.write_text(BATTERY_CSV, encoding="utf-8")
    return path


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header for a token, or none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (start-up, then shutdown on exit) and give a client to it."""
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[FastAPI], Awaitable[httpx.AsyncClient]]]:
    """Start apps with their lifespans for one test; each is shut down at teardown."""
    async with AsyncExitStack() as stack:

        async def start(app: FastAPI) -> httpx.AsyncClient:
            return await stack.enter_async_context(running(app))

        yield start


class HostRouter(httpx.AsyncBaseTransport):
    """Route each request to the in-process app named by its host; a host taken down raises ConnectError."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = dict(routes)
        self.down: dict[str, set[str] | None] = {}  # host -> paths that fail (None: every path)
        self.calls: list[tuple[str, str]] = []

    def take_down(self, host: str, paths: Iterable[str] | None = None) -> None:
        self.down[host] = set(paths) if paths is not None else None

    def bring_up(self, host: str) -> None:
        self.down.pop(host, None)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        self.calls.append((host, path))
        failing = host in self.down and (self.down[host] is None or path in self.down[host])
        if failing or host not in self.routes:
            raise httpx.ConnectError(f"cannot reach {host}", request=request)
        return await self.routes[host].handle_async_request(request)


@dataclass
class Feeder:
    """A grid agent, a home agent and a battery agent in one process, wired through a HostRouter."""

    grid_app: FastAPI
    home_app: FastAPI
    battery_app: FastAPI
    client: httpx.AsyncClient  # to the grid agent
    devices: dict[str, httpx.AsyncClient]  # agent id -> client to that device agent
    router: HostRouter
    log_dir: Path
    headers: dict[str, str] = field(default_factory=dict)

    async def register(self, agent_id: str, url: str | None = None) -> httpx.Response:
        """POST the device's current status to the grid agent, as its heartbeat does."""
        status = (await self.devices[agent_id].get("/status")).json()
        report = AgentReport.model_validate({"url": url or f"http://{agent_id}", "status": status})
        return await self.client.post(
            f"/agents/{agent_id}/status", json=report.model_dump(mode="json"), headers=self.headers
        )

    async def coordinate(self) -> dict[str, Any]:
        """Run one cycle and return its result, which must be 200."""
        response = await self.client.post("/coordinate", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def device_status(self, agent_id: str) -> dict[str, Any]:
        return (await self.devices[agent_id].get("/status")).json()

    async def agents(self) -> dict[str, dict[str, Any]]:
        return {a["agent_id"]: a for a in (await self.client.get("/agents")).json()}


@pytest.fixture
async def make_feeder(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Feeder]]]:
    """Build an in-process feeder on the shipped data; lifespans run and end at teardown.

    ``start`` goes to both device agents; ``home``, ``battery`` and ``grid`` are settings
    overrides; ``register`` POSTs both registrations before returning.
    """
    async with AsyncExitStack() as stack:

        async def build(
            *,
            start: str | None = None,
            home: dict[str, Any] | None = None,
            battery: dict[str, Any] | None = None,
            grid: dict[str, Any] | None = None,
            register: bool = True,
        ) -> Feeder:
            starts = {"start": start} if start else {}
            home_app = _home_app(make_home_settings(tmp_path, **starts, **(home or {})))
            battery_app = _battery_app(make_battery_settings(tmp_path, **starts, **(battery or {})))
            router = HostRouter(
                {HOME_ID: httpx.ASGITransport(app=home_app), BATTERY_ID: httpx.ASGITransport(app=battery_app)}
            )
            grid_settings = make_grid_settings(tmp_path, **(grid or {}))
            grid_app = _grid_app(grid_settings, router)
            for app in (home_app, battery_app, grid_app):
                await stack.enter_async_context(LifespanManager(app))
            devices = {
                agent_id: await stack.enter_async_context(
                    httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{agent_id}")
                )
                for agent_id, app in ((HOME_ID, home_app), (BATTERY_ID, battery_app))
            }
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=grid_app), base_url="http://grid")
            )
            feeder = Feeder(
                grid_app,
                home_app,
                battery_app,
                client,
                devices,
                router,
                grid_settings.log_dir,
                bearer(os.environ.get("AGENT_TOKEN")),
            )
            if register:
                for agent_id in (HOME_ID, BATTERY_ID):
                    response = await feeder.register(agent_id)
                    assert response.status_code == 200, response.text
            return feeder

        yield build


def _home_app(settings: HomeSettings) -> FastAPI:
    return home.create_app(settings, register=False)


def _battery_app(settings: BatterySettings) -> FastAPI:
    return battery.create_app(settings, register=False)


def _grid_app(settings: GridSettings, transport: httpx.AsyncBaseTransport) -> FastAPI:
    return grid.create_app(settings, transport=transport)


@pytest.fixture
async def feeder(make_feeder: Callable[..., Awaitable[Feeder]]) -> Feeder:
    """The default feeder: shipped data from its first row, optimal planner, both devices registered."""
    return await make_feeder()
