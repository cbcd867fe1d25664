"""The two asset jobs: the shared checkpoints once, and one pair end to end."""

from __future__ import annotations

import dagster as dg

from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file

SHARED_JOB = "shared_checkpoints_job"
PAIR_JOB = "pair_training_job"

shared_job = dg.define_asset_job(
    SHARED_JOB,
    selection=dg.AssetSelection.assets(shared_checkpoints),
    description="Checkpoint the tables every pair uses (once per refresh).",
)
pair_job = dg.define_asset_job(
    PAIR_JOB,
    selection=dg.AssetSelection.assets(pair_checkpoints, training_file),
    description="One pair: its own checkpoints, then its merged and validated training file.",
)
jobs = [shared_job, pair_job]
