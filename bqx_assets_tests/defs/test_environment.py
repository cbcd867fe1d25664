"""The one place that reads the environment: each deployment's resources, the catalog the graph
is built from, and the settings refused when the definitions load."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.errors import CatalogError, WindowError
from bqx_assets.defs.environment import (
    deployment,
    graph_catalog,
    resolved,
    resolved_resource,
    resources_for,
)
from bqx_assets.defs.resources import (
    BigQueryWarehouseResource,
    EmbeddedWarehouseResource,
    PipelineSettings,
)


def test_prod_resources_point_at_bigquery_and_gcs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BQX_MIN_ROWS", "BQX_BQ_API_ENDPOINT", "BQX_BQ_READ_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    prod = resources_for("prod")
    assert isinstance(prod["warehouse"], BigQueryWarehouseResource)
    # Google's endpoints, through the clients' defaults.
    assert prod["warehouse"].api_endpoint is None and prod["warehouse"].read_endpoint is None
    assert prod["checkpoints"].root == "gs://bqx-ml-staging/checkpoints"
    assert prod["training_io_manager"].output_root == "gs://bqx-ml-output"
    assert prod["settings"].gate.min_rows == 150_000


def test_prod_resources_take_an_emulators_endpoints_and_a_rehearsals_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BQX_BQ_API_ENDPOINT", "http://127.0.0.1:9050")
    monkeypatch.setenv("BQX_BQ_READ_ENDPOINT", "127.0.0.1:9060")
    monkeypatch.setenv("BQX_MIN_ROWS", "100")
    prod = resources_for("prod")
    warehouse = resolved_resource(prod["warehouse"])
    assert (warehouse.api_endpoint, warehouse.read_endpoint) == (
        "http://127.0.0.1:9050",
        "127.0.0.1:9060",
    )
    assert resolved(prod["settings"].gate.min_rows) == 100
    # Every other threshold stays production's.
    assert prod["settings"].gate.max_rows == 200_000


def test_the_local_deployment_runs_with_nothing_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BQX_ENV", raising=False)
    assert deployment() == "local"
    local = resources_for()
    assert isinstance(local["warehouse"], EmbeddedWarehouseResource)
    assert local["checkpoints"].root == "data/checkpoints"
    assert local["training_io_manager"].output_root == "data/output"
    assert local["settings"].gate.min_rows == 100
    monkeypatch.setenv("BQX_ENV", "PROD")
    assert deployment() == "prod"


def test_a_variable_set_is_an_env_var_the_runs_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI shows the variable's name, not its value; a run reads the value."""
    monkeypatch.setenv("BQX_CHECKPOINT_ROOT", "gs://other/checkpoints")
    monkeypatch.setenv("BQX_WINDOW_DAYS", "30")
    local = resources_for("local")
    assert local["checkpoints"].root == dg.EnvVar("BQX_CHECKPOINT_ROOT")
    assert resolved(local["checkpoints"].root) == "gs://other/checkpoints"
    assert resolved(local["settings"].window_days) == 30


def test_a_start_and_a_rolling_length_in_the_environment_are_refused_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BQX_WINDOW_START", "2024-01-30")
    monkeypatch.setenv("BQX_WINDOW_DAYS", "2")
    for which in ("local", "prod"):
        with pytest.raises(WindowError, match="both a start"):
            resources_for(which)  # type: ignore[arg-type]


def test_a_catalog_without_a_family_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = Catalog.load()
    path = tmp_path / "no_csi.json"
    tables = {n: t for n, t in full.tables.items() if t.family != "csi"}
    Catalog(
        full.project, full.features_dataset, full.targets_dataset, full.pairs, tables,
        full.targets, full.excluded,
    ).dump(path)  # fmt: skip
    monkeypatch.setenv("BQX_CATALOG_PATH", str(path))
    with pytest.raises(CatalogError, match=r"no_csi.json.*lacks \['csi'\]"):
        graph_catalog()


def test_the_graph_catalog_is_the_packaged_one_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BQX_CATALOG_PATH", raising=False)
    assert graph_catalog().pairs == Catalog.load().pairs
    assert PipelineSettings().catalog() is graph_catalog()  # one loaded catalog, shared
