"""What a curator sees in the Dagster UI, driven in Debian's chromium against a real
``dagster dev`` (webserver + daemon) on a temporary instance holding a tiny synthetic sample.

The tests share one server (module fixture) and run in file order, each one self-sufficient:
the asset graph, a new region turning into a partition after a sensor tick, a materialization
of that region launched by clicking in the UI with its checks passing, and the broken region
r002 with its failed blocking checks and skipped downstream asset. Every assertion is made on
the rendered page; screenshots land in ``test-output/browser/``.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect

from fib_assets.defs.acquisitions.checks import SLICE_CONTINUITY, SOURCE_FILES_READABLE
from fib_assets_tests.browser.conftest import DagsterUI, save_screenshot, write_landing_region

# the tiny sample of fib_assets_tests/conftest.py (tiny_sample) lands r001 (clean) and r002
# (dropped slice + truncated file); the tests drop r003 (clean) while the server runs
CLEAN_REGION = "r001"
BROKEN_REGION = "r002"
NEW_REGION = "r003"
# a seed whose tiny clean region passes every image-quality check with a wide margin (with seed
# 5 the natural brightness trend of a 16-slice region is 0.12, above the 0.10 threshold)
NEW_REGION_SEED = 4
GROUP = "acquisitions"
REQUIRED_FAMILIES = {"acquisitions", "formats", "ground_truth", "benchmarks", "provenance"}

# the landing-zone sensor ticks every 30 s; a tick, the region's inventory and a loaded 2-core
# machine fit well inside this
SENSOR_TIMEOUT_S = 150
# one run takes ~30-40 s here (a subprocess per step); the UI's run can queue behind the
# sensor's runs (max_concurrent_runs: 1)
RUN_TIMEOUT_S = 300


def asset_families() -> dict[str, list[str]]:
    """Group name -> materializable asset names, from the code location's definitions."""
    from fib_assets.definitions import defs

    families: dict[str, list[str]] = defaultdict(list)
    for node in defs.resolve_asset_graph().asset_nodes:
        if node.is_materializable:
            families[node.group_name].append(node.key.to_user_string())
    return {g: sorted(a) for g, a in families.items()}


def checks_of(assets: list[str]) -> list[tuple[str, str]]:
    """(asset, check) for every check defined on ``assets``."""
    from fib_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    return sorted(
        (node.key.to_user_string(), key.name)
        for node in graph.asset_nodes
        if node.key.to_user_string() in assets
        for key in node.check_keys
    )


def visible_text(scope: Page | Locator, text: str | re.Pattern[str]) -> Locator:
    """Elements showing ``text`` (exact) that are visible: the UI renders truncated labels
    twice, a hidden copy for measuring and the visible one."""
    return scope.get_by_text(text, exact=True).filter(visible=True)


def reload_until_visible(
    page: Page, ui: DagsterUI, path: str, target: Locator, timeout_s: float, what: str
) -> None:
    """Open ``path`` and reload it until ``target`` shows: lists such as an asset's partitions
    are not pushed to an open page when the daemon changes them."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.goto(ui.url(path))
        try:
            expect(target.first).to_be_visible(timeout=5_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} not shown after {timeout_s:.0f}s; dagster dev log:\n{ui.log_tail()}"
                ) from None
            time.sleep(3)


def wait_for_partition(page: Page, ui: DagsterUI, asset: str, key: str, timeout_s: float) -> None:
    """Until the asset's Partitions tab lists partition ``key``."""
    path = f"/assets/{asset}?view=partitions"
    reload_until_visible(page, ui, path, visible_text(page, key), timeout_s, f"{asset}[{key}]")


def open_run(page: Page, ui: DagsterUI, run_prefix: str) -> None:
    """Open a run from the Runs list by its short id."""
    page.goto(ui.url("/runs"))
    page.get_by_role("link").filter(has_text=re.compile(rf"^{run_prefix}$")).first.click()
    page.wait_for_url(re.compile(rf"/runs/{run_prefix}"))


def open_latest_run_of_partition(page: Page, ui: DagsterUI, asset: str, partition: str) -> str:
    """Open the run of the latest materialization of ``asset``'s ``partition`` from the
    partition's page (the curator's path from an asset to what produced it)."""
    link = page.get_by_role("link").filter(has_text=re.compile(r"^[0-9a-f]{8}$"))
    path = f"/assets/{asset}?view=partitions&partition={partition}"
    reload_until_visible(page, ui, path, link, RUN_TIMEOUT_S, f"run of {asset}[{partition}]")
    short_id = link.first.inner_text().strip()
    open_run(page, ui, short_id)  # from the Runs list: the run page without a step filter
    return short_id


