"""What the merge reads: a pair's spine and tables from the catalog and its stored chunks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.catalog import Catalog, Column, Table, TargetsTable
from bqx_assets.core.checkpoints.manifest import ChunkManifest
from bqx_assets.core.checkpoints.window import ALL_TIME
from bqx_assets.core.errors import ExtractionError
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import ChunkId, InputChunk, InputTable, pair_inputs, pair_tables
from bqx_assets.core.storage import LocalFile, LocalStorage
from bqx_assets_tests.core.merge.conftest import Appended
from bqx_assets_tests.core.merge.helpers import (
    PAIR,
    TARGETS,
    copy_tree,
    merge_to,
    minutes,
    spine_of,
    write,
)


def tiny_catalog() -> Catalog:
    def table(name: str, family: str, columns: dict[str, str]) -> Table:
        cols = tuple(Column(c, d) for c, d in columns.items())
        return Table(name, "features", family, "pair", ("eurusd",), cols)

    tables = [
        table("agg_bqx_eurusd", "agg", {"agg_mean_45": "FLOAT64", "agg_n": "INT64"}),
        table("base_bqx_eurusd", "base", {"bqx_45": "FLOAT64", "target_45": "FLOAT64"}),
    ]
    targets = TargetsTable(
        "targets_eurusd", "analytics", "eurusd", tuple(Column(t, "FLOAT64") for t in TARGETS)
    )
    return Catalog(
        "p", "features", "analytics", ("eurusd",), {t.name: t for t in tables}, {"eurusd": targets}
    )


def test_pair_tables_follow_the_catalog(tmp_path: Path) -> None:
    catalog = tiny_catalog()
    keys = minutes(range(10))
    spine = write(
        tmp_path / "targets.parquet",
        {KEY: keys, "target_a": [1.0] * 10, "target_b": [0.5] * 10},
    )
    write(
        tmp_path / "agg_bqx_eurusd.parquet",
        {KEY: keys, "agg_mean_45": [1.0] * 10, "agg_n": list(range(10))},
    )
    write(
        tmp_path / "base_bqx_eurusd.parquet",
        {KEY: keys, "bqx_45": [2.0] * 10, "target_45": [3.0] * 10},
    )
    tables = pair_tables(
        catalog, "eurusd", lambda t: (InputChunk(LocalFile(tmp_path / f"{t.name}.parquet")),)
    )
    assert [t.name for t in tables] == ["agg_bqx_eurusd", "base_bqx_eurusd"]
    assert tables[1].columns == (("bqx_45", "base_bqx__bqx_45"),)  # the leak is not written
    assert tables[1].dtypes == {"bqx_45": "FLOAT64", "target_45": "FLOAT64"}  # but checked
    assert tables[0].dtypes == {"agg_mean_45": "FLOAT64", "agg_n": "INT64"}
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    merge_to(out, spine_of(spine, catalog.targets["eurusd"].targets), tables)
    assert tuple(pq.read_schema(out).names) == catalog.training_columns("eurusd")


def test_pair_tables_on_the_production_catalog() -> None:
    catalog = Catalog.load()
    tables = pair_tables(catalog, "eurusd", lambda t: ())
    assert [t.name for t in tables] == [t.name for t in catalog.tables_for("eurusd")]
    names = [n for t in tables for _, n in t.columns or ()]
    assert names == [f.name for f in catalog.feature_columns("eurusd")]


def test_a_table_names_its_chunks() -> None:
    one = InputTable.of_files("t", "/data/a.parquet")
    assert one.where() == "table t (/data/a.parquet)"
    three = InputTable.of_files("t", "/data/a.parquet", "/data/b.parquet", "/data/c.parquet")
    assert three.where() == "table t (/data/a.parquet and 2 more chunks)"
    assert InputTable("t", ()).where() == "table t (no chunk)"
    assert all(c.id is None and c.facts is None for c in three.chunks)


def test_a_pair_s_inputs_are_its_verified_chunks_with_their_ids_and_facts(
    appended: Appended,
) -> None:
    catalog, storage = appended.catalog, appended.storage()
    inputs = pair_inputs(storage, catalog, PAIR, ALL_TIME)
    targets = catalog.targets[PAIR]
    assert inputs.spine.name == targets.name
    assert inputs.spine.columns == tuple((t, t) for t in targets.targets)
    assert [t.name for t in inputs.tables] == [t.name for t in catalog.tables_for(PAIR)]
    assert inputs.chunks == sum(len(t.chunks) for t in inputs.tables) > len(inputs.tables)
    for table in [inputs.spine, *inputs.tables]:
        starts = [c.id.start for c in table.chunks if c.id is not None]
        assert len(starts) == len(table.chunks) and starts == sorted(starts), table.name
        for chunk in table.chunks:
            assert isinstance(chunk.file, LocalFile) and chunk.facts is not None
            # The id's digest is the chunk's bytes as its manifest records them.
            manifest_path = Path(chunk.file.uri).with_suffix(".manifest.json")
            manifest = ChunkManifest.from_json(manifest_path.read_bytes())
            assert manifest is not None and chunk.id is not None
            assert chunk.id.digest == f"{manifest.crc32c}:{manifest.bytes}"
            assert chunk.file.size == manifest.bytes
            assert sum(chunk.facts.rows) == manifest.rows


def test_recorded_facts_that_disagree_with_their_manifest_are_not_used(
    appended: Appended, tmp_path: Path
) -> None:
    ckpt = copy_tree(appended.after, tmp_path / "ckpt")
    manifest_path = sorted(ckpt.glob(f"**/agg_{PAIR}/*.manifest.json"))[-1]
    record = json.loads(manifest_path.read_bytes())
    record["facts"]["rows"] = [n + 1 for n in record["facts"]["rows"]]
    manifest_path.write_text(json.dumps(record))
    inputs = pair_inputs(LocalStorage(ckpt), appended.catalog, PAIR, ALL_TIME)
    table = next(t for t in inputs.tables if t.name == f"agg_{PAIR}")
    assert table.chunks[-1].facts is None  # opened to be planned
    assert all(c.facts is not None for c in table.chunks[:-1])
    assert isinstance(table.chunks[-1].id, ChunkId)


def test_a_pair_without_a_table_s_chunks_is_an_error_naming_it(
    appended: Appended, tmp_path: Path
) -> None:
    ckpt = copy_tree(appended.after, tmp_path / "ckpt")
    (folder,) = list(ckpt.glob(f"**/agg_{PAIR}"))
    shutil.rmtree(folder)
    with pytest.raises(ExtractionError, match=rf"pair {PAIR}: 1 of \d+ tables .*agg_{PAIR}"):
        pair_inputs(LocalStorage(ckpt), appended.catalog, PAIR, ALL_TIME)
