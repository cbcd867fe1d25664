"""The one place that decides the deployment (local or prod) and reads the environment."""

from __future__ import annotations

import os
from typing import Any, Literal, TypeVar

import dagster as dg

from bqx_assets.core.catalog import FAMILY_ORDER, Catalog
from bqx_assets.core.errors import CatalogError
from bqx_assets.core.layout import EMBEDDED_WAREHOUSE_PATH
from bqx_assets.defs.alerts import WebhookAlerts
from bqx_assets.defs.frame_io import FrameIOManagerFactory
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import (
    BigQueryWarehouseResource,
    CheckpointStore,
    EmbeddedWarehouseResource,
    GateConfig,
    PipelineSettings,
)

Deployment = Literal["local", "prod"]
R = TypeVar("R", bound=dg.ConfigurableResource)
CATALOG_PATH_VAR = "BQX_CATALOG_PATH"


def deployment() -> Deployment:
    """`BQX_ENV=prod` selects BigQuery and GCS; anything else (or nothing) runs locally."""
    return "prod" if os.environ.get("BQX_ENV", "local").lower() == "prod" else "local"


def _env(name: str, default: Any) -> Any:
    """An `EnvVar` when the variable is set (the UI shows its name, not its value), else the
    default, so that nothing needs to be set to run."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def resolved(value: Any) -> Any:
    """A resource field's value as a run sees it (an `EnvVar` or `EnvVar.int` read now)."""
    # `EnvVar.int` is not an `EnvVar` (it is an int that refuses to be read as one).
    get = getattr(value, "get_value", None)
    return get() if callable(get) else value


def resolved_resource(resource: R) -> R:
    """The resource with each field as a run sees it, for use outside a run (a command): an
    `EnvVar` field is otherwise the variable's name, not its value."""
    fields = type(resource).model_fields
    return type(resource)(**{name: resolved(getattr(resource, name)) for name in fields})


def require_window(settings: PipelineSettings) -> None:
    """Refuses, at load, a training window set twice over (a start and a rolling length), which
    every run would otherwise refuse."""
    PipelineSettings(
        window_start=resolved(settings.window_start),
        window_end=resolved(settings.window_end),
        window_days=resolved(settings.window_days),
    ).training_window()


def catalog_path() -> str | None:
    """The deployment's catalog file (`BQX_CATALOG_PATH`; None: the packaged catalog). The asset
    graph's shape (pairs, families) and the runs' settings both come from it."""
    return os.environ.get(CATALOG_PATH_VAR) or None


def _load(path: str | None) -> Catalog:
    # PipelineSettings keeps one loaded catalog per path: the graph and the runs share it.
    return PipelineSettings(catalog_path=path).catalog()


def graph_catalog() -> Catalog:
    """The catalog the asset graph is built from (partitions, one asset per family); a catalog
    whose families are not the graph's is refused here, at load, by name."""
    path = catalog_path()
    catalog = _load(path)
    present = set(catalog.families())
    missing = [f for f in FAMILY_ORDER if f not in present]
    unknown = sorted(present - set(FAMILY_ORDER))
    if missing or unknown:
        raise CatalogError(
            f"catalog {path or 'packaged'}: the asset graph has one asset per family of "
            f"{', '.join(FAMILY_ORDER)}; this catalog lacks {missing} and adds {unknown}"
        )
    return catalog


def require_graph_catalog(settings: PipelineSettings) -> None:
    """Refuses settings whose catalog has other pairs or families than the one the asset graph
    was built from: runs would read tables the graph does not show, or partitions no run knows."""
    path, graph_path = resolved(settings.catalog_path), catalog_path()
    runs, graph = _load(path), graph_catalog()
    if runs.pairs != graph.pairs or runs.families() != graph.families():
        raise CatalogError(
            f"the runs' catalog ({path or 'packaged'}: {len(runs.pairs)} pairs, families "
            f"{', '.join(runs.families())}) is not the asset graph's ({graph_path or 'packaged'}: "
            f"{len(graph.pairs)} pairs, families {', '.join(graph.families())}); set "
            f"{CATALOG_PATH_VAR} for both, not PipelineSettings.catalog_path alone"
        )


def _env_int(name: str, default: int) -> Any:
    return dg.EnvVar.int(name) if os.environ.get(name) else default


