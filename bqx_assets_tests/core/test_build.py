"""`build_training_file`: a pair merged into its output root and gate-checked there, and the
training files it writes byte for byte as main wrote them before the core moved to packages."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bqx_assets.core.build import (
    RESTART_WAITS_S,
    TrainingBuild,
    build_training_file,
    redone_if_replaced,
)
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.checkpoints.window import ALL_TIME, TrainingWindow
from bqx_assets.core.errors import BqxError, MergeError, ReplacedWhileRead
from bqx_assets.core.gate.profile import load_profile, profile_key
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import publish_training_file
from bqx_assets.core.storage import LocalStorage, Storage
from bqx_assets.core.storage.gcs import GCSStorage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.core.merge.helpers import copy_tree, sources

PAIR = "eurusd"
GATE = Thresholds(min_rows=100)
"""The production gate but for the row count: the mini warehouses are short."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refresh_pairs(
    warehouse: Path, catalog: Catalog, root: Path, pairs: tuple[str, ...]
) -> LocalStorage:
    """Every table of each pair refreshed into the checkpoint root `root`, all time."""
    storage = LocalStorage(root, durable=False)
    wh = EmbeddedWarehouse(warehouse)
    try:
        for pair in pairs:
            refresh_tables(wh, sources(catalog, pair), storage, window=ALL_TIME, threads=2)
    finally:
        wh.close()
    return storage


def build(
    checkpoints: Storage, output: Storage, catalog: Catalog, pair: str = PAIR, **kwargs: object
) -> TrainingBuild:
    return build_training_file(checkpoints, output, catalog, pair, TrainingWindow(), GATE, **kwargs)  # type: ignore[arg-type]


def build_and_publish(
    checkpoints: Storage, output: Storage, catalog: Catalog, pair: str
) -> tuple[TrainingBuild, str]:
    """The pair built and published as the Dagster asset and its IO manager do; the published
    file's SHA-256."""
    built = build(checkpoints, output, catalog, pair)
    assert built.report.passed, built.report.failed
    result = publish_training_file(output, built.training_file)
    assert result.published
    data = output.read_bytes(training_file_key(pair))
    assert data is not None
    return built, sha256(data)


