"""A chunk's manifest (what it holds, the partition states it was made from) and a table's chunk
index, which stands in for its manifests while they are unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.manifest import (
    ChunkManifest,
    manifest_key,
    stored_manifests,
)
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.checkpoints.schema import owner_of
from bqx_assets.core.checkpoints.window import ALL_TIME, ChunkRange
from bqx_assets.core.layout import chunk_index_key
from bqx_assets.core.merge import PairInputs, pair_inputs
from bqx_assets.core.storage import LocalStorage, Storage, open_storage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.core.checkpoints.conftest import PAIR, pair_sources, stamps

MANIFEST = ChunkManifest(
    table="agg_eurusd",
    dataset="bqx_ml_v3_features_v2",
    first="2024-01-01",
    last="2024-01-31",
    window=["2024-01-01T00:00:00+00:00", "2024-01-30T12:00:00+00:00"],
    partitions={"2024-01-29": [1440, "2024-02-01T00:00:00+00:00"]},
    rows=1440,
    schema_fingerprint="0123456789abcdef",
    bytes=1000,
    crc32c="AAAAAA==",
    bytes_read=42,
    key_min="2024-01-29T00:00:00+00:00",
    key_max="2024-01-29T23:59:00+00:00",
)


def test_a_manifest_is_stored_as_json_and_read_back_as_it_was() -> None:
    assert ChunkManifest.from_json(MANIFEST.to_json()) == MANIFEST
    assert json.loads(MANIFEST.to_json())["method"] == "read"
    assert MANIFEST.range == ChunkRange(
        date(2024, 1, 1), date(2024, 1, 31),
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 30, 12, tzinfo=UTC),
    )  # fmt: skip
    assert not MANIFEST.range.whole
    assert manifest_key("eurusd/agg_eurusd/2024-01-01_2024-01-31.parquet") == (
        "eurusd/agg_eurusd/2024-01-01_2024-01-31.manifest.json"
    )


def _edited(**fields: object) -> bytes:
    return json.dumps({**json.loads(MANIFEST.to_json()), **fields}).encode()


def test_a_manifest_records_the_cut_and_whether_its_days_had_ended_then() -> None:
    """A chunk read at a cut inside its last day (the day still being written) is told from a
    complete one; a manifest written before runs had a cut reads as complete. The window ends
    2024-01-30 12:00."""
    made = {at: replace(MANIFEST, cut=at) for at in ("2024-01-30T11:00:00+00:00",
                                                      "2024-01-30T12:00:00+00:00")}  # fmt: skip
    assert [m.complete_at_cut for m in made.values()] == [False, True]
    again = ChunkManifest.from_json(made["2024-01-30T11:00:00+00:00"].to_json())
    assert again is not None and again.cut == "2024-01-30T11:00:00+00:00"
    old = json.loads(MANIFEST.to_json())
    del old["cut"]
    legacy = ChunkManifest.from_record(old)
    assert legacy is not None and legacy.cut is None and legacy.complete_at_cut


@pytest.mark.parametrize(
    "raw",
    [b"", b"{not json", b"[1, 2]", json.dumps({"table": "agg_eurusd"}).encode(),
     _edited(unknown=1), _edited(window=None), _edited(window=["2024-01-01"]),
     _edited(first="January"), _edited(partitions=[["2024-01-29", 1440]]),
     _edited(partitions={"2024-01-29": 1440}), _edited(rows="1440"), _edited(crc32c=None)],
    ids=["empty", "not json", "not an object", "fields missing", "unknown field",
         "no window", "half a window", "not a date", "partitions not by day",
         "partition not a state", "rows as text", "no checksum"],
)  # fmt: skip
def test_an_unreadable_manifest_reads_as_none(raw: bytes) -> None:
    """None, never an error where it is used: the chunk it describes is then made again."""
    assert ChunkManifest.from_json(raw) is None
    assert ChunkManifest.from_json(_edited()) == MANIFEST


def test_a_chunk_whose_manifest_cannot_be_read_is_made_again(
    mini: tuple[Catalog, Path], three_days: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    table = catalog.table(f"agg_{PAIR}")
    storage = LocalStorage(tmp_path / "ckpt")
    wh = EmbeddedWarehouse(three_days)
    try:
        (first,) = refresh_tables(wh, [table], storage, threads=1)
        # JSON, but not a manifest's (its window gone): unreadable, as much as broken JSON.
        broken = manifest_key(first.chunks[1].key(PAIR))
        record = json.loads(storage.read_bytes(broken) or b"")
        storage.write_bytes(broken, json.dumps({**record, "window": None}).encode())
        found = stored_manifests(storage, table)
        assert broken.replace(".manifest.json", ".parquet") not in found.manifests
        assert len(found.manifests) == len(first.chunks) - 1 and found.read == 1
        (again,) = refresh_tables(wh, [table], storage, threads=1)
    finally:
        wh.close()
    assert [c.status for c in again.chunks] == ["reused", "extracted", "reused"]
    assert ChunkManifest.from_json(storage.read_bytes(broken) or b"") == again.chunks[1].manifest


def _recorded(inputs: PairInputs) -> list[tuple[object, ...]]:
    """What the merge takes from the chunks' manifests: each table's chunk ids and facts."""
    return [
        (t.name, tuple((c.id, c.facts) for c in t.chunks)) for t in (inputs.spine, *inputs.tables)
    ]


@pytest.mark.parametrize("where", ["local", pytest.param("gcs", marks=pytest.mark.emulator)])
def test_a_table_s_chunk_index_stands_in_for_its_manifests_while_they_are_unchanged(
    request: pytest.FixtureRequest,
    mini: tuple[Catalog, Path],
    three_days: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    catalog, _ = mini
    storage: Storage
    if where == "gcs":
        storage = open_storage(f"gs://{request.getfixturevalue('gcs_bucket')}/checkpoints")
    else:
        storage = LocalStorage(tmp_path / "ckpt")
    sources = pair_sources(catalog)
    warehouse = EmbeddedWarehouse(three_days)
    request.addfinalizer(warehouse.close)
    refresh_tables(warehouse, sources, storage, threads=2)
    first = pair_inputs(storage, catalog, PAIR, ALL_TIME)
    index_keys = {chunk_index_key(owner_of(s), s.name) for s in sources}
    assert all(storage.stat(k) is not None for k in index_keys)
    written = {k: storage.stat(k) for k in index_keys}

    read: list[str] = []
    real_read = storage.read_bytes

    def counted(key: str) -> bytes | None:
        read.append(key)
        return real_read(key)

    monkeypatch.setattr(storage, "read_bytes", counted)
    # The merge's inputs: one read a table, its index; the same manifests as before.
    again = pair_inputs(storage, catalog, PAIR, ALL_TIME)
    assert sorted(read) == sorted(index_keys)
    assert _recorded(again) == _recorded(first)
    # A refresh with nothing new reads no manifest either, and leaves every index as it was.
    read.clear()
    refresh_tables(warehouse, sources, storage, threads=2)
    assert sorted(read) == sorted(index_keys)
    assert {k: storage.stat(k) for k in index_keys} == written

    # A manifest rewritten since its table's index was written is read on its own, and what it
    # says now is what counts: here, that it has no facts (the merge then opens its chunk).
    table = catalog.tables_for(PAIR)[0].name
    key = next(k for k in storage.list(f"{PAIR}/{table}") if k.endswith(".manifest.json"))
    record = json.loads(real_read(key) or b"")
    storage.write_bytes(key, json.dumps({**record, "facts": None}).encode())
    read.clear()
    changed = pair_inputs(storage, catalog, PAIR, ALL_TIME)
    assert sorted(read) == sorted([*index_keys, key])
    chunk = key.removesuffix(".manifest.json") + ".parquet"
    chunks = next(t for t in changed.tables if t.name == table).chunks
    assert [c.facts is None for c in chunks] == [str(c.file).endswith(chunk) for c in chunks]
    assert any(c.facts is None for c in chunks)

    # An index that cannot be read is passed over: every manifest is read, with the same result;
    # the next refresh writes it again.
    storage.write_bytes(chunk_index_key(PAIR, table), b"{not json")
    read.clear()
    assert _recorded(pair_inputs(storage, catalog, PAIR, ALL_TIME)) == _recorded(changed)
    manifests = [k for k in storage.list(f"{PAIR}/{table}") if k.endswith(".manifest.json")]
    assert set(manifests) <= set(read)
    refresh_tables(warehouse, sources, storage, threads=2)
    read.clear()
    pair_inputs(storage, catalog, PAIR, ALL_TIME)
    assert sorted(read) == sorted(index_keys)
    if isinstance(storage, LocalStorage):
        # Written once more, and then left as it is.
        files = stamps(storage)
        refresh_tables(warehouse, sources, storage, threads=2)
        assert stamps(storage) == files
