"""The one Definitions object of bqx_assets, and where each stage's code is.

Each stage is an asset in `defs/assets.py` (first name) whose body calls a core function in
`bqx_assets/core/` (after the arrow):
- warehouse tables observed, a data version per family and pair: `pair_sources`,
  `shared_sources` (assets `warehouse/<family>`) -> `warehouse.Warehouse.partition_states`
  (`warehouse/bigquery.py`, `warehouse/embedded.py`), `checkpoints.versions.family_versions`.
- the 411 tables every pair uses, extracted once: `shared_checkpoints`
  (`checkpoints/<tri|mkt|var|csi>`) -> `checkpoints.refresh.refresh_checkpoints` (date-range
  chunks; only changed or new days are read).
- one pair's own tables and targets, extracted: `pair_checkpoints` (`checkpoints/<family>`,
  `checkpoints/targets`) -> `checkpoints.refresh.refresh_checkpoints`.
- merged, gate-checked, published: `training_file` -> `build.build_training_file` (the
  window's verified chunks, `merge.merge_checkpoints` into a sink of the output root,
  `gate.validate.validate_training_file`); its checks come from `defs/checks.py`, and
  `defs/io_managers.py` publishes it with `publish.publish_training_file`.
- the published file's profile: `training_profile` -> `gate.profile.promote_profile`.
Jobs are in `defs/jobs.py`, automation in `defs/automation.py`, and each deployment's resources
in `defs/environment.py` (the only reader of the environment).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from bqx_assets.defs.assets import all_assets
from bqx_assets.defs.automation import automation
from bqx_assets.defs.environment import require_graph_catalog, resources_for
from bqx_assets.defs.jobs import jobs


def build_definitions(resources: Mapping[str, Any]) -> dg.Definitions:
    """The assets, jobs and sensors with these resources (a deployment's, or the demo's).
    Refuses settings whose catalog is not the one the asset graph was built from."""
    require_graph_catalog(resources["settings"])
    return dg.Definitions(assets=all_assets, jobs=jobs, sensors=automation, resources=resources)


defs = build_definitions(resources_for())