def hidden(root: Path) -> list[str]:
    """Temporary files under a local output root (`.{name}.{uuid}.tmp`)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


# -- a pair built into a local output root -----------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, mini: tuple[Catalog, Path], mini_warehouse: Path
) -> Path:
    """The mini warehouse's eurusd tables refreshed into a checkpoint root (read only: a test
    that changes it works on a copy)."""
    root = tmp_path_factory.mktemp("build") / "ckpt"
    refresh_pairs(mini_warehouse, mini[0], root, (PAIR,))
    return root


def test_a_pair_is_merged_and_checked_in_its_output_root(
    mini: tuple[Catalog, Path], checkpoints: Path, tmp_path: Path
) -> None:
    catalog, _ = mini
    output = LocalStorage(tmp_path / "out")
    built = build(LocalStorage(checkpoints), output, catalog)
    assert (built.pair, built.window.training, built.cleared, built.history) == (
        PAIR,
        ALL_TIME,
        (),
        None,
    )
    # Merged into a temporary file of the output root and checked there: not published yet.
    staged = built.merge.staged
    assert Path(staged.info.uri).parent == tmp_path / "out"
    assert hidden(tmp_path / "out") == [staged.key]
    assert output.stat(training_file_key(PAIR)) is None
    assert built.report.passed and built.report.path == staged.info.uri
    assert (built.report.rows, built.report.columns) == (built.merge.rows, built.merge.columns)
    assert built.merge.columns == len(catalog.training_columns(PAIR))
    assert pq.read_schema(staged.info.uri).names == list(catalog.training_columns(PAIR))
    # The file carries its profile; it becomes the pair's when the file is published.
    training = built.training_file
    assert (training.pair, training.staged, training.passed) == (PAIR, staged, True)
    assert training.profile is not None and training.profile.pair == PAIR
    assert load_profile(output, PAIR) is None
    assert training.report == built.report.to_dict()

    result = publish_training_file(output, training)
    assert result.published and hidden(tmp_path / "out") == []
    published = load_profile(output, PAIR)
    assert published is not None and training.profile is not None
    assert [f.to_json() for f in published.families] == [
        f.to_json() for f in training.profile.families
    ]  # as stored: shares rounded to 6 places
    # The next build is judged against it; nothing changed: the same file.
    again = build(LocalStorage(checkpoints), output, catalog)
    assert again.history is not None and again.history == load_profile(output, PAIR)
    assert again.report.passed
    assert publish_training_file(output, again.training_file).unchanged
    assert hidden(tmp_path / "out") == []


def test_a_failing_gate_publishes_neither_file_nor_profile(
    mini: tuple[Catalog, Path], checkpoints: Path, tmp_path: Path
) -> None:
    output = LocalStorage(tmp_path / "out")
    strict = Thresholds(min_rows=100_000)
    built = build_training_file(
        LocalStorage(checkpoints), output, mini[0], PAIR, TrainingWindow(), strict
    )
    assert not built.report.passed and "row_count" in built.report.failed
    assert not built.training_file.passed and built.training_file.profile is None
    # What the IO manager does with it: quarantined, with its report; nothing published.
    result = publish_training_file(output, built.training_file)
    assert not result.published and result.report_uri is not None
    assert output.stat(training_file_key(PAIR)) is None and output.stat(profile_key(PAIR)) is None
    assert hidden(tmp_path / "out") == []


@pytest.mark.parametrize("stage", ["merge", "validation"])
def test_an_error_leaves_nothing_in_the_output_root_but_what_was_there(
    mini: tuple[Catalog, Path],
    checkpoints: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
) -> None:
    catalog, _ = mini
    ckpt = LocalStorage(copy_tree(checkpoints, tmp_path / "ckpt"))
    output = LocalStorage(tmp_path / "out")
    output.write_bytes(training_file_key(PAIR), b"the file published before")
    before = {k: output.stat(k) for k in output.list()}
    progress = None
    if stage == "merge":
        # A chunk gone after its table was checked (another writer compacted it, say).
        chunk = sorted((tmp_path / "ckpt").glob(f"**/agg_{PAIR}/*.parquet"))[-1]

        def progress(line: str) -> None:
            if line.startswith("inputs checked"):
                chunk.unlink()

        expected = rf"table agg_{PAIR} .*does not exist"
    else:

        def unreadable(*_args: object, **_kwargs: object) -> None:
            raise MergeError("the staged file cannot be read")

        monkeypatch.setattr("bqx_assets.core.build.validate_training_file", unreadable)
        expected = "cannot be read"
    with pytest.raises(MergeError, match=expected):
        build(ckpt, output, catalog, progress=progress)
    assert {k: output.stat(k) for k in output.list()} == before
    assert output.read_bytes(training_file_key(PAIR)) == b"the file published before"
    assert hidden(tmp_path / "out") == []


def test_a_dead_writer_s_temporaries_are_cleared_first(
    mini: tuple[Catalog, Path], checkpoints: Path, tmp_path: Path
) -> None:
    output = LocalStorage(tmp_path / "out")
    (tmp_path / "out").mkdir()
    dead = tmp_path / "out" / f".{training_file_key(PAIR)}.0123456789abcdef.tmp"
    dead.write_bytes(b"half a training file")
    other = tmp_path / "out" / ".training_gbpusd.parquet.0123456789abcdef.tmp"
    other.write_bytes(b"another pair's writer")
    built = build(LocalStorage(checkpoints), output, mini[0])
    assert built.cleared == (dead.name,)
    assert not dead.exists() and other.exists()  # another pair's may be running
    output.discard(built.merge.staged)


# -- a shared refresh while a pair merges -------------------------------------------------------
@pytest.mark.parametrize("root", ["local", pytest.param("gcs", marks=pytest.mark.emulator)])
def test_a_build_meeting_a_shared_refresh_starts_again_from_the_refreshed_checkpoints(
    warehouses: Warehouses,
    mini: tuple[Catalog, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    root: str,
) -> None:
    """The shared checkpoints (the same for every pair) refreshed after an upstream append,
    while a pair merges, replace chunks the merge has opened: the build fails on the first
    read of one (nothing written), and `redone_if_replaced` starts it again from the
    checkpoints as they are then, once; the file is the one a build started afterwards
    writes."""
    catalog, _ = mini
    path = warehouses.copy(tmp_path / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=600)
    if root == "gcs":
        ckpt: Storage = GCSStorage(request.getfixturevalue("gcs_bucket"), "ckpt")
    else:
        ckpt = LocalStorage(tmp_path / "ckpt", durable=False)
    shared = [t for t in catalog.tables_for(PAIR) if t.scope == "shared"]
    with closing(EmbeddedWarehouse(path, read_only=False)) as wh:
        refresh_tables(wh, sources(catalog, PAIR), ckpt, window=ALL_TIME, threads=2)
        for table in shared:
            wh.append_minutes(table.dataset, table.name, 60)
    output = LocalStorage(tmp_path / "out")
    starts: list[str] = []

    def refresh_shared_once(line: str) -> None:
        if line.startswith("inputs checked") and len(starts) == 1:
            starts.append("refreshed")
            with closing(EmbeddedWarehouse(path)) as source:
                refresh_tables(source, shared, ckpt, window=ALL_TIME, threads=2)

    def attempt() -> TrainingBuild:
        starts.append("started")
        return build(ckpt, output, catalog, progress=refresh_shared_once)

    # Not started again: the merge's error, from the chunk replaced under it.
    with pytest.raises(BqxError) as caught:
        redone_if_replaced(attempt, starts.append, waits_s=())
    assert starts == ["started", "refreshed"]
    chain = [caught.value]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)  # type: ignore[arg-type]
    replaced = [e for e in chain if isinstance(e, ReplacedWhileRead)]
    assert replaced and any(t.name in str(replaced[0]) for t in shared), chain
    assert hidden(tmp_path / "out") == [] and list(output.list()) == []

    # Started again: the chunks are the refreshed ones; the file is what a later build writes.
    starts.clear()
    with closing(EmbeddedWarehouse(path, read_only=False)) as wh:
        for table in shared:  # the refresh above made them current: the next one rewrites
            wh.append_minutes(table.dataset, table.name, 60)
    warnings: list[str] = []
    built = redone_if_replaced(attempt, warnings.append, waits_s=(0, 0))
    assert starts == ["started", "refreshed", "started"]
    assert len(warnings) == 1 and "starting again in 0 s" in warnings[0], warnings
    assert "(attempt 2 of 3)" in warnings[0]
    assert built.report.passed, built.report.failed
    redone = Path(built.merge.staged.info.uri).read_bytes()
    output.discard(built.merge.staged)
    later = build(ckpt, output, catalog)
    assert Path(later.merge.staged.info.uri).read_bytes() == redone
    output.discard(later.merge.staged)
    assert hidden(tmp_path / "out") == []


def test_only_a_replaced_checkpoint_starts_a_build_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any other error is raised at once; a replaced checkpoint met at every start fails the
    last one, with its own error, after the waits of RESTART_WAITS_S."""
    slept: list[float] = []
    monkeypatch.setattr("bqx_assets.core.build.time.sleep", slept.append)
    calls: list[int] = []

    def failing(error: Exception) -> Callable[[], None]:
        def attempt() -> None:
            calls.append(1)
            raise error

        return attempt

    warnings: list[str] = []
    with pytest.raises(MergeError, match="not a readable parquet file"):
        redone_if_replaced(failing(MergeError("not a readable parquet file")), warnings.append)
    assert (len(calls), warnings) == (1, [])
    calls.clear()
    try:
        raise ReplacedWhileRead("gs://b/ckpt/x.parquet generation 1 was replaced")
    except ReplacedWhileRead as inner:
        wrapped = MergeError("table x: gs://b/ckpt/x.parquet generation 1 was replaced")
        wrapped.__cause__ = inner
    with pytest.raises(MergeError, match="table x"):
        redone_if_replaced(failing(wrapped), warnings.append)
    assert len(calls) == 3 and len(warnings) == 2 and slept == list(RESTART_WAITS_S) == [30, 90]
    assert "starting again in 30 s" in warnings[0] and "(attempt 3 of 3)" in warnings[1]
    assert all("gs://b/ckpt/x.parquet generation 1 was replaced" in w for w in warnings)


