"""Planning: each table's chunks checked against the catalog from their recorded facts or by
opening them, output names checked, and only the chunks the encoded row groups read opened."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.checkpoints.facts import ChunkFacts
from bqx_assets.core.checkpoints.window import ALL_TIME
from bqx_assets.core.errors import MergeError
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge import InputChunk, InputTable, merge_checkpoints, pair_inputs
from bqx_assets.core.merge.plan import type_errors
from bqx_assets.core.storage import LocalFile, LocalStorage
from bqx_assets_tests.core.merge.conftest import Appended
from bqx_assets_tests.core.merge.helpers import (
    PAIR,
    copy_tree,
    facts_of,
    feature,
    merge_pair,
    merge_to,
    minutes,
    same_file,
    spine_of,
    table_of,
    temporaries,
    write,
)

DECLARED = {"columns": (("x", "f__x"), ("n", "f__n")), "dtypes": {"x": "FLOAT64", "n": "INT64"}}


@pytest.fixture
def spine(tmp_path: Path) -> Path:
    order = [3, 0, 1, 2, 9, 8, 4, 5, 6, 7]
    return write(
        tmp_path / "targets.parquet",
        {
            KEY: minutes(order),
            "target_a": [float(m) for m in order],
            "target_b": [None if m == 9 else -float(m) for m in order],
        },
    )


# -- names ------------------------------------------------------------------------------------
def test_a_name_collision_is_an_error_naming_both_sources(tmp_path: Path, spine: Path) -> None:
    one = table_of(
        "agg_bqx_eurusd", feature(tmp_path, "one", range(10)), columns=(("x", "agg__x"),)
    )
    two = table_of(
        "agg_idx_eurusd", feature(tmp_path, "two", range(10)), columns=(("x", "agg__x"),)
    )
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    with pytest.raises(
        MergeError, match=r"agg__x.*agg_bqx_eurusd\.x \(.*one\.parquet\).*agg_idx_eurusd\.x"
    ):
        merge_to(out, spine_of(spine), [one, two])
    clash = table_of("f", feature(tmp_path, "f", range(10)), columns=(("x", "target_a"),))
    with pytest.raises(MergeError, match=r"'target_a' comes from both targets\.target_a and f\.x"):
        merge_to(out, spine_of(spine), [clash])
    key = table_of("f", feature(tmp_path, "f", range(10)), columns=(("x", KEY),))
    with pytest.raises(MergeError, match=rf"'{KEY}' comes from both targets\.{KEY} and f\.x"):
        merge_to(out, spine_of(spine), [key])
    assert list(out.parent.iterdir()) == []


# -- types ------------------------------------------------------------------------------------
def test_type_errors_name_each_declared_column_missing_or_of_another_type() -> None:
    found = {"x": ("double", 0), "n": ("string", 3), "leak": ("double", 0)}
    declared = {"x": "FLOAT64", "n": "INT64", "b": "BOOL", "leak": "FLOAT64"}
    assert type_errors(declared, found) == ["n is string, expected INT64", "b is missing"]
    assert type_errors({"x": "FLOAT64"}, found) == []  # undeclared columns are not checked


def test_an_undeclared_table_s_chunks_must_share_the_first_one_s_columns(
    tmp_path: Path, spine: Path
) -> None:
    a = feature(tmp_path, "a", [0, 1, 2])
    b = write(tmp_path / "b.parquet", {KEY: minutes([3, 4]), "x": [3.0, 4.0]})  # no column n
    with pytest.raises(
        MergeError,
        match=r"table f .*chunk .*b\.parquet has other columns or types than .*a\.parquet",
    ):
        merge_to(tmp_path / "out.parquet", spine_of(spine), [table_of("f", a, b)])
    assert temporaries(tmp_path) == []


def test_a_written_column_without_a_declared_type_is_an_error(tmp_path: Path, spine: Path) -> None:
    f = table_of(
        "f", feature(tmp_path, "f", [0, 1]), columns=(("x", "f__x"),), dtypes={"n": "INT64"}
    )
    with pytest.raises(MergeError, match=r"table f .*: column x has no declared type"):
        merge_to(tmp_path / "out.parquet", spine_of(spine), [f])
    assert temporaries(tmp_path) == []


# -- facts ------------------------------------------------------------------------------------
def test_a_table_planned_from_its_chunks_facts_merges_as_when_its_files_are_read(
    tmp_path: Path, spine: Path
) -> None:
    a = feature(tmp_path, "a", [7, 2, 9, -1, 3])  # not in key order, a key outside the spine
    b = feature(tmp_path, "b", [0, 5, 100])
    read = merge_to(tmp_path / "read.parquet", spine_of(spine), [table_of("f", a, b, **DECLARED)])
    planned = merge_to(
        tmp_path / "planned.parquet",
        spine_of(spine),
        [table_of("f", a, b, facts=(facts_of(a), facts_of(b)), **DECLARED)],
    )
    # From scratch every row group is encoded, so both chunks are opened either way.
    assert read.chunks_opened == planned.chunks_opened == planned.chunks == 2
    assert (tmp_path / "read.parquet").read_bytes() == (tmp_path / "planned.parquet").read_bytes()
    assert planned.coverage == read.coverage

    # A key in two chunks is found from the facts alone.
    c = feature(tmp_path, "c", [5, 6])
    facts = (facts_of(a), facts_of(b), facts_of(c))
    with pytest.raises(MergeError, match=r"table f .* duplicate interval_time .*00:05:00"):
        merge_to(
            tmp_path / "duplicate.parquet",
            spine_of(spine),
            [table_of("f", a, b, c, facts=facts, **DECLARED)],
        )
    assert not (tmp_path / "duplicate.parquet").exists()

    # A record that is not one is not used; one whose keys are not what its row groups say
    # is found when the table is planned: its chunks are then opened, as without facts.
    assert ChunkFacts.from_json({"rows": [1]}) is None
    claims_more = ChunkFacts.from_json({**facts_of(a).to_json(), "rows": [6]})  # five keys packed
    assert claims_more is not None
    with pytest.raises(ValueError, match="packed keys"):
        claims_more.keys()
    opened = merge_to(
        tmp_path / "opened.parquet",
        spine_of(spine),
        [table_of("f", a, b, facts=(claims_more, facts_of(b)), **DECLARED)],
    )
    assert opened.coverage == read.coverage
    assert (tmp_path / "opened.parquet").read_bytes() == (tmp_path / "read.parquet").read_bytes()
    assert temporaries(tmp_path) == []


def test_facts_against_the_catalog_are_an_error_before_the_chunk_is_opened(
    tmp_path: Path, spine: Path
) -> None:
    """A chunk whose recorded facts hold another type than the catalog declares is refused
    from its facts, naming the table and the chunk; its file is not needed to tell."""
    a = feature(tmp_path, "a", [0, 1, 2])
    facts = facts_of(a)
    other = ChunkFacts(facts.rows, facts.names, ("int64", "int64"), facts.nulls, facts.packed_keys)
    a.unlink()
    with pytest.raises(
        MergeError,
        match=r"table f .*chunk .*a\.parquet has other columns or types than the catalog "
        r"declares: x is int64, expected FLOAT64",
    ):
        merge_to(
            tmp_path / "out.parquet", spine_of(spine), [table_of("f", a, facts=[other], **DECLARED)]
        )
    assert temporaries(tmp_path) == []


def test_a_pair_read_from_its_chunk_files_merges_to_the_file_its_recorded_facts_give(
    appended: Appended, tmp_path: Path
) -> None:
    """A single parquet file is a table of one chunk, planned by the same path as a stored
    chunk: the pair's tables made of their chunks' files (no facts: every chunk opened) give
    the training file their chunks' recorded facts give. Without the chunks' ids nothing tells
    an unchanged row group: none is copied, and the footer records no signature."""
    inputs = pair_inputs(appended.storage(), appended.catalog, PAIR, ALL_TIME)
    assert all(c.facts is not None and c.id is not None for t in inputs.tables for c in t.chunks)

    def recorded(table: InputTable) -> InputTable:
        chunks = tuple(InputChunk(c.file, facts=c.facts) for c in table.chunks)
        return InputTable(table.name, chunks, table.columns, table.dtypes)

    def files(table: InputTable) -> InputTable:
        paths = [Path(c.file.uri) for c in table.chunks]
        return InputTable.of_files(table.name, *paths, columns=table.columns, dtypes=table.dtypes)

    planned = merge_to(
        tmp_path / "planned.parquet", recorded(inputs.spine), [recorded(t) for t in inputs.tables]
    )
    read = merge_to(
        tmp_path / "read.parquet",
        files(inputs.spine),
        [files(t) for t in inputs.tables],
        previous=LocalFile(appended.first),
    )
    assert read.row_groups_reused == 0
    assert read.chunks_opened == read.chunks == planned.chunks == inputs.chunks
    assert planned.chunks_opened <= planned.chunks
    same_file(tmp_path / "read.parquet", tmp_path / "planned.parquet")
    assert read.coverage == planned.coverage == appended.scratch_report.coverage
    # The rows and columns of the pair's training file, as a merge of its stored chunks writes.
    assert pq.read_table(tmp_path / "read.parquet").equals(pq.read_table(appended.scratch))


def _rewrite_manifests(root: Path, pattern: str, change: Callable[[dict], None]) -> list[Path]:
    """Apply `change` to the JSON of the chunk manifests matching `pattern` under `root`."""
    paths = sorted(root.glob(f"**/{pattern}.manifest.json"))
    for path in paths:
        record = json.loads(path.read_bytes())
        change(record)
        path.write_text(json.dumps(record))
    return paths


def test_chunks_without_recorded_facts_are_opened_and_give_the_same_file(
    appended: Appended, tmp_path: Path
) -> None:
    """Manifests written before chunks' facts were recorded: the merge opens every chunk and
    reads its key column, and writes the same file, still copying the unchanged row groups."""
    planned = merge_pair(
        appended.storage(),
        appended.catalog,
        tmp_path / "planned.parquet",
        LocalFile(appended.first),
    )
    assert planned.chunks_opened < planned.chunks
    ckpt = copy_tree(appended.after, tmp_path / "ckpt")
    assert _rewrite_manifests(ckpt, "*", lambda m: m.pop("facts"))
    storage = LocalStorage(ckpt)
    inputs = pair_inputs(storage, appended.catalog, PAIR, ALL_TIME)
    assert all(c.facts is None for t in inputs.tables for c in t.chunks)
    opened = merge_pair(
        storage, appended.catalog, tmp_path / "opened.parquet", LocalFile(appended.first)
    )
    assert opened.chunks_opened == opened.chunks == planned.chunks
    assert opened.row_groups_reused == planned.row_groups_reused > 0
    same_file(tmp_path / "opened.parquet", tmp_path / "planned.parquet")
    same_file(tmp_path / "opened.parquet", appended.scratch)
    assert opened.coverage == planned.coverage


def test_chunks_opened_beyond_the_kept_footers_are_read_again_into_the_same_file(
    appended: Appended, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that opens more local chunks than it keeps footers of reads each footer again
    for its pieces, and writes the same file as one that keeps them all."""
    footers_read = 0
    real = pq.ParquetFile

    def counted(source: object, **kwargs: object) -> pq.ParquetFile:
        nonlocal footers_read
        footers_read += kwargs.get("metadata") is None
        return real(source, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counted)
    previous = LocalFile(appended.first)
    inputs = pair_inputs(appended.storage(), appended.catalog, PAIR, ALL_TIME)
    report = merge_to(tmp_path / "kept.parquet", inputs.spine, inputs.tables, previous=previous)
    keeping, footers_read = footers_read, 0
    monkeypatch.setattr("bqx_assets.core.merge.plan.KEPT_FOOTERS", 0)
    rereading = merge_to(
        tmp_path / "reread.parquet", inputs.spine, inputs.tables, previous=previous
    )
    assert report.chunks_opened == rereading.chunks_opened > 0
    # Each opened chunk's footer is read once more, by its pieces, when it is not kept.
    assert footers_read - keeping == rereading.chunks_opened
    same_file(tmp_path / "reread.parquet", appended.scratch)
    same_file(tmp_path / "kept.parquet", appended.scratch)


