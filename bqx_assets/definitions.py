"""The one Definitions object of bqx_assets: the assets, jobs and sensors of `defs/` with a
deployment's resources. Which core function each asset calls: docs/ARCHITECTURE.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from bqx_assets.defs.assets import all_assets
from bqx_assets.defs.automation import automation
from bqx_assets.defs.environment import require_graph_catalog, resources_for
from bqx_assets.defs.jobs import jobs
from bqx_assets.defs.overview import gate_summary
from bqx_assets.defs.preflight import preflight_checks, preflight_job


def build_definitions(resources: Mapping[str, Any]) -> dg.Definitions:
    """The assets, jobs and sensors with these resources (a deployment's, or the demo's).
    Refuses settings whose catalog is not the one the asset graph was built from."""
    require_graph_catalog(resources["settings"])
    return dg.Definitions(
        assets=[*all_assets, gate_summary],
        asset_checks=[preflight_checks],
        jobs=[*jobs, preflight_job],
        sensors=automation,
        resources=resources,
    )


defs = build_definitions(resources_for())