# -- byte identity with main before the move ---------------------------------------------------
RECORDED_WITH = "26.0.1"
"""The pyarrow version the digests were recorded with: the footer's created_by and the layout
digest in it name the writer, so another pyarrow writes other bytes."""
recorded = pytest.mark.skipif(
    pa.__version__ != RECORDED_WITH,
    reason=f"digests recorded with pyarrow {RECORDED_WITH}, this is {pa.__version__}",
)
START = datetime(2024, 1, 22, tzinfo=UTC)
ROWS, APPENDED = 12_600, 3_000
BUILT = {
    "eurusd": "1793d230db3592995f224b038319a6811056d0eb66377f6e2750d28e92f4ef68",
    "gbpusd": "262ea2f4b590cd0800114c5985d7b9ad506c5324882b64797a1430e1426c5211",
}
"""SHA-256 of each pair's training file as main (095153a) built it: the mini catalog, 12,600
minutes from Monday, January 22, 2024, every table refreshed into a local checkpoint root.
Recorded again for issue 29 when the coverage record (version 4) gained the newest day's
reference minutes: the row groups' bytes are main's, only the footer's `bqx:coverage` value
differs (main's digests: eurusd 1616d723..., gbpusd ecfb50be...)."""
REFRESHED = {
    "eurusd": "b32e57d65d998b94ec19085b1aa8c639660925c0d266a0ffe628d7e066ed5f09",
    "gbpusd": "17892b5d961df036beeb3e3ae77ff34f978c284098ad623bf757e14ffad60304",
}
"""The same after 3,000 minutes appended, the chunks refreshed and the file merged with the
published one as previous (3 row groups, 1 copied; 69 chunks, 55 opened)."""
FULL_EURUSD = "63797a27ea6f633a296c623a76ba8a4254f5d8a0210f53dd5ac0c2a25ce33c35"
"""The full catalog's eurusd (17,031 columns), 1,500 minutes from the default start (main's,
before the coverage record's version 4: 6ac197ed...)."""