def _settings(staging: str | None = None, **production: Any) -> PipelineSettings:
    settings = PipelineSettings(
        catalog_path=_env(CATALOG_PATH_VAR, None),
        window_start=_env("BQX_WINDOW_START", None),
        window_end=_env("BQX_WINDOW_END", None),
        window_days=_env_int("BQX_WINDOW_DAYS", None),
        extract_threads=_env_int("BQX_EXTRACT_THREADS", 4),
        extract_mode=_env("BQX_EXTRACT_MODE", "read"),
        export_staging_uri=_env("BQX_EXPORT_STAGING_URI", staging),
        workdir=_env("BQX_WORKDIR", "data/work"),
        **production,
    )
    require_window(settings)
    return settings


def _alerts() -> WebhookAlerts:
    """Failed runs' alerts: POSTed to `BQX_ALERT_WEBHOOK` (unset: only logged), with links to
    the runs on `BQX_DAGSTER_URL` (the webserver as people reach it)."""
    return WebhookAlerts(
        url=_env("BQX_ALERT_WEBHOOK", None),
        dagster_url=_env("BQX_DAGSTER_URL", "http://localhost:3000"),
    )


def _production_min_rows() -> dict[str, Any]:
    """Production's least row count, unless `BQX_MIN_ROWS` sets another (a rehearsal's few
    hundred minutes); unset, the gate's default stands."""
    return {"min_rows": dg.EnvVar.int("BQX_MIN_ROWS")} if os.environ.get("BQX_MIN_ROWS") else {}


def resources_for(which: Deployment | None = None) -> dict[str, Any]:
    """The resources of a deployment: the same assets, other warehouse and roots."""
    if (which or deployment()) == "prod":
        return {
            "warehouse": BigQueryWarehouseResource(
                project=_env("BQX_BQ_PROJECT", "bqx-ml"),
                location=_env("BQX_BQ_LOCATION", None),
                max_read_streams=_env_int("BQX_BQ_READ_STREAMS", 4),
                # Unset in production; an emulator's endpoints (the production rehearsal's).
                api_endpoint=_env("BQX_BQ_API_ENDPOINT", None),
                read_endpoint=_env("BQX_BQ_READ_ENDPOINT", None),
            ),
            "checkpoints": CheckpointStore(
                root=_env("BQX_CHECKPOINT_ROOT", "gs://bqx-ml-staging/checkpoints"),
                cache_dir=_env("BQX_CACHE_DIR", "/tmp/bqx/cache/checkpoints"),
            ),
            "settings": _settings(
                staging="gs://bqx-ml-staging/exports", gate=GateConfig(**_production_min_rows())
            ),
            "training_io_manager": TrainingFileIOManager(
                output_root=_env("BQX_OUTPUT_ROOT", "gs://bqx-ml-output"),
                cache_dir=_env("BQX_OUTPUT_CACHE_DIR", "/tmp/bqx/cache/output"),
            ),
            "frame_io_manager": FrameIOManagerFactory(
                base_dir=_env("BQX_FRAME_DIR", "/tmp/bqx/frames")
            ),
            "alerts": _alerts(),
        }
    # The embedded warehouse holds a few thousand minutes per pair, not production's 177K:
    # the row-count gate checks equality with the spine and these looser bounds.
    return {
        "warehouse": EmbeddedWarehouseResource(
            path=_env("BQX_WAREHOUSE_PATH", EMBEDDED_WAREHOUSE_PATH)
        ),
        "checkpoints": CheckpointStore(
            root=_env("BQX_CHECKPOINT_ROOT", "data/checkpoints"),
            cache_dir=_env("BQX_CACHE_DIR", "data/cache/checkpoints"),
        ),
        "settings": _settings(gate=GateConfig(min_rows=_env_int("BQX_MIN_ROWS", 100))),
        "training_io_manager": TrainingFileIOManager(
            output_root=_env("BQX_OUTPUT_ROOT", "data/output"),
            cache_dir=_env("BQX_OUTPUT_CACHE_DIR", "data/cache/output"),
        ),
        "frame_io_manager": FrameIOManagerFactory(base_dir=_env("BQX_FRAME_DIR", "data/frames")),
        "alerts": _alerts(),
    }
