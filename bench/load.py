"""Load on one home agent over loopback: /status and /curtail from concurrent clients (python bench/load.py --help).

Starts ``home_agent_server.py`` as a real process on a free 127.0.0.1 port (``--fresh``, its
logs and state in a temporary folder), steps it once, then runs ``--clients`` clients, each its
own ``httpx.AsyncClient``, for ``--seconds``: each request is a GET /status or a POST /curtail
with a new command_id, and now and then a deliberate duplicate (a body the same client sent
before). A stepper POSTs /simulate every ``--step-every`` seconds so that commands land in
several steps. Then it stops the agent with SIGTERM and checks its SQLite state
(``<state>/<agent_id>.sqlite3``, table ``commands``) and its step log: every command answered is
recorded exactly once with the answer the client got, and the log's ``commands`` column counts
every applied command exactly once. Errors must be none; the exit code is 1 otherwise.

Loopback only, bounded in time. Not a test: pytest never collects bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
AGENT_ID = "home_1"
#: Commands small enough that the home can keep taking them: the battery swings a watt either way.
ACTIONS = [("charge_battery", 0.001), ("discharge_battery", 0.001), ("curtail_solar", 0.0001), ("shed_load", 0.0001)]


@dataclass
class Tally:
    """What one endpoint saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


@dataclass
class Ledger:
    """What the clients were told, to compare with what the agent recorded."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # command_id -> first answer (status, applied_kw)
    duplicates_sent: int = 0
    duplicates_answered: int = 0
    duplicate_mismatches: int = 0
    statuses: Counter = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_agent(work: Path, port: int, start: str) -> subprocess.Popen:
    command = [
        sys.executable,
        str(ROOT / "home_agent_server.py"),
        "--port",
        str(port),
        "--fresh",
        "--start",
        start,
        "--log-dir",
        str(work / "logs"),
        "--state-dir",
        str(work / "state"),
        "--log-level",
        "warning",
        "--grid-url",
        f"http://{HOST}:{free_port()}",
        "--heartbeat-s",
        "60",  # no grid agent: it stays on its own
    ]
    env = {k: v for k, v in os.environ.items() if k != "AGENT_TOKEN" and not k.startswith(("EMS_", "OPENAI_"))}
    output = (work / "agent.out").open("w")
    return subprocess.Popen(
        command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the home agent exited with {process.returncode} during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the home agent did not answer /health within {timeout_s:g} s")


async def client_loop(
    index: int, url: str, deadline: float, args: argparse.Namespace, tallies: dict[str, Tally], ledger: Ledger
) -> None:
    rng = random.Random(args.seed * 1000 + index)
    sent: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, timeout=5.0, limits=limits) as client:
        n = 0
        while time.monotonic() < deadline and n < 1_000_000:  # bounded in time and count
            n += 1
            if rng.random() < args.status_share:
                endpoint, request = "GET /status", client.get("/status")
                body = None
            else:
                endpoint = "POST /curtail"
                duplicate = bool(sent) and rng.random() < args.duplicate_share
                if duplicate:
                    body = rng.choice(sent)
                    ledger.duplicates_sent += 1
                else:
                    action, power_kw = rng.choice(ACTIONS)
                    body = {"command_id": f"load-{index}-{n}", "action": action, "power_kw": power_kw}
                    sent.append(body)
                request = client.post("/curtail", json=body)
            started = time.perf_counter()
            try:
                response = await request
            except httpx.HTTPError as exc:
                tallies[endpoint].errors[type(exc).__name__] += 1
                continue
            tallies[endpoint].latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                tallies[endpoint].errors[f"HTTP {response.status_code}"] += 1
                continue
            if body is None:
                continue
            answer = response.json()
            ledger.statuses[answer["status"]] += 1
            first = ledger.answers.get(body["command_id"])
            if first is None:
                ledger.answers[body["command_id"]] = {"status": answer["status"], "applied_kw": answer["applied_kw"]}
            elif answer["status"] == "duplicate":
                ledger.duplicates_answered += 1
                ledger.duplicate_mismatches += answer["applied_kw"] != first["applied_kw"]
            else:
                tallies[endpoint].errors["repeat applied again"] += 1


async def stepper(url: str, deadline: float, every_s: float, tallies: dict[str, Tally]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        for _ in range(100_000):  # bounded
            await asyncio.sleep(every_s)
            if time.monotonic() >= deadline:
                return
            started = time.perf_counter()
            try:
                response = await client.post("/simulate")
            except httpx.HTTPError as exc:
                tallies["POST /simulate"].errors[type(exc).__name__] += 1
                continue
            tallies["POST /simulate"].latencies_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                tallies["POST /simulate"].errors[f"HTTP {response.status_code}"] += 1


async def drive(url: str, args: argparse.Namespace) -> tuple[dict[str, Tally], Ledger, float]:
    tallies = {name: Tally() for name in ("GET /status", "POST /curtail", "POST /simulate")}
    ledger = Ledger()
    started = time.monotonic()
    deadline = started + args.seconds
    tasks = [client_loop(i, url, deadline, args, tallies, ledger) for i in range(args.clients)]
    if args.step_every > 0:
        tasks.append(stepper(url, deadline, args.step_every, tallies))
    await asyncio.gather(*tasks)
    return tallies, ledger, time.monotonic() - started


def recorded_commands(state_file: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every (command_id, record) in the agent's SQLite ``commands`` table."""
    with sqlite3.connect(state_file) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(commands)")}
        if "agent_id" in columns:
            rows = db.execute("SELECT command_id, body FROM commands WHERE agent_id = ?", (AGENT_ID,)).fetchall()
        else:
            rows = db.execute("SELECT command_id, body FROM commands").fetchall()
    return [(command_id, json.loads(body)) for command_id, body in rows]


