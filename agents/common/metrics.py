"""Prometheus metrics of every agent: one registry per app, ``GET /metrics``, and the hooks the agents call.

Each agent owns its own ``CollectorRegistry`` (never the process-wide default), so that many apps
built in one process, as the tests do, never share or clash over a metric. Events (cycles,
commands, fallbacks, failed calls) are counted as they happen; what the agent *is* right now
(loading, state of charge, registered agents) is read from it when Prometheus scrapes.

Grid agent                                   Home and battery agents
  ems_cycle_duration_seconds (histogram)       ems_commands_total{action,status}
  ems_cycle_phase_duration_seconds{phase}      ems_peer_errors_total{peer,kind}
  ems_cycles_total{planner}                    ems_agent_info{agent_id,agent_type,transformer_id}
  ems_transformer_loading_kw{transformer_id}   ems_agent_step, ems_agent_net_power_kw
  ems_transformer_loading_before_kw{...}       ems_battery_soc_fraction, ems_battery_power_kw
  ems_transformer_rating_kw{...}               ems_solar_curtailed_kw, ems_load_shed_kw
  ems_transformer_reverse_limit_kw{...}
  ems_transformer_outside_limits_total{transformer_id,when}
  ems_commands_total{action,status}
  ems_planner_fallbacks_total{kind}
  ems_peer_errors_total{peer,kind}
  ems_agents_registered, ems_agents_healthy, ems_agent_up{agent_id,agent_type,transformer_id}
  with --network, each of the last cycle's power flows (when = before planning | after acting):
  ems_network_bus_voltage_min_pu{when}, ems_network_bus_voltage_max_pu{when}
  ems_network_line_loading_max_percent{when}, ems_network_transformer_loading_max_percent{when}
  ems_network_buses_outside_limits{when}, ems_network_lines_outside_limits{when}
  ems_network_powerflow_failures_total{when}, ems_network_replans_total
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from pydantic import ValidationError

if TYPE_CHECKING:
    from models.schemas import AgentRecord, AgentStatus, CoordinationResult

#: Buckets of the cycle duration (s): a cycle on loopback takes milliseconds; a slow peer or model, seconds.
CYCLE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def peer_error_kind(exc: BaseException) -> str:
    """A short, fixed label for a failed call to another agent."""
    kind = getattr(exc, "kind", None)  # agents.cycle.peers.PeerCallError names its own kind
    if isinstance(kind, str):
        return kind
    while exc.__cause__ is not None and not isinstance(exc, (httpx.HTTPError, ValueError)):
        exc = exc.__cause__
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.HTTPStatusError):
        return "http_status"
    if isinstance(exc, httpx.TransportError):
        return "connect"
    if isinstance(exc, (ValidationError, ValueError)):
        return "invalid_answer"
    return "other"


class _ScrapeTime:
    """A collector that asks a function for its metric families at every scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()

    def describe(self) -> list[Metric]:
        return []  # the families depend on the agent's state; nothing to check at registration