def wait_for_run_end(page: Page, ui: DagsterUI, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """Wait on an open run page until its status tag reads Success, Failure or Canceled."""
    status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).filter(visible=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            expect(status.first).to_be_visible(timeout=20_000)
            return status.first.inner_text().strip()
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run did not finish within {timeout_s:.0f}s; log:\n{ui.log_tail()}"
                ) from None
            page.reload()  # live updates can stall on a busy machine: reload to be sure


def filter_run_events(page: Page, query: str) -> None:
    box = page.get_by_placeholder(re.compile(r"^Filter"))
    box.fill(query)
    box.press("Enter")


@pytest.mark.browser
def test_asset_graph_shows_every_family_and_its_assets(dagster_ui: DagsterUI, page: Page) -> None:
    """The global lineage, all groups expanded, shows each asset family as a group holding
    exactly the assets the code location defines."""
    families = asset_families()
    assert set(families) >= REQUIRED_FAMILIES, sorted(families)

    # the whole graph (eight families) fits with readable labels when zoomed to fit
    page.set_viewport_size({"width": 2400, "height": 2000})
    expanded = ",".join(f"global@global:{g}" for g in sorted(families))
    page.goto(dagster_ui.url(f"/asset-groups?expanded={quote(expanded)}"))
    graph = page.locator("[data-svg-viewport]")
    expect(graph).to_be_visible(timeout=60_000)
    for group in families:
        expect(visible_text(graph, group).first).to_be_visible()
    # long names are middle-truncated in the nodes ("simul…_corrections"): every asset must show
    # as its name or as a truncation of exactly it
    shown = {t.strip() for t in graph.locator("div").filter(visible=True).all_inner_texts()}
    for assets in families.values():
        for asset in assets:
            assert asset in shown or any(
                "…" in t
                and asset.startswith(t.split("…")[0])
                and asset.endswith(t.split("…")[-1])
                and len(t) > 6
                for t in shown
            ), (asset, sorted(shown))
    page.get_by_role("button", name="Hide navigation").click()
    page.wait_for_timeout(1_000)  # the graph re-fits the wider canvas
    save_screenshot(page, "asset-graph", doc=True)


@pytest.mark.browser
def test_new_region_in_landing_zone_becomes_partition_after_sensor_tick(
    dagster_ui: DagsterUI, page: Page
) -> None:
    """A region folder dropped into the landing zone is listed as a partition of the raw
    assets once the landing_zone_sensor has ticked, and the sensor's page shows it."""
    # the sensor's first tick (at daemon start) adds the sample's regions
    wait_for_partition(page, dagster_ui, "raw_acquisition", CLEAN_REGION, SENSOR_TIMEOUT_S)
    expect(visible_text(page, BROKEN_REGION).first).to_be_visible()
    if not (dagster_ui.landing / NEW_REGION).exists():
        expect(visible_text(page, NEW_REGION)).to_have_count(0)

    write_landing_region(dagster_ui.landing, NEW_REGION, seed=NEW_REGION_SEED)
    wait_for_partition(page, dagster_ui, "raw_acquisition", NEW_REGION, SENSOR_TIMEOUT_S)
    save_screenshot(page, "new-region-partition")

    page.goto(dagster_ui.url("/locations/fib_assets/sensors/landing_zone_sensor"))
    # the cursor names the last regions the sensor turned into partitions
    expect(
        page.get_by_text(re.compile(rf'"last_added": \[[^\]]*"{NEW_REGION}"')).first
    ).to_be_visible()
    expect(page.get_by_text(re.compile(r"runs? requested")).first).to_be_visible()
    expect(page.get_by_text("Loading ticks")).to_have_count(0)
    save_screenshot(page, "landing-zone-sensor", doc=True)


