"""End to end: the dashboard in headless Chromium (Debian's, driven by Playwright) against the real agent scripts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest import approx

from tests.test_e2e import HOST, REGISTER_TIMEOUT_S, ROOT, coordinate, free_port, registered, spawn, wait_until  # noqa: F401 (spawn is a fixture)

pytestmark = pytest.mark.e2e

#: Debian's Chromium (apt-get install chromium chromium-driver; .ci/run does it).
#: Playwright's own browser download is not used.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; the test skips, saying why, where it cannot be launched."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed: pip install -r requirements.txt")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver (.ci/run installs it)")
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(
                executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")), args=CHROMIUM_ARGS
            )
        except Error as exc:
            pytest.skip(f"Chromium is installed but cannot be launched here: {str(exc).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


def number(page: Any, selector: str) -> float:
    return float(page.inner_text(selector))


def expect(locator: Any) -> Any:
    """Playwright's auto-waiting assertions (which, unlike wait_for_function, need no eval the page's CSP forbids)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_dashboard_shows_live_numbers_that_match_status(spawn, browser, tmp_path):
    grid_port = free_port()
    grid = spawn(
        "grid_agent_server.py", "--planner", "ai", port=grid_port
    )  # no OpenAI key here: it falls back, and says why
    device_flags = (
        "--grid-url",
        f"http://{HOST}:{grid_port}",
        "--heartbeat-s",
        "0.5",
        "--fresh",
        "--start",
        "2025-07-15T17:00",
    )
    home = spawn("home_agent_server.py", *device_flags)
    battery = spawn("battery_agent_server.py", *device_flags)
    for agent in (grid, home, battery):
        agent.wait_healthy()
    assert wait_until(lambda: registered(grid, "home_1", "battery_agent_1"), REGISTER_TIMEOUT_S)
    for _ in range(3):
        coordinate(grid)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    elsewhere: list[str] = []
    errors: list[str] = []
    page.on(
        "request", lambda request: None if request.url.startswith(grid.url + "/") else elsewhere.append(request.url)
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{grid.url}/dashboard?poll_ms=200")
    expect(page.locator("body")).to_have_attribute("data-cycle", "3", timeout=WAIT_MS)

    status = httpx.get(f"{grid.url}/status", timeout=5).json()
    assert page.inner_text("#cycle") == str(status["last_cycle"]["cycle"]) == "3"
    assert page.inner_text("#planner") == status["planner"] == "ai"
    last = status["last_cycle"]
    assert page.inner_text("#last-planner") == last["planner"] == "optimal"
    assert page.inner_text("#fallback-reason") == last["fallback_reason"] == "OPENAI_API_KEY is not set"
    expect(page.locator("#ai-card")).to_be_visible()
    assert page.inner_text("#ai").count("fallbacks") == 2  # the count, and the count by reason
    assert page.inner_text("#agents-healthy") == str(status["agents_healthy"]) == "2"
    for t in status["transformers"]:
        tid = t["transformer_id"]
        assert number(page, f"#loading-{tid}") == approx(t["loading_after_kw"], abs=0.005)
        assert number(page, f"#loading-before-{tid}") == approx(t["loading_before_kw"], abs=0.005)
        assert number(page, f"#rating-{tid}") == approx(t["rating_kw"], abs=0.05)
        assert page.inner_text(f"#state-{tid}") == t["state_after"].replace("_", " ")
    soc = httpx.get(f"{battery.url}/status", timeout=5).json()["battery"]["soc_fraction"]
    assert page.inner_text("#soc-battery_agent_1") == f"{100 * soc:.1f} %"
    actions = status["last_cycle"]["actions"]
    assert page.locator("#actions tr").count() == max(len(actions), 1)
    if actions:
        assert actions[0]["agent_id"] in page.inner_text("#actions")
    # plotly drew one chart per transformer (loading, without coordination, rating, -reverse limit) and the SoC chart
    expect(page.locator("#chart-T1 .scatterlayer .trace")).to_have_count(4, timeout=WAIT_MS)
    expect(page.locator("#soc-chart .scatterlayer .trace")).to_have_count(2, timeout=WAIT_MS)

    result = coordinate(grid)  # the page follows the next cycle by itself
    expect(page.locator("body")).to_have_attribute("data-cycle", "4", timeout=WAIT_MS)
    (t,) = result["transformers"]
    assert page.inner_text("#cycle") == "4"
    assert number(page, "#loading-T1") == approx(t["loading_after_kw"], abs=0.005)
    assert page.inner_text("#sim-time") == result["timestamp"].replace("T", " ")[:16]
    expect(page.locator("#chart-T1 .scatterlayer .trace:first-child .points path")).to_have_count(
        4, timeout=WAIT_MS
    )  # the loading line's markers

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 20_000
    assert elsewhere == [], f"the page asked other hosts: {elsewhere}"
    assert errors == [], f"the page logged errors: {errors}"
    assert page.inner_text("#connection") == "live"


def test_dashboard_draws_the_network_of_a_network_run(browser, tmp_path):
    pytest.importorskip("pandapower", reason="--network needs pandapower: pip install -r requirements.txt")
    from tests.test_e2e import child_env, coordinator_command, free_port_block, stop
    from tests.test_network import RURAL1, RURAL1_PEAK_PV

    base = free_port_block(4)
    flags = ["--network", RURAL1, "--start", RURAL1_PEAK_PV, "--cycles", "2", "--interval", "0"]
    output = (tmp_path / "coordinator.out").open("w", encoding="utf-8")
    coordinator = subprocess.Popen(
        coordinator_command(tmp_path, base, *flags),
        cwd=ROOT,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )
    grid_url = f"http://{HOST}:{base}"

    def two_cycles() -> bool:
        try:
            last = httpx.get(f"{grid_url}/status", timeout=2).json()["last_cycle"]
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return last is not None and last["cycle"] == 2

    try:
        assert wait_until(two_cycles, 180), (tmp_path / "coordinator.out").read_text()[-2000:]
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{grid_url}/dashboard?poll_ms=200")
        expect(page.locator("body")).to_have_attribute("data-cycle", "2", timeout=WAIT_MS)
        expect(page.locator("#network-card")).to_be_visible()
        report = httpx.get(f"{grid_url}/status", timeout=5).json()["last_cycle"]["network"]
        assert number(page, "#vm-max-before") == approx(report["vm_max_pu_before"], abs=5e-5)
        assert number(page, "#vm-min-after") == approx(report["vm_min_pu_after"], abs=5e-5)
        assert page.inner_text("#network-name") == RURAL1
        # the graph: 15 buses as markers; the profile: a feeder to the highest and one to the lowest voltage, each
        # with its limit; the band over time: lowest and highest, before and after
        expect(page.locator("#network-graph .scatterlayer .trace:last-child .points path")).to_have_count(
            15, timeout=WAIT_MS
        )
        expect(page.locator("#voltage-profile .scatterlayer .trace")).to_have_count(4, timeout=WAIT_MS)
        expect(page.locator("#voltage-band .scatterlayer .trace")).to_have_count(4, timeout=WAIT_MS)
        # 5 batteries: their names in a legend under the plot, not over it
        expect(page.locator("#soc-chart .legend .traces")).to_have_count(5, timeout=WAIT_MS)
        plot = page.locator("#soc-chart .nsewdrag").first.bounding_box()
        legend = page.locator("#soc-chart .legend").bounding_box()
        assert legend["y"] >= plot["y"] + plot["height"] - 1
        shot = tmp_path / "dashboard-network.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot}")
        assert errors == [], f"the page logged errors: {errors}"
    finally:
        stop(coordinator, grace_s=15)
        output.close()