def test_a_chunk_unlike_its_recorded_facts_is_an_error_naming_it(
    appended: Appended, tmp_path: Path
) -> None:
    """The facts of a chunk the merge reads rows from are checked against the chunk when it
    is opened: a chunk whose row groups are not those its manifest records fails the merge,
    naming the table and the chunk, and nothing is written."""
    ckpt = copy_tree(appended.after, tmp_path / "ckpt")

    def split_rows(manifest: dict) -> None:
        rows = manifest["facts"]["rows"]
        manifest["facts"]["rows"] = [rows[0] - 1, 1, *rows[1:]]

    newest = _rewrite_manifests(ckpt, f"agg_{PAIR}/*", lambda _: None)[-1]
    _rewrite_manifests(newest.parent, newest.name.removesuffix(".manifest.json"), split_rows)
    out = tmp_path / "out" / "training.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the file published before")
    chunk = newest.name.removesuffix(".manifest.json") + ".parquet"
    inputs = pair_inputs(LocalStorage(ckpt), appended.catalog, PAIR, ALL_TIME)
    sink = LocalStorage(out.parent).stage(out.name)
    with pytest.raises(MergeError, match=rf"table agg_{PAIR} .*{chunk} has row groups of"):
        merge_checkpoints(inputs.spine, inputs.tables, sink, previous=LocalFile(appended.first))
    assert out.read_bytes() == b"the file published before"
    assert temporaries(out.parent) == []


def test_spine_columns_are_its_declared_ones(tmp_path: Path, spine: Path) -> None:
    """The spine contributes the columns it declares, in their order, and nothing else."""
    f = table_of("f", feature(tmp_path, "f", [0]))
    merge_to(tmp_path / "one.parquet", spine_of(spine, ["target_b"]), [f])
    assert pq.read_schema(tmp_path / "one.parquet").names == [KEY, "target_b", "f__x", "f__n"]
    merge_to(tmp_path / "none.parquet", spine_of(spine, []), [f])
    assert pq.read_schema(tmp_path / "none.parquet").names == [KEY, "f__x", "f__n"]
