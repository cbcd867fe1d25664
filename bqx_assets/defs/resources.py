"""Configurable resources: the warehouse, the checkpoint root and the pipeline settings."""

from __future__ import annotations

from copy import copy
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, create_model

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.schema import EXTRACT_MODES, ExtractMode
from bqx_assets.core.checkpoints.window import TrainingWindow
from bqx_assets.core.costs import Prices
from bqx_assets.core.gate.thresholds import THRESHOLD_FIELDS, UNIT_TEXT, Thresholds
from bqx_assets.core.layout import EMBEDDED_WAREHOUSE_PATH
from bqx_assets.core.storage import Storage, open_storage
from bqx_assets.core.warehouse import DateRange, Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """Where feature tables are read from; checkpoint assets use only `open()`."""

    def open(self) -> Warehouse:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class EmbeddedWarehouseResource(WarehouseResource):
    """The synthetic production-shaped warehouse in a local DuckDB file (the default)."""

    path: str = Field(default=EMBEDDED_WAREHOUSE_PATH, description="DuckDB file of the warehouse")

    def open(self) -> Warehouse:
        from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

        return EmbeddedWarehouse(self.path)

    def describe(self) -> str:
        return f"embedded DuckDB warehouse {self.path}"


class BigQueryWarehouseResource(WarehouseResource):
    """BigQuery through the official clients: table reads over the Storage Read API."""

    project: str = "bqx-ml"
    location: str | None = Field(
        default=None,
        description="BigQuery location of the datasets; unset: each dataset's own (datasets.get)",
    )
    features_dataset: str = "bqx_ml_v3_features_v2"
    targets_dataset: str = "bqx_ml_v3_analytics_v2"
    api_endpoint: str | None = Field(default=None, description="REST endpoint (emulator only)")
    read_endpoint: str | None = Field(
        default=None, description="Storage Read gRPC host:port (emulator only, insecure channel)"
    )
    max_read_streams: int = 4

    def open(self) -> Warehouse:
        from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse

        return BigQueryWarehouse(
            self.project,
            self.features_dataset,
            self.targets_dataset,
            location=self.location,
            api_endpoint=self.api_endpoint,
            read_endpoint=self.read_endpoint,
            max_read_streams=self.max_read_streams,
        )

    def describe(self) -> str:
        return f"BigQuery project {self.project}"


class CheckpointStore(dg.ConfigurableResource):
    """The checkpoint root: a local folder or `gs://bucket/prefix` (written as extracted)."""

    root: str = Field(default="data/checkpoints", description="folder or gs:// URI")
    cache_dir: str = Field(
        default="data/cache/checkpoints",
        description="local copies of gs:// checkpoints, fetched and verified before a merge",
    )

    def storage(self) -> Storage:
        # Checkpoints are verified against their manifests before reuse: no fsync needed.
        return open_storage(self.root, durable=False)


_CONFIG_TYPES: dict[str, Any] = {
    "int": int,
    "float": float,
    "bool": bool,
    "per_family": dict[str, float],
    "names": list[str],
    "time": str,
}
"""The config type of each kind of threshold: plain values, as `Thresholds.as_dict` writes them."""


def _gate_config() -> type[dg.Config]:
    """The gate's config, derived from `Thresholds`: a field per threshold, with its default,
    its line and its unit."""
    fields: dict[str, Any] = {}
    for f in THRESHOLD_FIELDS:
        plain = f.plain(f.default)
        # A mapping or a list is copied for each config, as the dataclass copies its defaults.
        default = (
            {"default_factory": lambda p=plain: copy(p)}
            if f.kind in ("per_family", "names")
            else {"default": plain}
        )
        text = f"{f.knob.help} ({UNIT_TEXT[f.knob.unit]})"
        fields[f.name] = (_CONFIG_TYPES[f.kind], Field(description=text, **default))
    model = create_model("GateConfig", __base__=dg.Config, __module__=__name__, **fields)
    model.__doc__ = (
        "What the gate accepts (core/gate/thresholds.py); the defaults are production's."
    )
    return model


GateConfig = _gate_config()


@cache
def _load_catalog(path: str | None) -> Catalog:
    return Catalog.load(path)


class PipelineSettings(dg.ConfigurableResource):
    """Catalog, training window, extraction threads, work folder and gate thresholds."""

    catalog_path: str | None = Field(default=None, description="None: the packaged catalog")
    window_start: str | None = Field(default=None, description="first day of training (ISO)")
    window_end: str | None = Field(default=None, description="day after the last (ISO)")
    window_days: int | None = Field(
        default=None,
        description="a rolling window: the last N trading days (days with rows in the pair's "
        "targets table, before window_end), resolved once per checkpoint step; not with "
        "window_start",
    )
    extract_threads: int = Field(default=4, description="tables read at once within a run")
    extract_mode: str = Field(
        default="read",
        description="read: Storage Read (billed by bytes); export: whole tables (no window) by a"
        " free extract job to export_staging_uri, windowed ones still read",
    )
    export_staging_uri: str | None = Field(
        default=None, description="gs:// prefix for the export mode's parquet shards (deleted)"
    )
    bq_price_per_tib: float = Field(
        default=Prices().storage_read_tib,
        description="price of a TiB read through the Storage Read API (US multi-region list price)",
    )
    workdir: str = Field(default="data/work", description="local scratch for merges")
    gate: GateConfig = Field(  # type: ignore[valid-type]
        default_factory=GateConfig, description="the gate's thresholds; production's by default"
    )

    def catalog(self) -> Catalog:
        return _load_catalog(self.catalog_path)

    def mode(self) -> ExtractMode:
        """`extract_mode`, checked (a plain `str` field, since an `EnvVar` may set it)."""
        for mode in EXTRACT_MODES:
            if self.extract_mode == mode:
                return mode
        raise ValueError(
            f"extract_mode {self.extract_mode!r} is not one of {', '.join(EXTRACT_MODES)}"
        )

    def training_window(self) -> TrainingWindow:
        """The configured window; a WindowError when both a start and a rolling length are set."""
        return TrainingWindow.parse(self.window_start, self.window_end, self.window_days)

    def thresholds(self, window: DateRange | None = None) -> Thresholds:
        """The gate's thresholds; keys must lie in `window` (the run's resolved training window;
        default: the fixed window's bounds)."""
        if window is None:
            configured = self.training_window()
            window = DateRange(configured.start, configured.end)
        return Thresholds.from_dict(self.gate.model_dump()).within(window)

    def work_path(self, *parts: str) -> Path:
        path = Path(self.workdir).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
