"""The one Definitions object of bqx_assets."""

from __future__ import annotations

import dagster as dg

from bqx_assets.defs.assets import all_assets, pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.automation import automation
from bqx_assets.defs.environment import resources_for

shared_job = dg.define_asset_job(
    "shared_checkpoints_job",
    selection=dg.AssetSelection.assets(shared_checkpoints),
    description="Checkpoint the tables every pair uses (once per refresh).",
)
pair_job = dg.define_asset_job(
    "pair_training_job",
    selection=dg.AssetSelection.assets(pair_checkpoints, training_file),
    description="One pair: its own checkpoints, then its merged and validated training file.",
)

defs = dg.Definitions(
    assets=all_assets,
    jobs=[shared_job, pair_job],
    sensors=automation,
    resources=resources_for(),
)
