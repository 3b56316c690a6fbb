"""Client CPU per call to agents, httpx against aiohttp, side by side: python bench/peer_client.py.

Starts the seed's three agents, then times rounds of two concurrent /batch/simulate calls (what
the grid agent's step phase does) with each client in turn, alternating to share the noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _agents import seed_agents


async def with_httpx(urls: list[tuple[str, dict]], rounds: int) -> tuple[float, float]:
    async with httpx.AsyncClient() as client:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*(client.post(u, json=b) for u, b in urls))
        return (time.perf_counter() - wall) / rounds * 1000, (time.process_time() - cpu) / rounds * 1000


async def with_aiohttp(urls: list[tuple[str, dict]], rounds: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def one(url: str, body: dict) -> bytes:
            async with session.post(
                url, data=json.dumps(body), headers={"Content-Type": "application/json"}
            ) as response:
                return await response.read()

        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*(one(u, b) for u, b in urls))
        return (time.perf_counter() - wall) / rounds * 1000, (time.process_time() - cpu) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"httpx": [], "aiohttp": []}
    with seed_agents() as (grid, _, _):
        base = int(grid.rsplit(":", 1)[1])
        urls = [
            (f"http://127.0.0.1:{base + 1}/batch/simulate", {"agent_ids": ["home_1"]}),
            (f"http://127.0.0.1:{base + 2}/batch/simulate", {"agent_ids": ["battery_agent_1"]}),
        ]
        for _ in range(args.repeats):
            for name, run in (("httpx", with_httpx), ("aiohttp", with_aiohttp)):
                asyncio.run(run(urls, 50))  # warm up the connections
                results[name].append(asyncio.run(run(urls, args.rounds)))
    table = Table(
        title=f"Two concurrent /batch/simulate calls, {args.rounds} rounds x {args.repeats} repeats (medians)"
    )
    for column in ("client", "wall ms per round", "client CPU ms per round", "CPU ratio to aiohttp"):
        table.add_column(column, justify="right")
    cpu_aiohttp = statistics.median(c for _, c in results["aiohttp"])
    for name, runs in results.items():
        wall, cpu = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        table.add_row(name, f"{wall:.2f}", f"{cpu:.2f}", f"{cpu / cpu_aiohttp:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
