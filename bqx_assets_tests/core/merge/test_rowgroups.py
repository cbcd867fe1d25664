"""The training file's row groups: the calendar that cuts them and the signatures that tell an
unchanged one."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from bqx_assets.core.merge import ChunkId, InputChunk, InputTable
from bqx_assets.core.merge.rowgroups import declared, plan_digest, row_groups, signatures
from bqx_assets.core.storage import LocalFile

DAY = 1440
MINUTE = 60_000_000


def _us(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1_000_000


def test_row_groups_are_months_then_the_newest_months_weeks() -> None:
    dec = np.arange(_us(2023, 12, 30), _us(2024, 1, 1), MINUTE)
    jan = np.arange(_us(2024, 1, 1), _us(2024, 2, 1), MINUTE)
    feb = np.arange(_us(2024, 2, 1), _us(2024, 2, 12, 12), MINUTE)
    keys = np.concatenate([dec, jan, feb])
    groups = row_groups(keys)
    # December and January whole (closed months), then February's weeks from Sunday: the 1st to
    # Saturday the 3rd, Sunday the 4th to the 10th, and the 11th to the 12th at noon.
    assert [b - a for a, b in groups] == [2 * DAY, 31 * DAY, 3 * DAY, 7 * DAY, DAY + DAY // 2]
    assert groups[0][0] == 0 and groups[-1][1] == len(keys)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(groups))
    # A cap cuts them further; a spine inside one week is one row group; no keys, none.
    assert [b - a for a, b in row_groups(keys, 2000)][:3] == [2000, 880, 2000]
    assert row_groups(feb[:10]) == [(0, 10)]
    assert row_groups(np.zeros(0, dtype=np.int64)) == []


def test_row_groups_are_a_function_of_the_keys_alone() -> None:
    """A refresh and a from-scratch build of the same spine cut the same row groups; a day
    more moves only the newest month's cuts (January closes: its weeks become one month)."""
    jan = np.arange(_us(2024, 1, 28), _us(2024, 2, 1), MINUTE)
    assert [b - a for a, b in row_groups(jan)] == [4 * DAY]  # the week from Sunday the 28th
    more = np.concatenate([jan, np.arange(_us(2024, 2, 1), _us(2024, 2, 2), MINUTE)])
    assert [b - a for a, b in row_groups(more)] == [4 * DAY, DAY]
    assert row_groups(more.copy()) == row_groups(more)


def _file(name: str) -> LocalFile:
    return LocalFile(f"/nowhere/{name}.parquet", 0)


def _chunk(name: str, start: int, end: int, digest: str = "crc:1") -> InputChunk:
    return InputChunk(_file(name), ChunkId(start, end, digest))


def _keys_and_groups() -> tuple[np.ndarray, list[tuple[int, int]]]:
    keys = np.arange(_us(2024, 1, 1), _us(2024, 1, 1) + 6 * MINUTE, MINUTE)
    return keys, [(0, 2), (2, 4), (4, 6)]


def test_a_row_group_s_signature_depends_on_the_chunks_over_its_keys_only() -> None:
    keys, groups = _keys_and_groups()
    k = [int(v) for v in keys]
    spine = InputTable("targets", (_chunk("s", k[0], k[5] + MINUTE),))
    # Three chunks, one per row group: [start, end) holding each row group's two keys.
    table = InputTable(
        "t", tuple(_chunk(f"t{i}", k[2 * i], k[2 * i + 2] if i < 2 else k[5] + 1) for i in range(3))
    )
    before = signatures(keys, groups, spine, [table])
    assert len(set(before)) == 3 and None not in before
    # The middle chunk's bytes changed: only the middle row group's signature.
    changed = list(table.chunks)
    changed[1] = _chunk("t1", k[2], k[4], "crc:2")
    after = signatures(keys, groups, spine, [InputTable("t", tuple(changed))])
    assert [a == b for a, b in zip(before, after, strict=True)] == [True, False, True]
    # A chunk whose range only ends where a row group starts ([start, end)) is not over it.
    touching = InputTable("u", (_chunk("u", k[0] - MINUTE, k[2]),))
    with_u = signatures(keys, groups, spine, [table, touching])
    without_u = signatures(keys, groups, spine, [table, InputTable("u", ())])
    assert with_u[0] != without_u[0]
    assert with_u[1:] == without_u[1:]
    # The spine's chunks count too: new targets change every row group they cover.
    respined = InputTable("targets", (_chunk("s", k[0], k[5] + MINUTE, "crc:9"),))
    assert all(
        a != b for a, b in zip(before, signatures(keys, groups, respined, [table]), strict=True)
    )
    # The same chunks under another table, in another order: other inputs.
    assert signatures(keys, groups, spine, [InputTable("t", ()), table]) != before


def test_without_every_chunk_s_id_no_row_group_is_signed() -> None:
    keys, groups = _keys_and_groups()
    spine = InputTable("targets", (_chunk("s", 0, 2**62),))
    table = InputTable("t", (_chunk("a", 0, 2**62), InputChunk(_file("b"))))
    assert signatures(keys, groups, spine, [table]) == [None, None, None]
    bare_spine = InputTable("targets", (InputChunk(_file("s")),))
    assert signatures(keys, groups, bare_spine, []) == [None, None, None]


def test_the_plan_digest_covers_names_types_row_group_size_encoder_and_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names, types = ["interval_time", "a__x"], [pa.timestamp("us", tz="UTC"), pa.float64()]
    base = plan_digest(names, types, 1000)
    assert plan_digest(list(names), list(types), 1000) == base
    assert plan_digest(["interval_time", "a__y"], types, 1000) != base
    assert plan_digest(names, [types[0], pa.int64()], 1000) != base
    assert plan_digest(names, types, 999) != base
    monkeypatch.setattr("bqx_assets.core.merge.rowgroups.LAYOUT_FORMAT", 99)
    assert plan_digest(names, types, 1000) != base
    monkeypatch.undo()
    # The writer's version: another pyarrow may encode the same data into other bytes.
    monkeypatch.setattr(pa, "__version__", "0.0.0")
    assert plan_digest(names, types, 1000) != base


def test_declared_columns_are_known_only_when_every_table_declares_them() -> None:
    a = InputTable("a", (), (("x", "a__x"), ("n", "a__n")), {"x": "FLOAT64", "n": "INT64"})
    b = InputTable("b", (), (("s", "b__s"),), {"s": "STRING", "leak": "FLOAT64"})
    assert declared([a, b]) == (["a__x", "a__n", "b__s"], [pa.float64(), pa.int64(), pa.string()])
    assert declared([]) == ([], [])
    assert declared([a, InputTable("c", ())]) is None  # its files say
    assert declared([a, InputTable("c", (), (("x", "c__x"),))]) is None
    assert declared([InputTable("d", (), (("x", "d__x"),), {"x": "NUMERIC"})]) is None
    assert declared([InputTable("e", (), (("x", "e__x"),), {"y": "FLOAT64"})]) is None
