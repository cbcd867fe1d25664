"""The merge: the spine and every table's chunks -> one wide training file, streaming."""

from __future__ import annotations

from bqx_assets.core.merge.inputs import (
    ChunkId,
    InputChunk,
    InputTable,
    PairInputs,
    pair_inputs,
    pair_tables,
    spine_table,
)
from bqx_assets.core.merge.join import MergeReport, merge_checkpoints

__all__ = [
    "ChunkId",
    "InputChunk",
    "InputTable",
    "MergeReport",
    "PairInputs",
    "merge_checkpoints",
    "pair_inputs",
    "pair_tables",
    "spine_table",
]
