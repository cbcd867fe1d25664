"""A pair built from four days of the mini catalog, then a day appended and its chunks
refreshed: made once per session for the tests of planning and reuse, which read it only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.merge import MergeReport
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import Warehouses
from bqx_assets_tests.core.merge.helpers import DAY, PAIR, copy_tree, merge_pair, refresh

WAREHOUSE_START = datetime(2024, 1, 30, tzinfo=UTC)
"""A Tuesday: two days of January, then February (Thursday 1 to Sunday 4, Monday 5 appended)."""


@dataclass(frozen=True)
class Appended:
    """Checkpoint roots and training files of the pair before and after a day was appended."""

    catalog: Catalog
    before: Path
    """The checkpoint root refreshed from the four days."""
    first: Path
    """The training file merged from `before`."""
    first_report: MergeReport
    after: Path
    """A copy of `before` refreshed after Monday, February 5 was appended."""
    scratch: Path
    """The training file of the five days merged from a root refreshed from scratch."""
    scratch_report: MergeReport

    def storage(self) -> LocalStorage:
        """The refreshed root (read only: a test that changes it works on a copy)."""
        return LocalStorage(self.after, durable=False)


def four_days(warehouses: Warehouses, catalog: Catalog, dest: Path) -> Path:
    """A private copy of the pair's warehouse: Tuesday, January 30 to Saturday, February 3
    (four trading days)."""
    return warehouses.copy(dest, catalog, pairs=(PAIR,), rows=4 * DAY, start=WAREHOUSE_START)


@pytest.fixture(scope="session")
def appended(
    tmp_path_factory: pytest.TempPathFactory,
    warehouses: Warehouses,
    mini: tuple[Catalog, Path],
) -> Appended:
    catalog, _ = mini
    root = tmp_path_factory.mktemp("appended")
    path = four_days(warehouses, catalog, root / "w.duckdb")
    wh = EmbeddedWarehouse(path, read_only=False)
    try:
        storage = refresh(wh, catalog, root / "before")
        first = merge_pair(storage, catalog, root / "first.parquet")
        copy_tree(root / "before", root / "after")
        wh.append(DAY)  # Monday, February 5
        refresh(wh, catalog, root / "after")
        scratch = merge_pair(
            refresh(wh, catalog, root / "scratch"), catalog, root / "scratch.parquet"
        )
    finally:
        wh.close()
    return Appended(
        catalog, root / "before", root / "first.parquet", first, root / "after",
        root / "scratch.parquet", scratch,
    )  # fmt: skip
