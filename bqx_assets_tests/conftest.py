"""Shared fixtures: a small production-shaped catalog and an embedded warehouse built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog

# Nothing in the suite may look for the cloud metadata server.
os.environ.setdefault("NO_GCE_CHECK", "True")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

MINI_PAIRS = ("eurusd", "gbpusd")


def mini_catalog(pairs: tuple[str, ...] = MINI_PAIRS) -> Catalog:
    """The production catalog cut to a few tables of every family and scope for `pairs`:
    pair tables incl. base_bqx (with its leaked target columns) and div (BOOL), a corr table,
    a cov table shared by the two pairs, a cov table of each with another partner, and shared
    tri, mkt (STRING), var and csi tables."""
    full = Catalog.load().subset(pairs)
    keep: list[str] = []
    for pair in pairs:
        keep += [
            f"agg_{pair}", f"div_bqx_{pair}", f"base_bqx_{pair}", f"base_idx_{pair}",
            f"lag_{pair}_45", f"regime_{pair}_45", f"corr_etf_idx_{pair}_spy", f"tmp_{pair}",
        ]  # fmt: skip
    keep += ["cov_agg_eurusd_gbpusd", "cov_lag_eurgbp_eurusd", "cov_regime_gbpjpy_gbpusd"]
    keep += ["tri_agg_bqx_eur_usd_gbp", "mkt_sentiment", "var_agg_bqx_usd", "csi_agg_eur"]
    tables = {name: t for name, t in full.tables.items() if name in keep}
    missing = set(keep) - set(tables)
    assert not missing, missing
    return Catalog(
        full.project, full.features_dataset, full.targets_dataset, full.pairs, tables,
        full.targets, full.excluded,
    )  # fmt: skip


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture(scope="session")
def mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Path]:
    """The mini catalog and its file (for BQX_CATALOG_PATH / PipelineSettings.catalog_path)."""
    catalog = mini_catalog()
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    catalog.dump(path)
    return catalog, path


@pytest.fixture(scope="session")
def mini_warehouse(tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path]) -> Path:
    """A read-only embedded warehouse of the mini catalog, 600 minutes per table."""
    from bqx_assets.core.embedded import create_warehouse

    catalog, _ = mini
    path = tmp_path_factory.mktemp("warehouse") / "warehouse.duckdb"
    create_warehouse(path, catalog, pairs=MINI_PAIRS, rows=600).close()
    return path