@dataclass(frozen=True)
class Golden:
    catalog: Catalog
    before: Path
    """The checkpoint root as first refreshed (a copy, kept for the GCS output root)."""
    after: Path
    """The checkpoint root refreshed again after the append."""
    built: dict[str, tuple[TrainingBuild, str]]
    refreshed: dict[str, tuple[TrainingBuild, str]]
    scratch: dict[str, tuple[TrainingBuild, str]]
    """eurusd from a checkpoint root refreshed from scratch after the append, into a new
    output root."""


@pytest.fixture(scope="module")
def golden(
    tmp_path_factory: pytest.TempPathFactory, warehouses: Warehouses, mini: tuple[Catalog, Path]
) -> Golden:
    catalog, _ = mini
    root = tmp_path_factory.mktemp("golden")
    path = warehouses.copy(root / "w.duckdb", catalog, pairs=MINI_PAIRS, rows=ROWS, start=START)
    ckpt = refresh_pairs(path, catalog, root / "ckpt", MINI_PAIRS)
    output = LocalStorage(root / "out")
    built = {p: build_and_publish(ckpt, output, catalog, p) for p in MINI_PAIRS}
    copy_tree(root / "ckpt", root / "before")
    writer = EmbeddedWarehouse(path, read_only=False)
    try:
        writer.append(APPENDED)
    finally:
        writer.close()
    refresh_pairs(path, catalog, root / "ckpt", MINI_PAIRS)
    refreshed = {p: build_and_publish(ckpt, output, catalog, p) for p in MINI_PAIRS}
    fresh = refresh_pairs(path, catalog, root / "scratch", (PAIR,))
    scratch = {PAIR: build_and_publish(fresh, LocalStorage(root / "scratch_out"), catalog, PAIR)}
    return Golden(catalog, root / "before", root / "ckpt", built, refreshed, scratch)


