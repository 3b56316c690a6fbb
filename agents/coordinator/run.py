"""The coordinator: starts the agents, waits for them, drives coordination cycles, stops them."""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from agents.common.auth import GENERATED_TOKEN_ENV
from agents.common.settings import StartupError
from agents.common.tls import client_ssl_context
from agents.coordinator.children import Child, feeder_scenario, plan_children, port_in_use
from agents.coordinator.collect import collect_logs
from agents.coordinator.progress import cycle_display
from agents.coordinator.report import network_line, run_kpis, summary_rows, write_report
from agents.coordinator.settings import CoordinatorSettings
from agents.coordinator.supervise import RestartPolicy, Supervisor
from models.schemas import RUN_CYCLES_MAX

#: With --report, fetch the grid agent's history this often (it keeps the last 2,880 cycles).
HISTORY_PULL_EVERY = 1000
#: At --interval 0, how long to wait before asking a run for its results again: a run does hundreds of cycles a
#: second, and asking again at once would take one or two at a time, costing both processes more than the cycles.
RESULTS_POLL_S = 0.1
#: Results asked for at once (the grid agent keeps its latest run's last 1,000).
RESULTS_PAGE = 500


class CoordinatorError(Exception):
    """The run cannot go on; the message says which agent and why."""


class GridLost(Exception):
    """A call to the grid agent failed in transport: it may have died, and the supervisor may bring it back."""


@dataclass
class RunStats:
    """What the summary reports."""

    cycles: list[dict] = field(default_factory=list)
    round_trip_ms: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # the grid agent's dashboard rows (SoC per cycle), for --report
    history_run: str | None = None
    report_written: bool = False
    cycles_wall_s: float | None = None  # wall time of the cycles, start-up excluded
    lost_cycles: list[int] = field(default_factory=list)  # the grid agent's numbers of cycles without a result


