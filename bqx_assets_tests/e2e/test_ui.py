"""The Dagster UI in headless Chromium: asset graph, the training file's partitions and checks."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets_tests.e2e.conftest import ARTIFACTS, PAIRS, Backfill, Deployment

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
    body = _open(
        page,
        f"{deployment.url}/locations/bqx_assets/asset-groups/training",
        "ui-asset-graph.png",
        ["training_file"],
    )
    assert "training_file" in body
    # The groups upstream of the training file are drawn collapsed, by name.
    assert "lag" in body and "mkt" in body
    assert f"{len(CHECK_NAMES)} / {len(CHECK_NAMES)} Passed" in body


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
    detail = _shoot(page, "ui-training-file-partition-eurusd.png", ["rows"])
    assert PAIRS[0] in detail


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