@recorded
def test_training_files_are_byte_identical_to_main_s(golden: Golden) -> None:
    assert {p: digest for p, (_, digest) in golden.built.items()} == BUILT
    for pair, (built, _) in golden.built.items():
        merge = built.merge
        assert (merge.rows, merge.row_groups, merge.row_groups_reused) == (ROWS, 2, 0)
        assert merge.columns == len(golden.catalog.training_columns(pair))
        assert merge.chunks == merge.chunks_opened == 28


@recorded
def test_a_refreshed_training_file_is_byte_identical_to_main_s(golden: Golden) -> None:
    assert {p: digest for p, (_, digest) in golden.refreshed.items()} == REFRESHED
    for built, _ in golden.refreshed.values():
        merge = built.merge
        assert (merge.rows, merge.row_groups, merge.row_groups_reused) == (ROWS + APPENDED, 3, 1)
        assert (merge.chunks, merge.chunks_opened) == (69, 55)
        assert built.history is not None  # judged against the first build's profile


def test_a_refreshed_training_file_is_the_file_a_build_from_scratch_writes(
    golden: Golden,
) -> None:
    for pair, (scratch, scratch_digest) in golden.scratch.items():
        built, digest = golden.refreshed[pair]
        assert digest == scratch_digest, pair
        assert scratch.merge.row_groups_reused == 0 < built.merge.row_groups_reused
        assert built.merge.coverage == scratch.merge.coverage


@pytest.mark.emulator
def test_a_gcs_output_root_gives_the_same_bytes(golden: Golden, gcs_bucket: str) -> None:
    """Built into a GCS output root (streamed, composed from segments), then refreshed with
    the published object as previous (its unchanged row group composed in place): the bytes
    of the local output root's files."""
    output = GCSStorage(gcs_bucket, "out")
    _, digest = build_and_publish(LocalStorage(golden.before), output, golden.catalog, PAIR)
    assert digest == golden.built[PAIR][1]
    refreshed, digest = build_and_publish(LocalStorage(golden.after), output, golden.catalog, PAIR)
    assert refreshed.merge.row_groups_reused == 1
    assert digest == golden.refreshed[PAIR][1]
    assert not [k for k in output.list() if k.endswith(".tmp")]
    assert list(output.temporaries("")) == []


@recorded
@pytest.mark.slow
def test_a_full_catalog_training_file_is_byte_identical_to_main_s(
    warehouses: Warehouses, catalog: Catalog, tmp_path: Path
) -> None:
    path = warehouses.path(catalog, pairs=(PAIR,), rows=1500)
    subset = catalog.subset([PAIR])
    ckpt = refresh_pairs(path, subset, tmp_path / "ckpt", (PAIR,))
    output = LocalStorage(tmp_path / "out")
    built = build(ckpt, output, subset)
    assert (built.merge.rows, built.merge.columns) == (1500, 17_031)
    with open(built.merge.staged.info.uri, "rb") as f:
        assert sha256(f.read()) == FULL_EURUSD
    output.discard(built.merge.staged)
    assert hidden(tmp_path / "out") == []
