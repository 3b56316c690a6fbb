"""The grid agent's live dashboard: an HTML page, plotly.js served offline, and the JSON feed the page polls.

``GET /dashboard`` is a static page that references nothing outside this server (users run it on
closed lab networks); it loads ``/dashboard/plotly.min.js`` (the bundle shipped inside the plotly
Python package, read once and kept in memory) and polls ``GET /dashboard/data?since=N``, which
answers the grid agent's state as ``/status`` does plus the history of cycles after ``N`` kept in
a bounded in-memory ``CycleHistory``.

With ``--network`` the feed carries ``network``: every bus's voltage and every line's and transformer's loading
as of the last power flow after acting (arrays aligned with the topology), and the feeder paths to the buses of
highest and lowest voltage. The topology itself (bus names, positions, limits, which buses each line and
transformer joins) never changes, so it is sent only with a whole history (``since=0`` or another run).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from agents.common.errors import AgentError, error_responses
from agents.cycle.history import CycleHistory
from models.schemas import AgentRecord, GridStatus, NetworkState

if TYPE_CHECKING:  # pandapower, which the layout needs, loads only with --network
    from agents.network.layout import Layout


class NetworkSource(Protocol):
    """What the dashboard reads of the grid agent's network: the last power flow and where to draw each bus."""

    @property
    def layout(self) -> Layout: ...

    def state(self) -> NetworkState: ...


class DashboardSource(Protocol):
    """What the dashboard reads of a grid agent: its status, its agents, its run, its history and its network."""

    run_id: str
    history: CycleHistory
    network: NetworkSource | None

    def status(self) -> GridStatus: ...

    def agents(self) -> list[AgentRecord]: ...


PAGE_FILE = Path(__file__).with_name("dashboard.html")
#: The page may load and fetch only from this server; nothing from any other host.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'self'"
)


class PlotlyMissingError(AgentError):
    """The plotly package (which ships plotly.js) is not installed on the grid agent's host."""

    status_code = 503
    code = "plotly_missing"


def dashboard_data(agent: DashboardSource, since: int = 0, run: str | None = None) -> dict[str, Any]:
    """What the page shows: the grid agent's /status, every agent's last report, and the history after ``since``."""
    status = agent.status().model_dump(mode="json")
    last = status["last_cycle"]
    if run != agent.run_id or last is None or since > last["cycle"]:
        since = 0  # another grid agent (or a restarted one) answers: send everything it has
    agents = []
    for record in sorted(agent.agents(), key=lambda r: (r.transformer_id, r.agent_id)):
        s = record.last_status
        agents.append(
            {
                "agent_id": record.agent_id,
                "agent_type": record.agent_type.value,
                "transformer_id": record.transformer_id,
                "url": record.url,
                "healthy": record.healthy,
                "last_seen": record.last_seen.isoformat(),
                "step": s.step if s else None,
                "net_power_kw": s.net_power_kw if s else None,
                "soc_fraction": s.battery.soc_fraction if s and s.battery else None,
                "battery_power_kw": s.battery.power_kw if s and s.battery else None,
            }
        )
    history = agent.history.since(since)
    data = {
        **status,
        "run_id": agent.run_id,
        "cycle": last["cycle"] if last else 0,
        "agents": agents,
        "history": history,
        "history_limit": agent.history.limit,
        "soc_agents": list(agent.history.soc_agents),
        "network": None,
    }
    if agent.network is not None and (since == 0 or history):  # only when there is something new to draw
        data["network"] = network_data(agent.network, with_topology=since == 0)
    return data


def network_data(network: NetworkSource, with_topology: bool) -> dict[str, Any]:
    """The network as of the last power flow after acting; the topology too when ``with_topology``.

    Buses, lines and transformers are positions into the topology's arrays (the network's tables in index order).
    """
    from agents.network.layout import extreme_feeders

    state = network.state()
    layout = network.layout
    vm = np.array([np.nan if b.vm_pu is None else b.vm_pu for b in state.buses])
    data: dict[str, Any] = {
        "network": state.network,
        "cycle": state.cycle,
        "converged": state.converged,
        "vm_pu": [b.vm_pu for b in state.buses],
        "line_loading_percent": [line.loading_percent for line in state.lines],
        "transformer_loading_percent": [t.loading_percent for t in state.transformers],
        "feeders": [
            {"to": which, "buses": path, "distance_ohm": _numbers(layout.distance_ohm[path])}
            for which, path in extreme_feeders(layout, vm).items()
        ],
    }
    if with_topology:
        data["topology"] = {
            "layout": layout.source,
            "bus": [b.bus for b in state.buses],
            "name": [b.name or f"bus {b.bus}" for b in state.buses],
            "vn_kv": [b.vn_kv for b in state.buses],
            "min_vm_pu": [b.min_vm_pu for b in state.buses],
            "max_vm_pu": [b.max_vm_pu for b in state.buses],
            "x": _numbers(layout.x),
            "y": _numbers(layout.y),
            "line": [line.line for line in state.lines],
            "line_ends": layout.line_ends.tolist(),
            "transformer": [t.transformer_id for t in state.transformers],
            "transformer_ends": layout.transformer_ends.tolist(),
        }
    return data


def _numbers(values: np.ndarray) -> list[float | None]:
    """JSON numbers, null where not finite."""
    return [float(v) if np.isfinite(v) else None for v in values]


@lru_cache(maxsize=1)
def plotly_bundle() -> tuple[bytes, str]:
    """(plotly.min.js, an ETag for it) from the installed plotly package; read once, kept in memory."""
    spec = importlib.util.find_spec("plotly")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise PlotlyMissingError("the plotly package is not installed here; pip install -r requirements.txt brings it")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise PlotlyMissingError(f"plotly.js is missing from the plotly package ({path}): {exc.strerror}") from exc
    try:
        version = metadata.version("plotly")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return body, f'"plotly-{version}-{hashlib.sha256(body).hexdigest()[:16]}"'


@lru_cache(maxsize=1)
def page() -> str:
    """The dashboard page, read once."""
    return PAGE_FILE.read_text(encoding="utf-8")


def dashboard_router(agent: DashboardSource) -> APIRouter:
    """``GET /dashboard``, ``GET /dashboard/plotly.min.js`` and ``GET /dashboard/data`` for one grid agent."""
    router = APIRouter(tags=["dashboard"])

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        """The live dashboard (HTML): loading against rating per transformer, SoC, agents, the last plan."""
        return HTMLResponse(
            page(), headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
        )

    @router.get(
        "/dashboard/plotly.min.js", response_class=Response, responses={200: {"content": {"text/javascript": {}}}}
    )
    async def plotly_js(request: Request) -> Response:
        """plotly.js, from the installed plotly package."""
        body, etag = plotly_bundle()
        headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)

    @router.get("/dashboard/data", responses=error_responses(422))
    async def data(
        since: int = Query(0, ge=0, description="Send the history after this cycle only"),
        run: str | None = Query(
            None, max_length=64, description="The run_id the page last saw; another one sends the whole history"
        ),
    ) -> JSONResponse:
        """The dashboard's feed: /status, every agent's last report, and the cycles after ``since``."""
        return JSONResponse(dashboard_data(agent, since, run), headers={"Cache-Control": "no-store"})

    return router
