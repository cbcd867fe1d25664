"""What the merge plans a chunk from without opening it: recorded from the chunk as written,
stored in its manifest, read back as it was or not at all."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.checkpoints.facts import ChunkFacts
from bqx_assets.core.checkpoints.schema import write_checkpoint
from bqx_assets.core.keys import keys_us
from bqx_assets.core.layout import KEY, KEY_TYPE

START_US = int(datetime(2024, 1, 29, tzinfo=UTC).timestamp()) * 10**6


def _chunk(tmp_path: Path, rows: int = 300) -> tuple[ChunkFacts, pa.Table, np.ndarray]:
    keys = np.arange(rows, dtype=np.int64) * 60_000_000 + START_US
    data = pa.table(
        {
            KEY: pa.array(keys, KEY_TYPE),
            "mean_45": pa.array([None if i % 3 == 0 else i / 7 for i in range(rows)]),
            "count_45": pa.array(range(rows), pa.int64()),
            "label": pa.array(["on"] * rows, pa.large_string()),
        }
    )
    written = write_checkpoint(data, tmp_path / "chunk.parquet", row_group_rows=128)
    return ChunkFacts.of(written, data, keys), data, keys


def test_facts_are_the_chunk_s_row_groups_columns_nulls_and_keys(tmp_path: Path) -> None:
    facts, _, keys = _chunk(tmp_path)
    meta = pq.read_metadata(tmp_path / "chunk.parquet")
    assert (
        facts.rows
        == (128, 128, 44)
        == tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
    )
    # Every column but the key, types as the merge compares them (a large string is a string).
    assert facts.columns() == {
        "mean_45": ("double", 100),
        "count_45": ("int64", 0),
        "label": ("string", 0),
    }
    assert np.array_equal(facts.keys(), keys)
    assert np.array_equal(keys_us(pq.read_table(tmp_path / "chunk.parquet")[KEY], "t"), keys)
    assert len(facts.packed_keys) < 100  # minute keys pack into a few bytes


def test_facts_stored_as_json_read_back_equal(tmp_path: Path) -> None:
    facts, _, keys = _chunk(tmp_path)
    stored = json.loads(json.dumps(facts.to_json()))
    back = ChunkFacts.from_json(stored)
    assert back == facts and back is not None
    assert back.unpacked is None and np.array_equal(back.keys(), keys)  # unpacked from the text


@pytest.mark.parametrize(
    "edit",
    [lambda r: None, lambda r: [], lambda r: {**r, "rows": None},
     lambda r: {**r, "rows": ["many"]}, lambda r: {**r, "columns": {"a": "double"}},
     lambda r: {k: v for k, v in r.items() if k != "keys"}],
    ids=["none", "not an object", "no rows", "rows not numbers", "column not [type, nulls]",
         "no keys"],
)  # fmt: skip
def test_facts_that_are_not_a_record_read_as_none(tmp_path: Path, edit: object) -> None:
    """None, never an error: the merge then opens the chunk and reads its footer and keys."""
    facts, _, _ = _chunk(tmp_path)
    assert ChunkFacts.from_json(edit(facts.to_json())) is None  # type: ignore[operator]


def test_keys_that_do_not_match_the_rows_are_an_error_when_unpacked(tmp_path: Path) -> None:
    facts, _, _ = _chunk(tmp_path)
    record = facts.to_json()
    for rows in (40, 50):  # fewer, more
        mismatched = ChunkFacts.from_json({**record, "rows": [128, 128, rows]})
        assert mismatched is not None
        with pytest.raises(ValueError, match="packed keys"):
            mismatched.keys()
    garbled = ChunkFacts.from_json({**record, "keys": "bm90IHpzdGQ="})
    assert garbled is not None
    with pytest.raises(ValueError, match="packed keys unreadable"):
        garbled.keys()
