"""A real ``dagster dev`` (webserver + daemon) on a temporary instance and data folder, and
Debian's chromium driven by Playwright, for the browser tests.

The server is started once per module on 127.0.0.1:<free port> in its own process group and
stopped by that group's id only. Screenshots go to ``test-output/browser/`` (git-ignored);
``UPDATE_SCREENSHOTS=1`` also refreshes the committed ``docs/screenshots/*.png``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fib_assets_tests.conftest import REPO, TINY_SHAPE

OUTPUT_DIR = REPO / "test-output" / "browser"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = Path(os.environ.get("FIB_ASSETS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOOPBACK = "127.0.0.1"
# the first load of the code location (torch, tensorstore, great-expectations) takes 10-20 s
# here; a busy 2-core machine can take several times that
SERVER_START_TIMEOUT_S = 180
# committed screenshots stay small enough to review in a diff
MAX_DOC_PNG_BYTES = 300_000
# schedules that could enqueue heavy runs ahead of the test's runs if a test session happened
# to cross their cron time (nightly 02:00 UTC, weekly fixity); the tests exercise the sensor
SCHEDULES_TO_PAUSE = ("nightly_region_backfill", "fixity_schedule", "package_fixity_schedule")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class DagsterUI:
    """A running ``dagster dev``: where to browse, and the folders it works on."""

    base_url: str
    dagster_home: Path
    data_dir: Path
    log_path: Path

    @property
    def landing(self) -> Path:
        return self.data_dir / "landing"

    def url(self, path: str) -> str:
        return self.base_url + path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST to the webserver's GraphQL endpoint (set-up and launches only: assertions
        about what a curator sees are made on the rendered page)."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(
            self.url("/graphql"), data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


WORKSPACE_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""
SCHEDULES_QUERY = """
{ schedulesOrError(repositorySelector: {repositoryLocationName: "fib_assets",
                                        repositoryName: "__repository__"}) {
    __typename ... on Schedules { results { name id scheduleState { status } } } } }
"""
STOP_SCHEDULE = """
mutation($id: String) { stopRunningSchedule(id: $id) { __typename
    ... on PythonError { message } } }
"""


def _wait_until_ready(ui: DagsterUI, proc: subprocess.Popen[bytes]) -> None:
    """Until the webserver answers ``/server_info`` and the code location ``fib_assets`` is
    loaded (the webserver answers before its code server has imported the definitions)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}:\n{ui.log_tail()}")
        if _http_ok(ui.url("/server_info")):
            entries = ui.graphql(WORKSPACE_QUERY)["workspaceOrError"].get("locationEntries", [])
            loaded = {e["name"]: e for e in entries if e["loadStatus"] == "LOADED"}
            location = loaded.get("fib_assets", {}).get("locationOrLoadError") or {}
            if location.get("__typename") == "PythonError":
                pytest.fail(f"code location fib_assets failed to load: {location['message']}")
            if location.get("__typename") == "RepositoryLocation":
                return
        time.sleep(1)
    pytest.fail(f"dagster dev not ready after {SERVER_START_TIMEOUT_S}s:\n{ui.log_tail()}")


def _stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """Stop ``dagster dev`` and everything it started. Its process group id is its pid
    (start_new_session=True), so nothing outside the group is touched: SIGINT to dagster dev
    (it stops webserver and daemon within seconds), then SIGKILL to what is left of the group
    (its code servers otherwise linger until their heartbeat times out; run workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory, tiny_sample) -> Iterator[DagsterUI]:
    """``dagster dev -w workspace.yaml`` on a temporary DAGSTER_HOME (the repo's dagster.yaml)
    and a temporary FIB_ASSETS_DATA whose landing zone holds the tiny sample: r001 (clean) and
    r002 (dropped slice + truncated file). The landing-zone sensor (running by default) adds
    both as partitions and launches their runs on its first tick."""
    base = tmp_path_factory.mktemp("browser")
    home = base / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    data = base / "data"
    shutil.copytree(tiny_sample / "landing", data / "landing")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for stale in OUTPUT_DIR.glob("FAILED-*.png"):
        stale.unlink()
    log_path = base / "dagster-dev.log"

    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FIB_ASSETS_DATA": str(data),
        "PYTHONUNBUFFERED": "1",
    }
    dagster = Path(sys.executable).parent / "dagster"
    cmd = [str(dagster), "dev", "-w", "workspace.yaml", "-h", LOOPBACK, "-p", str(port)]
    ui = DagsterUI(f"http://{LOOPBACK}:{port}", home, data, log_path)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stopped by its id, nothing else
        )
    try:
        _wait_until_ready(ui, proc)
        # no "join the community" dialog over the pages (the webserver remembers it per home)
        ui.graphql("mutation { setNuxSeen }")
        schedules = ui.graphql(SCHEDULES_QUERY)["schedulesOrError"].get("results", [])
        for s in schedules:
            if s["name"] in SCHEDULES_TO_PAUSE and s["scheduleState"]["status"] == "RUNNING":
                ui.graphql(STOP_SCHEDULE, {"id": s["id"]})
        yield ui
    finally:
        _stop_process_group(proc)
        if log_path.exists():
            shutil.copyfile(log_path, OUTPUT_DIR / "dagster-dev.log")


def write_landing_region(landing: Path, region: str, *, seed: int) -> Path:
    """A clean tiny region written into the landing zone as the microscope would: the .dat
    slices first, region.yaml last (the sensor ignores the folder until then)."""
    from fib_assets.core.acquisition.synthetic import SyntheticSample, write_region

    region_dir = landing / region
    if not (region_dir / "region.yaml").exists():
        write_region(
            region_dir, SyntheticSample(TINY_SHAPE, seed=seed), region=region, sample_id="synthcell"
        )
    return region_dir


# -- browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, through Playwright's own driver (no browser download)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (make system-deps)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture()
def page(browser, request) -> Iterator[Any]:
    """A fresh browser page (1400×900, UTC clock); on failure its screenshot is kept in
    ``test-output/browser/FAILED-<test>.png``."""
    from playwright.sync_api import expect

    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, timezone_id="UTC", locale="en-US"
    )
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    expect.set_options(timeout=30_000)
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
            try:
                pg.screenshot(path=str(OUTPUT_DIR / f"FAILED-{request.node.name}.png"))
            except Exception as exc:  # a crashed page must not hide the test's own failure
                print(f"no failure screenshot: {exc}")
        context.close()


def save_screenshot(page: Any, name: str, *, doc: bool = False, full_page: bool = False) -> Path:
    """``test-output/browser/<name>.png``; with ``doc=True`` and ``UPDATE_SCREENSHOTS=1`` also
    ``docs/screenshots/<name>.png``, palette-quantized (and downscaled if needed) below
    300 KB. Returns the test-output path."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUTPUT_DIR / f"{name}.png"
    # let charts and lazily loaded panels finish drawing (the UI polls every 2 s, so the
    # network goes idle between polls)
    with contextlib.suppress(Exception):
        page.wait_for_load_state("networkidle", timeout=5_000)
    page.wait_for_timeout(500)
    png = page.screenshot(full_page=full_page)
    out.write_bytes(png)
    if doc and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (DOCS_SCREENSHOTS / f"{name}.png").write_bytes(small_png(png))
    return out


def small_png(png: bytes, max_bytes: int = MAX_DOC_PNG_BYTES) -> bytes:
    """The screenshot as a 256-colour PNG (UI screenshots lose nothing visible), halved in
    size until it is under ``max_bytes``."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        buf = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            buf, format="PNG", optimize=True
        )
        if buf.tell() < max_bytes or img.width < 400:
            return buf.getvalue()
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS)