def check(work: Path, ledger: Ledger) -> list[str]:
    """What the agent recorded against what the clients were told; returns the problems."""
    problems = []
    rows = recorded_commands(work / "state" / f"{AGENT_ID}.sqlite3")
    ids = [command_id for command_id, _ in rows]
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} command ids recorded more than once")
    recorded = dict(rows)
    if set(recorded) != set(ledger.answers):
        problems.append(
            f"{len(set(ledger.answers) - set(recorded))} answered commands not recorded, "
            f"{len(set(recorded) - set(ledger.answers))} recorded but never answered"
        )
    for command_id, answer in ledger.answers.items():
        result = recorded.get(command_id, {}).get("result", {})
        if (result.get("status"), result.get("applied_kw")) != (answer["status"], answer["applied_kw"]):
            problems.append(
                f"{command_id}: recorded {result.get('status')} {result.get('applied_kw')}, answered "
                f"{answer['status']} {answer['applied_kw']}"
            )
            break
    log = pd.read_csv(work / "logs" / f"{AGENT_ID}_log.csv")
    if log["step"].tolist() != list(range(1, len(log) + 1)):
        problems.append(f"the step log's steps are not 1..{len(log)} once each")
    applied = sum(1 for a in ledger.answers.values() if a["status"] in ("applied", "partial") and a["applied_kw"] > 0)
    if int(log["commands"].sum()) != applied:
        problems.append(
            f"the step log counts {int(log['commands'].sum())} applied commands, the clients were told {applied}"
        )
    return problems


def report(
    console: Console,
    args: argparse.Namespace,
    tallies: dict[str, Tally],
    ledger: Ledger,
    elapsed_s: float,
    problems: list[str],
    log_rows: int,
) -> None:
    table = Table(title=f"home agent under load: {args.clients} clients, {elapsed_s:.1f} s, loopback")
    for column in ("endpoint", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"):
        table.add_column(column, justify="left" if column == "endpoint" else "right", no_wrap=True)
    for name, tally in tallies.items():
        if not tally.latencies_ms and not tally.errors:
            continue
        latencies = np.array(tally.latencies_ms) if tally.latencies_ms else np.array([np.nan])
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        table.add_row(
            name,
            f"{len(tally.latencies_ms):,}",
            f"{len(tally.latencies_ms) / elapsed_s:,.0f}",
            f"{p50:.1f}",
            f"{p95:.1f}",
            f"{p99:.1f}",
            f"{latencies.max():.1f}",
            str(sum(tally.errors.values())),
        )
    console.print(table)
    answers = Table(title="/curtail answers and what the agent recorded")
    answers.add_column("what")
    answers.add_column("count", justify="right")
    for status in ("applied", "partial", "rejected"):
        answers.add_row(f"new commands answered {status}", f"{ledger.statuses[status]:,}")
    answers.add_row("duplicates sent", f"{ledger.duplicates_sent:,}")
    answers.add_row("duplicates answered duplicate", f"{ledger.duplicates_answered:,}")
    answers.add_row("duplicates answered with another applied_kw", f"{ledger.duplicate_mismatches:,}")
    answers.add_row("steps logged", f"{log_rows:,}")
    answers.add_row("recorded exactly once (SQLite commands, step log)", "yes" if not problems else "NO")
    console.print(answers)
    for tally_name, tally in tallies.items():
        for kind, count in tally.errors.items():
            console.print(f"[red]error[/]: {tally_name}: {kind} x{count}")
    for problem in problems:
        console.print(f"[red]problem[/]: {problem}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", type=int, default=16, help="concurrent clients, one httpx.AsyncClient each (default 16)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to drive the agent (default 10)")
    parser.add_argument(
        "--status-share", type=float, default=0.5, help="share of requests that are GET /status (default 0.5)"
    )
    parser.add_argument(
        "--duplicate-share",
        type=float,
        default=0.05,
        help="share of /curtail requests that repeat an earlier body (default 0.05)",
    )
    parser.add_argument(
        "--step-every", type=float, default=1.0, help="seconds between POST /simulate; 0 = step once only (default 1)"
    )
    parser.add_argument("--start", default="2025-07-15T12:00", help="simulated start (default a summer noon)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 300):
        parser.error("--clients must be 1-256 and --seconds 0-300")

    console = Console(width=None if sys.stdout.isatty() else 110)  # a pipe gets the whole table, not 80 columns
    work = Path(tempfile.mkdtemp(prefix="ems-load-"))
    port = free_port()
    url = f"http://{HOST}:{port}"
    process = start_agent(work, port, args.start)
    try:
        wait_healthy(url, process)
        first = httpx.post(f"{url}/simulate", timeout=5.0)
        first.raise_for_status()
        tallies, ledger, elapsed_s = asyncio.run(drive(url, args))
    finally:
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            console.print("[red]the agent did not stop within 10 s of SIGTERM[/]")
    stop_s = time.monotonic() - stopped
    problems = check(work, ledger)
    if process.returncode not in (0, -signal.SIGTERM):
        problems.append(f"the agent exited with {process.returncode}")
    if stop_s > 5.0:
        problems.append(f"the agent took {stop_s:.1f} s to stop")
    log_rows = len(pd.read_csv(work / "logs" / f"{AGENT_ID}_log.csv"))
    report(console, args, tallies, ledger, elapsed_s, problems, log_rows)
    errors = sum(sum(t.errors.values()) for t in tallies.values())
    console.print(f"agent stopped cleanly in {stop_s:.2f} s; files in {work}")
    return (
        1
        if errors or problems or ledger.duplicate_mismatches or ledger.duplicates_answered != ledger.duplicates_sent
        else 0
    )


if __name__ == "__main__":
    raise SystemExit(main())