class AgentMetrics:
    """What every agent counts: commands by action and status, failed calls to peers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.commands = Counter(
            "ems_commands",
            "Curtailment commands by action and outcome (status: applied, partial, rejected, duplicate, unreachable)",
            ["action", "status"],
            registry=self.registry,
        )
        self.peer_errors = Counter(
            "ems_peer_errors",
            "Failed calls to another agent, by peer and kind (timeout, connect, http_status, invalid_answer)",
            ["peer", "kind"],
            registry=self.registry,
        )

    def command(self, action: Any, status: Any) -> None:
        """Count one command and how it ended."""
        self.commands.labels(action=_value(action), status=_value(status)).inc()

    def peer_error(self, peer: str, exc: BaseException) -> None:
        """Count one failed call to ``peer``."""
        self.peer_errors.labels(peer=peer, kind=peer_error_kind(exc)).inc()


class GridMetrics(AgentMetrics):
    """The grid agent's metrics: cycles, loadings, plans; registered agents read at scrape time."""

    #: The network's gauges by NetworkCycle figure (without its _before/_after); None until enable_network.
    network_gauges: dict[str, Gauge] | None = None

    def __init__(self, agents: Callable[[], Iterable[AgentRecord]]) -> None:
        super().__init__()
        r = self.registry
        self.cycle_duration = Histogram(
            "ems_cycle_duration_seconds",
            "Duration of one coordination cycle (step, plan, act, record)",
            buckets=CYCLE_BUCKETS_S,
            registry=r,
        )
        self.phase_duration = Histogram(
            "ems_cycle_phase_duration_seconds",
            "Duration of each phase of a cycle",
            ["phase"],
            buckets=CYCLE_BUCKETS_S,
            registry=r,
        )
        self.cycles = Counter("ems_cycles", "Coordination cycles, by the planner that decided", ["planner"], registry=r)
        self.fallbacks = Counter(
            "ems_planner_fallbacks",
            "Cycles in which the ai planner's plan was not used, by kind (models.schemas.FallbackKind)",
            ["kind"],
            registry=r,
        )
        self.loading = Gauge(
            "ems_transformer_loading_kw",
            "Loading after coordination in the last cycle (kW, > 0 = import)",
            ["transformer_id"],
            registry=r,
        )
        self.loading_before = Gauge(
            "ems_transformer_loading_before_kw",
            "Loading before coordination in the last cycle (kW, > 0 = import)",
            ["transformer_id"],
            registry=r,
        )
        self.rating = Gauge("ems_transformer_rating_kw", "Transformer rating (kW)", ["transformer_id"], registry=r)
        self.reverse_limit = Gauge(
            "ems_transformer_reverse_limit_kw",
            "Transformer reverse-flow limit (kW, a positive number)",
            ["transformer_id"],
            registry=r,
        )
        self.outside_limits = Counter(
            "ems_transformer_outside_limits",
            "Cycles a transformer was outside its limits, before or after coordination",
            ["transformer_id", "when"],
            registry=r,
        )
        self._agents = agents
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r.register(_ScrapeTime(self._collect_agents))

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: every cycle updates the same few children, and
        ``labels`` checks its arguments and takes a lock each time (a tenth of the grid agent's own work a cycle)."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[metric, values] = metric.labels(*values)
        return child

    def observe_cycle(self, result: CoordinationResult) -> None:
        """Record one finished cycle."""
        self.cycle_duration.observe(result.duration_ms / 1000.0)
        for phase, ms in result.phase_ms.items():
            self._child(self.phase_duration, phase).observe(ms / 1000.0)
        self._child(self.cycles, result.planner).inc()
        if result.fallback_kind is not None:
            self.fallbacks.labels(kind=result.fallback_kind.value).inc()
        for t in result.transformers:
            tid = t.transformer_id
            self._child(self.loading, tid).set(t.loading_after_kw)
            self._child(self.loading_before, tid).set(t.loading_before_kw)
            self._child(self.rating, tid).set(t.rating_kw)
            self._child(self.reverse_limit, tid).set(t.reverse_limit_kw)
            for when, state in (("before", t.state_before), ("after", t.state_after)):
                if _value(state) != "normal":
                    self._child(self.outside_limits, tid, when).inc()
                else:
                    self._child(self.outside_limits, tid, when)  # the series exists from the first cycle, at 0
        for action in result.actions:
            self.command(action.action, action.status)

    def enable_network(self) -> None:
        """Register the network's metrics (a grid agent with ``--network``); ``observe_network`` fills them."""
        r = self.registry
        when = ["when"]
        self.network_gauges = {
            "vm_min_pu": Gauge(
                "ems_network_bus_voltage_min_pu",
                "Lowest bus voltage of the last cycle's power flow (p.u.; NaN when it failed)",
                when,
                registry=r,
            ),
            "vm_max_pu": Gauge(
                "ems_network_bus_voltage_max_pu",
                "Highest bus voltage of the last cycle's power flow (p.u.; NaN when it failed)",
                when,
                registry=r,
            ),
            "line_loading_max_percent": Gauge(
                "ems_network_line_loading_max_percent",
                "Loading of the most loaded line in the last cycle's power flow (percent of its rating)",
                when,
                registry=r,
            ),
            "transformer_loading_max_percent": Gauge(
                "ems_network_transformer_loading_max_percent",
                "AC loading of the most loaded transformer in the last cycle's power flow (percent of its rating)",
                when,
                registry=r,
            ),
            "buses_outside": Gauge(
                "ems_network_buses_outside_limits",
                "Buses with a voltage outside their limits in the last cycle's power flow",
                when,
                registry=r,
            ),
            "lines_outside": Gauge(
                "ems_network_lines_outside_limits",
                "Lines loaded above 100 % in the last cycle's power flow",
                when,
                registry=r,
            ),
        }
        self.powerflow_failures = Counter(
            "ems_network_powerflow_failures",
            "Power flows that did not converge (when: before planning, after acting)",
            when,
            registry=r,
        )
        self.replans = Counter(
            "ems_network_replans",
            "Cycles planned a second time because the AC check after acting found a limit broken",
            registry=r,
        )
        for label in ("before", "after"):
            self.powerflow_failures.labels(when=label)  # at 0 from the start

    def observe_network(self, result: CoordinationResult) -> None:
        """Record one cycle's power flows (nothing without ``enable_network`` or without a network block)."""
        network = result.network
        if network is None or self.network_gauges is None:
            return
        for when in ("before", "after"):
            failed = getattr(network, f"vm_min_pu_{when}") is None
            if failed and not network.converged:
                self.powerflow_failures.labels(when=when).inc()
            for key, gauge in self.network_gauges.items():
                figure = getattr(network, f"{key}_{when}")
                gauge.labels(when=when).set(float("nan") if figure is None else figure)
        if network.replanned:
            self.replans.inc()

    def forget_peers(self, peers: Iterable[str]) -> None:
        """Drop the series labelled with these agent ids or batch URLs (agents the registry forgot)."""
        for peer in peers:
            self.peer_errors.remove_by_labels({"peer": peer})

    def _collect_agents(self) -> Iterator[Metric]:
        records = list(self._agents())
        yield GaugeMetricFamily("ems_agents_registered", "Agents registered with the grid agent", value=len(records))
        yield GaugeMetricFamily(
            "ems_agents_healthy", "Registered agents heard from recently", value=sum(r.healthy for r in records)
        )
        up = GaugeMetricFamily(
            "ems_agent_up",
            "1 when a registered agent is healthy, else 0",
            labels=["agent_id", "agent_type", "transformer_id"],
        )
        for r in records:
            up.add_metric([r.agent_id, _value(r.agent_type), r.transformer_id], 1.0 if r.healthy else 0.0)
        yield up


class DeviceMetrics(AgentMetrics):
    """A home or battery agent's metrics; its step, net power and modules are read at scrape time."""

    def __init__(self, status: Callable[[], AgentStatus]) -> None:
        super().__init__()
        self._status = status
        self.registry.register(_ScrapeTime(self._collect_status))

    def _collect_status(self) -> Iterator[Metric]:
        s = self._status()
        yield InfoMetricFamily(
            "ems_agent",
            "What this agent is",
            value={"agent_id": s.agent_id, "agent_type": _value(s.agent_type), "transformer_id": s.transformer_id},
        )
        yield GaugeMetricFamily("ems_agent_step", "Steps simulated so far", value=s.step)
        yield GaugeMetricFamily(
            "ems_agent_net_power_kw", "Net power this step (kW, > 0 = import)", value=s.net_power_kw
        )
        if s.battery is not None:
            yield GaugeMetricFamily(
                "ems_battery_soc_fraction", "Battery state of charge (0-1)", value=s.battery.soc_fraction
            )
            yield GaugeMetricFamily(
                "ems_battery_power_kw", "Battery power (kW, > 0 = charging)", value=s.battery.power_kw
            )
        if s.solar is not None:
            yield GaugeMetricFamily(
                "ems_solar_curtailed_kw", "Solar output curtailed this step (kW)", value=s.solar.curtailed_kw
            )
        if s.load is not None:
            yield GaugeMetricFamily("ems_load_shed_kw", "Flexible load shed this step (kW)", value=s.load.shed_kw)


def mount_metrics(app: FastAPI, registry: CollectorRegistry) -> None:
    """Serve ``GET /metrics`` from ``registry`` (Prometheus text; OpenMetrics when the scraper asks for it)."""

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this agent."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), media_type=content_type)


def _value(item: Any) -> str:
    return str(getattr(item, "value", item))