@pytest.mark.browser
def test_materialize_new_region_from_ui_and_its_checks_pass(
    dagster_ui: DagsterUI, page: Page
) -> None:
    """Clicking Materialize on the acquisitions group with the new region selected launches
    one run; it succeeds, every check of raw_acquisition and raw_volume passes, and the
    region's raw_volume partition shows that run's materialization."""
    write_landing_region(dagster_ui.landing, NEW_REGION, seed=NEW_REGION_SEED)
    wait_for_partition(page, dagster_ui, "raw_volume", NEW_REGION, SENSOR_TIMEOUT_S)
    group_assets = asset_families()[GROUP]

    page.goto(dagster_ui.url(f"/locations/fib_assets/asset-groups/{GROUP}"))
    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"materialize {len(group_assets)} assets")).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(NEW_REGION)
    page.get_by_role("menuitem").filter(has_text=re.compile(rf"^{NEW_REGION}")).click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the partition menu
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    save_screenshot(page, "materialize-dialog", doc=True)
    dialog.get_by_role("button", name="Launch 1 run").click()

    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}"))
    expect(toast.first).to_be_visible()
    run_prefix = re.search(r"[0-9a-f]{8}", toast.first.inner_text()).group(0)

    open_run(page, dagster_ui, run_prefix)
    expect(page.get_by_text(f"partition: {NEW_REGION}").first).to_be_visible()
    status = wait_for_run_end(page, dagster_ui)
    assert status == "Success", f"run {run_prefix} ended {status}:\n{dagster_ui.log_tail()}"
    expected = checks_of(group_assets)
    assert expected, f"no checks defined on {group_assets}"
    page.set_viewport_size({"width": 1400, "height": 2000})  # every check event in view
    filter_run_events(page, "type:ASSET_CHECK_EVALUATION")
    for asset, check in expected:
        line = f"Check {check} succeeded for materialization of {asset}"
        expect(page.get_by_text(re.compile(rf"^{line}\.?$")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Check \w+ failed for"))).to_have_count(0)
    save_screenshot(page, "checks-passed", doc=True)

    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(dagster_ui.url(f"/assets/raw_volume?view=partitions&partition={NEW_REGION}"))
    expect(visible_text(page, "Materialized").first).to_be_visible()
    expect(page.get_by_text(run_prefix).first).to_be_visible()
    save_screenshot(page, "new-region-materialized")


@pytest.mark.browser
def test_broken_region_shows_failed_blocking_checks_and_skipped_downstream(
    dagster_ui: DagsterUI, page: Page
) -> None:
    """The sensor's run of r002 (dropped slice, truncated file) fails: the blocking checks
    slice_continuity and source_files_readable fail on raw_acquisition, raw_volume is not
    executed, and raw_volume's r002 partition says that run did not materialize it."""
    wait_for_partition(page, dagster_ui, "raw_acquisition", BROKEN_REGION, SENSOR_TIMEOUT_S)
    run_id = open_latest_run_of_partition(page, dagster_ui, "raw_acquisition", BROKEN_REGION)
    status = wait_for_run_end(page, dagster_ui)
    assert status == "Failure", f"the broken region's run {run_id} ended {status}"
    expect(page.get_by_text(re.compile(r"blocking asset checks failed")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Not executed \(\d+\)$")).first).to_be_visible()
    save_screenshot(page, "broken-region-run", doc=True)

    filter_run_events(page, "type:ASSET_CHECK_EVALUATION")
    for check in (SLICE_CONTINUITY, SOURCE_FILES_READABLE):
        line = f"Check {check} failed for materialization of raw_acquisition"
        expect(page.get_by_text(re.compile(rf"^{line}\.?$")).first).to_be_visible()
    save_screenshot(page, "broken-region-checks")

    filter_run_events(page, "step:raw_volume")
    expect(
        page.get_by_text(re.compile(r"Dependencies for step raw_volume failed.*Not executing"))
    ).to_be_visible()

    # the downstream asset's partition says why it is not there
    page.goto(dagster_ui.url(f"/assets/raw_volume?view=partitions&partition={BROKEN_REGION}"))
    expect(page.get_by_text("did not materialize this asset").first).to_be_visible()
    expect(page.get_by_text(run_id).first).to_be_visible()
    save_screenshot(page, "broken-region-raw-volume", doc=True)

    page.goto(dagster_ui.url("/assets/raw_acquisition?view=checks&checkDetail=slice_continuity"))
    expect(page.get_by_text("blocking", exact=True).first).to_be_visible()
    page.get_by_role("tab", name="Partitions").last.click()
    expect(page.get_by_text(re.compile(r"^Failed \(1\)$")).first).to_be_visible()
    save_screenshot(page, "broken-region-check-partitions")