class Coordinator:
    """Runs one simulation: children up, cycles, summary, children down."""

    def __init__(self, settings: CoordinatorSettings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)
        self.scenario = feeder_scenario(settings)
        scenario_path = settings.scenario
        if (
            self.scenario is not None and scenario_path is None
        ):  # a generated feeder: write it where the agents can read it
            settings.log_dir.mkdir(parents=True, exist_ok=True)
            scenario_path = settings.log_dir / "feeder.toml"
            scenario_path.write_text(self.scenario.to_toml(), encoding="utf-8")
        self.children = plan_children(settings, self.scenario, scenario_path)
        self.token_generated = not os.environ.get("AGENT_TOKEN")
        self.token = os.environ.get("AGENT_TOKEN") or secrets.token_urlsafe(24)
        ssl_context = client_ssl_context(settings)  # its children are on loopback, so the token rule holds
        verify = ssl_context if ssl_context is not None else True
        self.http = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {self.token}"}, verify=verify)
        self.stats = RunStats()
        self.supervisor = Supervisor(
            self.children,
            self._relaunch,
            httpx.Client(timeout=2.0, verify=verify),  # its own client: it runs in its own thread
            RestartPolicy(max_restarts=settings.max_restarts),
            report=lambda line: self.errors.print(f"[yellow]supervisor:[/yellow] {line}"),
        )
        self.ray = None  # agents.coordinator.ray_hosts, once the agents run on a Ray cluster
        self.grid_base = 0  # the grid agent's cycle count when the run began
        self.last_cycle = 0  # the latest cycle number the coordinator has seen, or skipped over

    # -- children ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start every agent and wait until each answers /health and the devices have registered."""
        if self.settings.ray is not None:
            self._start_on_ray()
            self._wait_registered()
            self.grid_base = self.last_cycle = self._grid_cycles()
            return  # Ray, not the supervisor, restarts actors
        for child in self.children:
            if port_in_use("127.0.0.1", child.port):
                raise CoordinatorError(
                    f"port {child.port} is already in use ({child.name}); stop what holds it or choose another "
                    "--base-port"
                )
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._launch(child, child.command, "w")
        for child in self.children:
            self._wait_healthy(child)
            self.console.print(f"[green]up[/green] {child.name:<14} {child.url}  pid {child.process.pid}")
        self._wait_registered()
        self.grid_base = self.last_cycle = self._grid_cycles()
        self.supervisor.start()

    def _start_on_ray(self) -> None:
        """Place the grid agent, then every device host, as Ray actors; each serves on its node's IP."""
        import agents.coordinator.ray_hosts as ray_hosts  # Ray is imported only with --ray

        try:
            ray_hosts.connect(self.settings.ray)
        except Exception as exc:  # ConnectionError, or Ray's own for a bad address or token
            raise CoordinatorError(f"cannot join the Ray cluster at --ray {self.settings.ray}: {exc}") from exc
        self.ray = ray_hosts
        env = {"AGENT_TOKEN": self.token, **({GENERATED_TOKEN_ENV: "1"} if self.token_generated else {})}
        placed: list = []
        grid_url = None
        for wave in (self.children[:1], self.children[1:]):  # the grid agent first: the devices need its URL
            if not wave:
                continue
            started = []
            on_head = wave[0] is self.children[0]
            try:
                group = None if on_head else ray_hosts.spread_group(len(wave), self.settings.startup_timeout_s)
            except Exception as exc:  # Ray's GetTimeoutError: no room for the bundles
                raise CoordinatorError(
                    f"could not reserve {len(wave)} bundles of {ray_hosts.BUNDLE_CPU:g} CPU for the device hosts"
                    f" within {self.settings.startup_timeout_s:g} s (does every node offer CPUs?): {exc}"
                ) from exc
            for k, child in enumerate(wave):
                args = ray_arguments(child.command[4:], grid_url)
                where = {"on_head": True} if on_head else {"bundle": (group, k)}
                script = Path(child.command[1]).name
                started.append(
                    ray_hosts.place(
                        child.name, child.agent_id, child.hosts, script, args, env, files_for_nodes(args), **where
                    )
                )
            for host in started:  # started together, waited for one by one
                try:
                    host.refresh(timeout_s=self.settings.startup_timeout_s)
                except Exception as exc:  # Ray's GetTimeoutError, or the actor's own error
                    raise CoordinatorError(
                        f"the {host.name} ({host.agent_id}) did not start on the cluster: {exc}"
                    ) from exc
                placed.append(host)
                self.children = placed + self.children[len(placed) :]
                self._wait_healthy(host)
                self.console.print(f"[green]up[/green] {host.name:<14} {host.url}  node {host.node_id[:12]}")
            grid_url = placed[0].url
        # the first supervisor's client: its timeout and its TLS verification (the agents may serve HTTPS)
        self.supervisor = Supervisor(placed, self._relaunch, self.supervisor.http, report=self.supervisor.report)

    def _launch(self, child: Child, command: list[str], mode: str) -> None:
        env = {**os.environ, "AGENT_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        env.pop(GENERATED_TOKEN_ENV, None)
        if self.token_generated:  # so that a 401 tells a caller how to get a token that works
            env[GENERATED_TOKEN_ENV] = "1"
        with child.output.open(mode, encoding="utf-8") as output:
            child.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=os.getcwd(),
                start_new_session=True,
            )

    def _relaunch(self, child: Child) -> None:
        """Start a child that died again, from its committed state; its output goes on in the same file."""
        self._launch(child, child.restart_command, "a")
        self.errors.print(f"[yellow]supervisor:[/yellow] started the {child.name} again, pid {child.process.pid}")

    def _follow_moved_grid(self) -> None:
        """On Ray, a grid agent restarted on another node serves at a new URL: use it, and point the devices to it."""
        if self.ray is None:
            return
        grid = self.children[0]
        before = grid.url
        try:
            grid.refresh(timeout_s=self.settings.startup_timeout_s)
        except Exception as exc:  # Ray's GetTimeoutError or ActorDiedError
            raise GridLost(f"the grid agent's actor did not answer: {exc}") from exc
        if grid.url != before:
            self.errors.print(f"[yellow]warning:[/yellow] the grid agent moved to {grid.url}")
            self.ray.point_to(self.children[1:], grid.url)

    def _grid_cycles(self) -> int:
        """The grid agent's cycle count (GET /status)."""
        try:
            answer = self.http.get(f"{self.children[0].url}/status", timeout=5.0)
            answer.raise_for_status()
            return int(answer.json()["cycles"])
        except httpx.HTTPError as exc:
            raise GridLost(str(exc)) from exc

    def _wait_healthy(self, child: Child) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        reason = "no answer"
        while time.monotonic() < deadline:
            code = child.exit_code()
            if code is not None:
                raise CoordinatorError(
                    f"the {child.name} ({child.agent_id}) exited during start-up with code {code}: "
                    f"{child.tail() or 'no output'}"
                )
            try:
                answer = self.http.get(f"{child.url}/health", timeout=1.0)
                if answer.status_code == 200 and answer.json().get("status") == "ok":
                    return
                reason = f"HTTP {answer.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                reason = type(exc).__name__
                if "SSL" in str(exc) or "certificate" in str(exc):  # a TLS misfit will not go away by waiting
                    reason = f"{reason}: {str(exc)[:200]}"
            time.sleep(0.1)
        raise CoordinatorError(
            f"the {child.name} ({child.agent_id}) did not answer /health within {self.settings.startup_timeout_s:g} "
            f"s ({reason}); its output: {child.tail() or 'none'}"
        )

    def _wait_registered(self, children: list[Child] | None = None) -> None:
        expected = {agent_id for c in (self.children[1:] if children is None else children) for agent_id in c.hosts}
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            agents = {a["agent_id"] for a in self.http.get(f"{self.children[0].url}/agents").json() if a["healthy"]}
            if expected <= agents:
                return
            time.sleep(0.1)
        missing = sorted(expected - agents)
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise CoordinatorError(
            f"agents {shown} did not register with the grid agent within {self.settings.startup_timeout_s:g} s"
        )

    def stop(self) -> None:
        """Stop every child: SIGTERM, then SIGKILL after 5 s. Safe to call twice."""
        self.supervisor.stop()  # before stopping them on purpose, so that none is started again
        if self.ray is not None:
            self._stop_on_ray()
            return
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in reversed(running):
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for child in running:
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if running:
            self.console.print(f"stopped {len(running)} agent processes")
        self.collect_logs()  # nothing to fetch from local processes; the same step as for actors on other nodes
        self.http.close()

    def _stop_on_ray(self) -> None:
        """Shut the actors' servers down, fetch their logs, end the actors and leave the cluster."""
        ray_hosts, self.ray = self.ray, None
        placed = [c for c in self.children if isinstance(c, ray_hosts.RayChild)]
        ray_hosts.shutdown(placed)
        self.collect_logs()
        ray_hosts.kill(placed)
        ray_hosts.disconnect()
        self.console.print(f"stopped {len(placed)} agent actors")
        self.http.close()

    # -- cycles ------------------------------------------------------------------------------
    def run_cycles(self) -> None:
        """Run the configured number of cycles, showing each (a line each, or a progress bar for long runs).

        At --interval 0 the grid agent runs them as a job (POST /runs) whose results the coordinator
        follows (GET /runs/{run_id}/results); otherwise it asks for one cycle (POST /coordinate) every
        ``interval`` seconds.
        """
        loop_started = time.perf_counter()
        target = self.grid_base + self.settings.cycles  # the grid agent's number of the run's last cycle
        with cycle_display(self.console, self.settings.cycles, self.print_cycle) as show:
            while self.last_cycle < target:
                try:
                    if self.settings.interval == 0:
                        self.follow_run(min(RUN_CYCLES_MAX, target - self.last_cycle), show)
                    else:
                        self.cycle_every_interval(target, show)
                except GridLost as exc:
                    self.recover_grid(str(exc))
        self.stats.cycles_wall_s = time.perf_counter() - loop_started

    def cycle_every_interval(self, target: int, show: Callable[[dict], None]) -> None:
        """One POST /coordinate every ``interval`` seconds until the grid agent's cycle ``target``."""
        while self.last_cycle < target:
            started = time.perf_counter()
            try:
                response = self.http.post(f"{self.children[0].url}/coordinate")
            except httpx.HTTPError as exc:
                raise GridLost(f"POST /coordinate: {type(exc).__name__}: {exc}") from exc
            if response.status_code != 200:
                raise CoordinatorError(f"the grid agent answered POST /coordinate with {_refusal(response)}")
            self.take(response.json(), (time.perf_counter() - started) * 1000, show)
            if self.last_cycle < target:
                time.sleep(max(self.settings.interval - (time.perf_counter() - started), 0.0))

    def recover_grid(self, why: str) -> None:
        """After a failed call to the grid agent: wait for the supervisor to bring it back and the devices to
        register again, then note every cycle that has no result (cut short, or its result lost with it)."""
        grid = self.children[0]
        self.errors.print(f"[yellow]warning:[/yellow] lost the grid agent after cycle {self.last_cycle} ({why})")
        policy = self.supervisor.policy
        deadline = time.monotonic() + (policy.max_restarts + 1) * (
            self.settings.startup_timeout_s + policy.max_backoff_s
        )
        while True:
            if self.supervisor.given_up(grid) or time.monotonic() > deadline:
                raise CoordinatorError(f"lost the grid agent ({why}), and restarting it did not bring it back")
            if self.supervisor.is_up(grid):  # as far as the supervisor knows: it may not have seen the death yet
                try:
                    self._follow_moved_grid()
                    self._wait_registered([c for c in self.children[1:] if self.supervisor.is_up(c)])
                    now_at = self._grid_cycles()
                    break
                except (httpx.HTTPError, GridLost):
                    pass
            time.sleep(0.05)
        lost = list(range(self.last_cycle + 1, now_at + 1))
        self.stats.lost_cycles.extend(lost)
        self.last_cycle = max(self.last_cycle, now_at)
        shown = f"cycle{'s' if len(lost) > 1 else ''} {_ranges(lost)}" if lost else "no cycle"
        self.errors.print(f"[yellow]warning:[/yellow] the grid agent is back at cycle {now_at}; {shown} lost")

    def follow_run(self, cycles: int, show: Callable[[dict], None]) -> None:
        """Start a run of ``cycles`` on the grid agent and show its results as they come; Ctrl+C stops the run."""
        grid = self.children[0].url
        try:
            response = self.http.post(f"{grid}/runs", json={"cycles": cycles})
        except httpx.HTTPError as exc:
            raise GridLost(f"POST /runs: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 202:
            raise CoordinatorError(f"the grid agent answered POST /runs with {_refusal(response)}")
        run_id = response.json()["run_id"]
        self.console.print(f"run            {grid}/runs/{run_id}  ({cycles} cycles)")
        since, received, last = 0, 0, time.perf_counter()
        try:
            while True:
                try:
                    answer = self.http.get(
                        f"{grid}/runs/{run_id}/results", params={"since": since, "limit": RESULTS_PAGE}
                    )
                except httpx.HTTPError as exc:
                    raise GridLost(f"GET /runs/{run_id}/results: {type(exc).__name__}: {exc}") from exc
                if answer.status_code != 200:
                    raise CoordinatorError(
                        f"the grid agent answered GET /runs/{run_id}/results with {_refusal(answer)}"
                    )
                page = answer.json()
                if page["results"]:
                    arrived = time.perf_counter()
                    per_cycle_ms = (arrived - last) * 1000 / len(page["results"])
                    last = arrived
                    for result in page["results"]:
                        self.take(result, per_cycle_ms, show)
                    received += len(page["results"])
                    since = page["results"][-1]["cycle"]
                    if len(page["results"]) == RESULTS_PAGE:
                        continue  # more are waiting
                elif page["status"] != "running":
                    break
                time.sleep(RESULTS_POLL_S)
        except KeyboardInterrupt:
            self.stop_run(run_id)
            raise
        if received < page["cycles_done"]:
            missed = page["cycles_done"] - received
            self.errors.print(f"[yellow]warning:[/yellow] {missed} cycles of run {run_id} were gone when asked for")
        if page["status"] != "done":
            info = self.http.get(f"{grid}/runs/{run_id}").json()
            why = info.get("error") or "stopped by DELETE /runs/" + run_id
            raise CoordinatorError(
                f"run {run_id} on the grid agent ended {info['status']}"
                f" after {info['cycles_done']} of {info['cycles']} cycles: {why}"
            )

    def stop_run(self, run_id: str) -> None:
        """Ask the grid agent to stop a run after its cycle in flight (on Ctrl+C), so that it ends ``stopped``."""
        try:
            httpx.delete(f"{self.children[0].url}/runs/{run_id}", headers=self.http.headers, timeout=5.0)
        except httpx.HTTPError as exc:
            self.errors.print(f"[yellow]warning:[/yellow] could not stop run {run_id} on the grid agent: {exc}")

    def take(self, result: dict, round_trip_ms: float, show: Callable[[dict], None]) -> None:
        """Count and show one cycle's result."""
        self.stats.round_trip_ms.append(round_trip_ms)
        self.stats.cycles.append(result)
        self.last_cycle = max(self.last_cycle, result["cycle"])
        show(result)
        if self.settings.report and len(self.stats.cycles) % HISTORY_PULL_EVERY == 0:
            self.pull_history()  # before the grid agent's bounded history forgets the first cycles

    def pull_history(self) -> None:
        """Fetch the grid agent's dashboard rows not fetched yet (the state of charge per cycle, for the report)."""
        since = self.stats.history[-1]["cycle"] if self.stats.history else 0
        params = {"since": since, **({"run": self.stats.history_run} if self.stats.history_run else {})}
        try:
            answer = self.http.get(f"{self.children[0].url}/dashboard/data", params=params)
            answer.raise_for_status()
            data = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.errors.print(
                f"[yellow]warning:[/yellow] could not fetch the grid agent's history for the report: {exc}"
            )
            return
        if data.get("run_id") != self.stats.history_run:
            self.stats.history = []
        self.stats.history_run = data.get("run_id")
        self.stats.history.extend(data.get("history", []))

    def write_report(self) -> bool:
        """Write the --report folder (summary.json, cycles.jsonl, PNG plots).

        False, with the reason printed, when it cannot.
        """
        directory = self.settings.report
        self.pull_history()
        run = {
            **self.settings.model_dump(
                mode="json",
                include={
                    "cycles",
                    "interval",
                    "planner",
                    "base_port",
                    "homes",
                    "transformer_rating_kw",
                    "scenario",
                    "start",
                    "resume",
                    "log_dir",
                    "ray",
                },
            ),
            "cycles_run": len(self.stats.cycles),
            "faults": self.faults(),
            "median_round_trip_ms": statistics.median(self.stats.round_trip_ms) if self.stats.round_trip_ms else None,
        }
        network = None
        if self.settings.network is not None:  # the buses' voltage limits, for the voltage plot
            try:
                answer = self.http.get(f"{self.children[0].url}/network")
                answer.raise_for_status()
                network = answer.json()
            except (httpx.HTTPError, ValueError) as exc:
                self.errors.print(f"[yellow]warning:[/yellow] could not fetch the network for the report: {exc}")
        run["network"] = self.settings.network
        try:
            paths = write_report(directory, self.stats.cycles, self.stats.history, run, network)
        except OSError as exc:
            self.errors.print(f"[red]error:[/red] cannot write the report into {directory}: {exc}")
            return False
        self.console.print(f"report in {directory}/: {', '.join(p.name for p in paths)}")
        self.stats.report_written = True
        return True

    def collect_logs(self) -> None:
        """Bring every agent's CSV log into --log-dir (a no-op for local processes); warn about any not fetched."""
        written, failed = collect_logs(self.children, self.settings.log_dir)
        if written:
            self.console.print(f"fetched {len(written)} agent logs into {self.settings.log_dir}/")
        for name, why in failed.items():
            self.errors.print(f"[yellow]warning:[/yellow] could not fetch the logs of the {name}: {why}")

    def print_cycle(self, result: dict) -> None:
        stamp = (result["timestamp"] or "-").replace("T", " ")[:16]
        self.console.print(
            f"[bold]cycle {result['cycle']}[/bold]  {stamp}  planner {result['planner']}  "
            f"{result['duration_ms']:.1f} ms"
        )
        colour = {"normal": "green", "overload": "red", "reverse_power_flow": "yellow"}
        for t in result["transformers"]:
            before, after = t["state_before"], t["state_after"]
            self.console.print(
                f"  {t['transformer_id']:<6} {t['loading_before_kw']:7.2f} -> {t['loading_after_kw']:7.2f} kW"
                f" (limits -{t['reverse_limit_kw']:g}..{t['rating_kw']:g})"
                f"  [{colour[before]}]{before}[/] -> [{colour[after]}]{after}[/]"
            )
        for a in result["actions"]:
            self.console.print(
                f"    {a['agent_id']:<16} {a['action']:<18} {a['requested_kw']:6.2f} kW, applied "
                f"{a['applied_kw']:6.2f} ({a['status']})"
            )
        network = result.get("network")
        if network:
            self.console.print(f"  network {network_line(network)}")
        if result["unreachable"]:
            self.console.print(f"    [red]unreachable:[/red] {', '.join(result['unreachable'])}")
        if result.get("fallback_reason"):
            self.console.print(f"    fallback: {result['fallback_reason']}")

    def summary(self) -> Table:
        """A table of what the run did."""
        table = Table(title="Summary", show_header=True)
        table.add_column("figure")
        table.add_column("coordinated", justify="right")
        table.add_column("uncoordinated", justify="right")
        for row in summary_rows(run_kpis(self.stats.cycles)):
            table.add_row(*row)
        if self.stats.round_trip_ms:
            table.add_row("median cycle, round trip (ms)", f"{statistics.median(self.stats.round_trip_ms):.1f}", "")
        if self.stats.cycles_wall_s and self.stats.cycles:
            rate = len(self.stats.cycles) / self.stats.cycles_wall_s
            table.add_row("cycles per second (wall)", f"{rate:.0f}", "")
        return table

    def faults(self) -> dict:
        """What went wrong during the run: restarts, cycles without a result, agents unreachable and when."""
        unreachable: dict[str, list[int]] = {}
        for result in self.stats.cycles:
            for agent_id in result["unreachable"]:
                unreachable.setdefault(agent_id, []).append(result["cycle"])
        return {
            "restarts": self.supervisor.summary(),
            "given_up": [c.agent_id for c in self.children if self.supervisor.given_up(c)],
            "lost_cycles": sorted(self.stats.lost_cycles),
            "unreachable": dict(sorted(unreachable.items())),
        }

    def print_faults(self) -> None:
        """The faults of the run, under the summary (nothing when there were none)."""
        faults = self.faults()
        for r in faults["restarts"]:
            back = (
                "gave up"
                if r["gave_up"]
                else f"back after {r['down_s']:.1f} s"
                if r["down_s"] is not None
                else "not back"
            )
            self.console.print(
                f"restart        the {r['name']} ({r['agent_id']}) exited with code {r['exit_code']}"
                f" at {r['died_s']:.1f} s; {back}"
            )
        if faults["lost_cycles"]:
            self.console.print(
                f"cycles lost    {_ranges(faults['lost_cycles'])}"
                " (no result: cut short when the grid agent died, or lost with it)"
            )
        for agent_id, cycles in faults["unreachable"].items():
            self.console.print(f"unreachable    {agent_id} in cycles {_ranges(cycles)}")

    def run(self) -> int:
        """The whole run; returns the process exit code."""
        try:
            if self.settings.report is not None:
                try:
                    self.settings.report.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise CoordinatorError(
                        f"cannot create the report folder {self.settings.report}: {exc.strerror}"
                    ) from exc
            self.start()
            self.console.print(f"dashboard      {self.children[0].url}/dashboard  (metrics at /metrics on every agent)")
            self.run_cycles()
            self.console.print(self.summary())
            self.print_faults()
            if self.settings.report is not None and not self.write_report():
                return 1
            self.console.print(f"logs and agent output in {self.settings.log_dir}/")
            if not self.settings.exit:
                self.console.print(
                    f"agents stay up at {', '.join(c.url for c in self.children)}; press Ctrl+C to stop them"
                )
                if self.token_generated:
                    self.console.print(
                        "their POST endpoints want this run's own random token;"
                        " to call them yourself, set AGENT_TOKEN before starting the coordinator"
                    )
                while not any(self.supervisor.given_up(c) for c in self.children):
                    time.sleep(0.5)  # the supervisor starts again any that die, up to --max-restarts
                gone = next(c for c in self.children if self.supervisor.given_up(c))
                raise CoordinatorError(
                    f"the {gone.name} ({gone.agent_id}) kept exiting (last code {gone.exit_code()}): {gone.tail()}"
                )
            return 0
        except KeyboardInterrupt:
            self.console.print("interrupted; stopping the agents")
            if self.settings.report is not None and self.stats.cycles and not self.stats.report_written:
                self.write_report()  # a report of the cycles that did run
            return 0
        except CoordinatorError as exc:
            self.errors.print(f"[red]error:[/red] {exc}")
            return 1
        except httpx.HTTPError as exc:
            self.errors.print(f"[red]error:[/red] lost the grid agent: {exc}")
            return 1
        finally:
            self.stop()


def main(args: list[str] | None = None) -> int:
    """Entry point of run_distributed_simulation.py."""
    settings = CoordinatorSettings.from_cli(args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        coordinator = Coordinator(settings)
    except (StartupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return coordinator.run()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def ray_arguments(args: list[str], grid_url: str | None) -> list[str]:
    """A child's flags for a Ray actor: no --host (it binds its node's IP), paths made absolute, and
    --grid-url the grid actor's URL."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag = args[i]
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        if flag == "--host":
            i += 2
            continue
        if flag == "--grid-url" and grid_url is not None:
            value = grid_url
        elif flag in PATH_FLAGS and value is not None:
            value = str(Path(value).resolve())
        out += [flag] if value is None else [flag, value]
        i += 1 if value is None else 2
    return out


#: Flags whose value is a path, made absolute for actors (whose working directory is Ray's copy of the code).
PATH_FLAGS = ("--log-dir", "--state-dir", "--scenario", "--network", "--data-file")


def files_for_nodes(args: list[str]) -> dict[str, bytes]:
    """The scenario and network files an actor's flags name, to be written where its node lacks them."""
    files: dict[str, bytes] = {}
    for flag, value in itertools.pairwise(args):
        if flag in ("--scenario", "--network") and Path(value).is_file():
            files[value] = Path(value).read_bytes()
            if flag == "--network":  # the agents' profile arrays lie beside network.json
                for path in Path(value).parent.glob("*.npy"):
                    files[str(path)] = path.read_bytes()
    return files


def _ranges(numbers: list[int]) -> str:
    """Numbers as short ranges: [3, 4, 5, 9] -> '3-5, 9'."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _refusal(response: httpx.Response) -> str:
    """An error answer in a few words: its status and the message of its error body (or its first characters)."""
    try:
        message = response.json()["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"HTTP {response.status_code}: {message}"
