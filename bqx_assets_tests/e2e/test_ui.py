"""The Dagster UI in headless Chromium: asset graph, the training file's partitions and checks,
and the gate view of every pair after one pair's build failed its gate."""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.defs.assets import PAIR_FAMILIES, SHARED_FAMILIES
from bqx_assets_tests.e2e.conftest import ARTIFACTS, BIN, PAIRS, Backfill, Deployment

# Setup (warehouse, shared checkpoints, servers, backfill) runs inside the first test's limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 120_000  # the UI loads slowly on a busy 2-core machine


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (scripts/install_browser.sh)")
    with sync_api.sync_playwright() as playwright:
        # Debian's Chromium: Playwright never downloads a browser here.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _shoot(page: Any, shot: str, expect: list[str]) -> str:
    """Wait until every text in `expect` shows, screenshot the page; the page's text."""
    for text in expect:
        page.get_by_text(text, exact=False).first.wait_for(state="visible")
    page.wait_for_timeout(2000)  # let the remaining status queries settle for the screenshot
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    return page.inner_text("body")


def _open(page: Any, url: str, shot: str, expect: list[str]) -> str:
    page.goto(url, wait_until="domcontentloaded")
    return _shoot(page, shot, expect)


def test_asset_graph_shows_the_training_group(
    deployment: Deployment, backfill: Backfill, page: Any
) -> None:
    # The node's check summary comes from a query of its own, after the graph is drawn: waited
    # for (up to TIMEOUT_MS), not assumed within the settle time.
    passed = f"{len(CHECK_NAMES)} / {len(CHECK_NAMES)} Passed"
    body = _open(
        page,
        f"{deployment.url}/locations/bqx_assets/asset-groups/training",
        "ui-asset-graph.png",
        ["training_file", passed],
    )
    assert "training_file" in body
    # The groups upstream of the training file are drawn collapsed, by name (those in view: the
    # page draws only the nodes inside its viewport).
    drawn = [g for g in (*PAIR_FAMILIES, *SHARED_FAMILIES) if f"\n{g}\n" in body]
    assert len(drawn) >= 10, drawn
    assert passed in body


def test_partitions_page_lists_the_built_pairs(
    deployment: Deployment, backfill: Backfill, page: Any
) -> None:
    body = _open(
        page,
        f"{deployment.url}/assets/training_file?view=partitions",
        "ui-training-file-partitions.png",
        list(PAIRS),
    )
    for pair in PAIRS:
        assert pair in body
    assert "Materialized (3)" in body and "Missing (25)" in body  # 28 pairs, 3 built
    page.get_by_text(PAIRS[0], exact=True).first.click()
    detail = _shoot(page, "ui-training-file-partition-eurusd.png", ["size_mb"])
    assert PAIRS[0] in detail and "dagster/row_count" in detail and "passed" in detail


def test_checks_tab_lists_every_gate_check(
    deployment: Deployment, backfill: Backfill, page: Any
) -> None:
    body = _open(
        page,
        f"{deployment.url}/assets/training_file?view=checks",
        "ui-training-file-checks.png",
        list(CHECK_NAMES),
    )
    for name in CHECK_NAMES:
        assert name in body
    assert body.count("Succeeded") >= len(CHECK_NAMES)
    # One check's result per pair.
    page.get_by_text("row_count", exact=True).first.click()
    page.get_by_text("Partitions", exact=True).last.click()
    per_pair = _shoot(page, "ui-training-file-check-partitions.png", list(PAIRS))
    for pair in PAIRS:
        assert pair in per_pair
    assert f"Passed ({len(PAIRS)})" in per_pair and "Failed (0)" in per_pair


# -- the gate view: runs last, after the pages above saw every pair pass ----------------------
FAULTY_PAIR = "usdjpy"
FAULT = f"leak:regime_bqx_{FAULTY_PAIR}_45"
"""A target of usdjpy written under a feature's name in one of its tables: no_target_leakage
fails for usdjpy alone."""
VIEW_TIMEOUT_S = 600

