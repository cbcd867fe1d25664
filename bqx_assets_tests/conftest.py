"""Shared fixtures: catalogs, embedded warehouses made once per session, the emulators."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bqx_assets.core.catalog import Catalog, Table

if TYPE_CHECKING:
    from emulators.bigquery import BigQueryEmulator
    from emulators.gcs import GCSEmulator
    from emulators.proxy import HttpAnswerProxy, Rule

# Nothing in the suite may look for the cloud metadata server.
os.environ.setdefault("NO_GCE_CHECK", "True")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

MINI_PAIRS = ("eurusd", "gbpusd")
FAST_WORKERS = 2
"""Worker processes for the default (not slow) run, `-n auto` in pyproject.toml: a test file per
worker, each with its own emulators and temp folders. Two halves the suite's time on a 2-core
machine; more would only share the same cores."""


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """FAST_WORKERS for the default run; the slow suites (and any other marker selection) in
    this one process, since their deployments each take the whole machine and their timings are
    reported. PYTEST_XDIST_AUTO_NUM_WORKERS, when set, decides instead."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    if config.getoption("markexpr") != "not slow":
        return 0
    cpus = os.cpu_count() or 1
    return min(FAST_WORKERS, cpus) if cpus > 1 else 0


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


def every_family(catalog: Catalog, pairs: tuple[str, ...] = ("eurusd",)) -> Catalog:
    """The pairs' catalog cut to the first table of every family of each: the asset graph's
    shape (an asset per family) on a few tables."""
    full = catalog.subset(pairs)
    kept: dict[str, Table] = {}
    for pair in pairs:
        first: dict[str, Table] = {}
        for table in full.tables_for(pair):
            first.setdefault(table.family, table)
        kept |= {t.name: t for t in first.values()}
    return Catalog(
        full.project, full.features_dataset, full.targets_dataset, full.pairs,
        kept, full.targets, full.excluded,
    )  # fmt: skip


class Warehouses:
    """Embedded warehouses made once per test session and shared, read-only, by every test that
    asks for the same one (catalog, pairs, rows, start, faults); `copy` gives a test a private
    one to append to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def path(
        self,
        catalog: Catalog,
        *,
        pairs: Sequence[str] = MINI_PAIRS,
        rows: int = 600,
        start: datetime | None = None,
        faults: Sequence[str] = (),
    ) -> Path:
        from bqx_assets.core.warehouse.embedded import DEFAULT_START, create_warehouse

        start = start or DEFAULT_START
        ident = json.dumps(
            [catalog.to_dict(), list(pairs), rows, start.isoformat(), list(faults)],
            sort_keys=True,
        )
        name = hashlib.sha256(ident.encode()).hexdigest()[:16]
        if name not in self._made:
            path = self.root / f"{name}.duckdb"
            create_warehouse(
                path, catalog, pairs=pairs, rows=rows, start=start, faults=faults
            ).close()
            self._made[name] = path
        return self._made[name]

    def copy(self, dest: Path, catalog: Catalog, **kwargs: object) -> Path:
        """A private, writable copy of the warehouse `path(catalog, **kwargs)` would give."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(catalog, **kwargs), dest)  # type: ignore[arg-type]
        return dest


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
def warehouses(tmp_path_factory: pytest.TempPathFactory) -> Warehouses:
    return Warehouses(tmp_path_factory.mktemp("warehouses"))


@pytest.fixture(scope="session")
def mini_warehouse(warehouses: Warehouses, mini: tuple[Catalog, Path]) -> Path:
    """A read-only embedded warehouse of the mini catalog, 600 minutes per table."""
    return warehouses.path(mini[0], pairs=MINI_PAIRS, rows=600)


# -- emulators --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSEmulator]:
    """One fake-gcs-server for the test session, with `STORAGE_EMULATOR_HOST` pointing at it."""
    from emulators.gcs import run_gcs_emulator

    with (
        run_gcs_emulator(tmp_path_factory.mktemp("fake-gcs-server")) as emulator,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("STORAGE_EMULATOR_HOST", emulator.endpoint)
        mp.setenv("NO_GCE_CHECK", "True")
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        yield emulator


@pytest.fixture
def gcs_bucket(gcs_emulator: GCSEmulator) -> str:
    """A fresh, empty bucket in the session's emulator."""
    return gcs_emulator.create_bucket()


@contextmanager
def gcs_as_google_answers(emulator: GCSEmulator, *before: Rule) -> Iterator[HttpAnswerProxy]:
    """A proxy in front of the emulator that holds server-side copies to GCS's generation
    preconditions (`rewrite_preconditions`), after the test's own `before` rules; its clients
    are `emulator.client(proxy.endpoint)`."""
    from emulators import proxy as proxies
    from emulators.gcs import rewrite_preconditions

    rules = [*before, rewrite_preconditions(emulator.endpoint)]
    with proxies.HttpAnswerProxy(emulator.endpoint, before=rules) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """local-bigquery for the whole session. Skipped where its environment cannot be made (no
    Python 3.13 or package index), except under CI (`CI` set), where that fails: a green CI
    has run the emulator tests."""
    from emulators.bigquery import EmulatorUnavailable, start_emulator

    try:
        emulator = start_emulator(tmp_path_factory.mktemp("bigquery-emulator"))
    except EmulatorUnavailable as exc:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(exc))
    try:
        yield emulator
    finally:
        emulator.stop()