LATEST_VIEW = """{ assetOrError(assetKey: {path: ["gate_summary"]}) {
  ... on Asset { assetMaterializations(limit: 1) { runId timestamp } } } }"""


def _latest_view(deployment: Deployment) -> dict[str, Any] | None:
    found = deployment.graphql(LATEST_VIEW)["assetOrError"]["assetMaterializations"]
    return found[0] if found else None


@pytest.fixture(scope="module")
def faulty_build(deployment: Deployment, backfill: Backfill) -> dict[str, Any]:
    """The three pairs built; then usdjpy rebuilt from a warehouse with a target leaked into one
    of its tables (the same warehouse, seed and rows otherwise), as the materialize button or a
    one-pair backfill would; then the gate view as the daemon's view sensor rebuilt it."""
    from bqx_assets_tests.e2e.conftest import ROWS, launch_backfill, wait_for_backfill

    warehouse = Path(deployment.env["BQX_WAREHOUSE_PATH"])
    faulty = deployment.root / "faulty.duckdb"
    deployment.run(
        str(BIN / "bqx"), "warehouse", "create", "--rows", str(ROWS),
        "--pairs", ",".join(PAIRS), "--path", str(faulty),
        "--start", "2024-01-01T08:00", "--fault", FAULT,
    )  # fmt: skip
    shutil.copy(faulty, warehouse)  # no run is reading it: the backfill is over
    state = wait_for_backfill(deployment, launch_backfill(deployment, [FAULTY_PAIR]))
    (run,) = state["runs"]
    assert run["status"] == "FAILURE", state  # its blocking gate check failed the run
    deadline = time.monotonic() + VIEW_TIMEOUT_S
    while time.monotonic() < deadline:
        view = _latest_view(deployment)
        if view and int(view["timestamp"]) / 1000 > float(run["endTime"]):
            return {"run": run, "view": view}
        time.sleep(5)
    raise AssertionError(f"gate_summary was not rebuilt after {FAULTY_PAIR}'s run: {view}")


def test_the_gate_view_shows_the_failing_pair_first_with_its_check_and_reason(
    deployment: Deployment, faulty_build: dict[str, Any], page: Any
) -> None:
    body = _open(
        page,
        f"{deployment.url}/assets/gate_summary",
        "ui-gate-summary.png",
        ["gate_summary", "pairs_failing"],
    )
    assert "pairs_failing" in body
    markdown = page.get_by_text("[Show Markdown]")
    if markdown.count():  # a long markdown value opens in a dialog
        markdown.first.click()
    _shoot(page, "ui-gate-summary-table.png", ["no_target_leakage", FAULTY_PAIR])
    # The gate table alone: the page behind a dialog also shows the frame's own table (a row
    # per pair, a column per check), which names no check in its rows.
    view = page.locator("table").filter(has_text="failed checks: why").first.inner_text()
    rows = [line for line in view.splitlines() if line.strip().startswith(PAIRS)]
    assert rows, view
    first = rows[0]
    assert first.startswith(FAULTY_PAIR) and "FAILED" in first, rows
    # The check, and why: the column that looks like a target, named.
    assert "no_target_leakage" in first and "regime_bqx_45__" in first, first
    assert all("passed" in row for row in rows[1:]), rows


def test_the_training_file_page_of_the_failing_pair_shows_its_gate(
    deployment: Deployment, faulty_build: dict[str, Any], page: Any
) -> None:
    _open(
        page,
        f"{deployment.url}/assets/training_file?view=partitions",
        "ui-training-file-partitions-after-fault.png",
        list(PAIRS),
    )
    page.get_by_text(FAULTY_PAIR, exact=True).first.click()
    body = _shoot(page, "ui-training-file-failing-pair.png", ["quarantined"])
    # The materialization's few keys: its status and the gate's verdict naming the check.
    assert "quarantined" in body and "FAILED: no_target_leakage" in body
