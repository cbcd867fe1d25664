"""publish_training_file and clear_dead_writes on a local root and on GCS (fake-gcs-server):
published with the previous version kept, unchanged, or quarantined; no temporary left."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from bqx_assets.core.errors import StorageError
from bqx_assets.core.gate.profile import (
    Profile,
    build_profile,
    history_key,
    load_history,
    load_profile,
    profile_key,
    publish_profile,
)
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import (
    TrainingFile,
    clear_dead_writes,
    latest_report,
    publish_training_file,
    quarantine_key,
    report_key,
    version_key,
)
from bqx_assets.core.storage import (
    LocalStorage,
    ObjectInfo,
    StagedFile,
    Storage,
    bytes_crc32c,
    open_storage,
)
from bqx_assets_tests.conftest import gcs_as_google_answers
from emulators.gcs import GCSEmulator

CHUNK = 256 * 1024  # the smallest chunk a resumable upload accepts
KEY = training_file_key("eurusd")
NOW = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
REPORT = {"row_count": {"passed": False, "actual": 100, "expected": 177_748}}

ROOTS = ["local", pytest.param("gcs", marks=pytest.mark.emulator)]


@pytest.fixture(params=ROOTS)
def output(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """An output root: a local folder, or a bucket's top level as in production."""
    if request.param == "local":
        return LocalStorage(tmp_path / "output")
    bucket = request.getfixturevalue("gcs_bucket")
    from bqx_assets.core.storage.gcs import GCSStorage

    return GCSStorage(bucket, chunk_size=CHUNK)


def _staged(storage: Storage, data: bytes, key: str = KEY) -> StagedFile:
    """A training file streamed into the root beside `key` and committed, not published: the
    magic, row groups of 100,000 bytes written in pieces, a footer."""
    sink = storage.stage(key)
    sink.write_segment(data[:4])
    body = data[4:-8]
    for start in range(0, len(body), 100_000):
        for piece in range(start, min(start + 100_000, len(body)), 30_000):
            sink.write(body[piece : min(piece + 30_000, start + 100_000, len(body))])
        sink.end_segment()
    sink.write(data[-8:])
    return sink.commit()


def _file(size: int) -> bytes:
    return b"PAR1" + os.urandom(size - 12) + b"PAR1PAR1"


def _temporaries(storage: Storage) -> list[str]:
    return [k for folder in ("", "versions", "quarantine") for k in storage.temporaries(folder)]


def _identity(info: ObjectInfo | None) -> tuple[Any, ...] | None:
    return None if info is None else (info.uri, info.size, info.crc32c, info.generation)


def test_a_passed_file_is_published_and_the_previous_one_kept_under_versions(
    output: Storage,
) -> None:
    v1 = _file(3 * CHUNK + 5)
    first = publish_training_file(output, TrainingFile("eurusd", _staged(output, v1), True))
    assert first.published and not first.unchanged and first.previous_uri is None
    assert first.uri == output.uri_of(KEY)
    assert (first.size, first.crc32c) == (len(v1), bytes_crc32c(v1))
    assert output.read_bytes(KEY) == v1
    assert _temporaries(output) == []
    published_v1 = output.stat(KEY)
    assert published_v1 is not None

    v2 = _file(2 * CHUNK)
    second = publish_training_file(output, TrainingFile("eurusd", _staged(output, v2), True))

    assert second.published and not second.unchanged
    assert second.previous_uri == output.uri_of(version_key(KEY, published_v1))
    assert version_key(KEY, published_v1).startswith("versions/training_eurusd.")
    assert list(output.list("versions")) == [version_key(KEY, published_v1)]
    assert output.read_bytes(version_key(KEY, published_v1)) == v1
    assert output.read_bytes(KEY) == v2
    assert (second.size, second.crc32c) == (len(v2), bytes_crc32c(v2))
    if published_v1.generation is not None:
        assert second.generation != published_v1.generation
    assert _temporaries(output) == []
    assert second.status == "published" and second.report_uri is None


def test_the_same_bytes_again_leave_the_published_file_as_it_is(output: Storage) -> None:
    data = _file(CHUNK + 100)
    publish_training_file(output, TrainingFile("eurusd", _staged(output, data), True))
    before = output.stat(KEY)

    again = publish_training_file(output, TrainingFile("eurusd", _staged(output, data), True))

    assert again.published and again.unchanged and again.previous_uri is None
    assert again.seconds == 0.0 and again.status == "unchanged"
    assert _identity(output.stat(KEY)) == _identity(before)
    assert list(output.list("versions")) == []
    assert _temporaries(output) == []


@pytest.mark.parametrize("report", [REPORT, None], ids=["with report", "without"])
def test_a_failed_file_is_quarantined_and_the_published_one_untouched(
    output: Storage, report: dict[str, Any] | None
) -> None:
    good = _file(2 * CHUNK)
    publish_training_file(output, TrainingFile("eurusd", _staged(output, good), True))
    before = output.stat(KEY)
    bad = _file(CHUNK)

    held = publish_training_file(
        output, TrainingFile("eurusd", _staged(output, bad), False, report), now=NOW
    )

    key = quarantine_key("eurusd", NOW)
    assert key == "quarantine/training_eurusd.20240501T123015123456Z.parquet"
    assert not held.published and held.uri == output.uri_of(key)
    assert output.read_bytes(key) == bad
    assert (held.size, held.crc32c) == (len(bad), bytes_crc32c(bad))
    report_key = "quarantine/training_eurusd.20240501T123015123456Z.report.json"
    if report is None:
        assert held.report_uri is None and list(output.list("quarantine")) == [key]
    else:
        assert held.report_uri == output.uri_of(report_key)
        assert list(output.list("quarantine")) == [key, report_key]
        assert json.loads(output.read_bytes(report_key) or b"") == report
    assert held.status == "quarantined"
    assert output.read_bytes(KEY) == good
    assert _identity(output.stat(KEY)) == _identity(before)
    assert list(output.list("versions")) == []
    assert _temporaries(output) == []


def _profile(rows: int) -> Profile:
    """The profile of a file of `rows` rows and one feature column, a fifth of it null."""
    return build_profile(
        "eurusd",
        rows,
        ["interval_time", "agg_bqx__agg_mean_45"],
        [pa.timestamp("us", "UTC"), pa.float64()],
        np.array([0, rows // 5]),
        np.array([np.nan, -1.0]),
        np.array([np.nan, 1.0]),
        [1],
        {"agg_bqx__agg_mean_45": "agg"},
        ["agg"],
        None,
    )


def test_the_profile_is_published_with_its_file_and_kept_in_the_history(
    output: Storage,
) -> None:
    times = [NOW.replace(hour=h) for h in (12, 13, 14)]
    for rows, now in zip((100, 200, 200), times, strict=True):
        data = _file(CHUNK + rows)
        staged = _staged(output, data if rows == 100 else _file(CHUNK + 7))
        built = TrainingFile("eurusd", staged, True, profile=_profile(rows))
        publish_training_file(output, built, now=now, run_id=f"run-{now.hour}")

    current = load_profile(output, "eurusd")
    assert current is not None and current.rows == 200
    assert current.family("agg") is not None and current.family("agg").null_share == 0.2
    history = load_history(output, "eurusd")
    assert [p.rows for p in history] == [200, 200, 100]  # newest first, one per publish
    assert sorted(output.list("profiles/training_eurusd")) == [
        history_key("eurusd", t) for t in times
    ]
    assert latest_report(output, "eurusd") == {
        "pair": "eurusd",
        "passed": True,
        "status": "published",
        "uri": output.uri_of(KEY),
        "at": times[-1].isoformat(),
        "run_id": "run-14",
    }


def test_the_history_keeps_the_newest_profiles(tmp_path: Path) -> None:
    output = LocalStorage(tmp_path / "output")
    for minute in range(5):
        staged = _staged(output, _file(1000 + minute))
        built = TrainingFile("eurusd", staged, True, profile=_profile(10 + minute))
        publish_training_file(output, built, now=NOW.replace(minute=minute))
        assert len(list(output.list("profiles/training_eurusd"))) == min(minute + 1, 30)
    kept = [p.rows for p in load_history(output, "eurusd", limit=3)]
    assert kept == [14, 13, 12]
    publish_profile(output, _profile(99), NOW.replace(hour=20), keep=2)
    assert [p.rows for p in load_history(output, "eurusd")] == [99, 14]


def test_a_failed_file_leaves_the_published_profile_and_becomes_the_latest_report(
    output: Storage,
) -> None:
    good = TrainingFile("eurusd", _staged(output, _file(2000)), True, profile=_profile(100))
    publish_training_file(output, good, now=NOW, run_id="good")
    published = output.read_bytes(profile_key("eurusd"))

    bad = TrainingFile("eurusd", _staged(output, _file(1500)), False, REPORT, profile=_profile(50))
    held = publish_training_file(output, bad, now=NOW.replace(hour=13), run_id="bad")

    assert output.read_bytes(profile_key("eurusd")) == published
    assert len(load_history(output, "eurusd")) == 1
    latest = latest_report(output, "eurusd")
    assert latest is not None and latest["row_count"] == REPORT["row_count"]
    assert (latest["passed"], latest["status"], latest["run_id"]) == (False, "quarantined", "bad")
    assert latest["uri"] == held.uri
    assert list(output.list("gate")) == [report_key("eurusd")]
    assert latest_report(output, "gbpusd") is None


def test_an_unchanged_file_publishes_a_profile_it_never_had(tmp_path: Path) -> None:
    output = LocalStorage(tmp_path / "output")
    data = _file(1000)
    publish_training_file(output, TrainingFile("eurusd", _staged(output, data), True))
    assert load_profile(output, "eurusd") is None  # published without one

    again = TrainingFile("eurusd", _staged(output, data), True, profile=_profile(100))
    assert publish_training_file(output, again, now=NOW).unchanged
    assert load_profile(output, "eurusd") is not None

    third = TrainingFile("eurusd", _staged(output, data), True, profile=_profile(100))
    publish_training_file(output, third, now=NOW.replace(hour=13))
    assert len(load_history(output, "eurusd")) == 1  # unchanged with its profile: no new entry


def test_a_publish_that_fails_leaves_the_published_file_and_no_temporary(
    tmp_path: Path,
) -> None:
    output = LocalStorage(tmp_path / "output")
    good = _file(1000)
    publish_training_file(output, TrainingFile("eurusd", _staged(output, good), True))
    before = output.stat(KEY)
    staged = _staged(output, _file(2000))
    with open(output.root / staged.key, "ab") as f:  # changed after its sink committed it
        f.write(b"!")

    with pytest.raises(StorageError, match=r"2001 bytes, 2000 were committed; nothing was pub"):
        publish_training_file(output, TrainingFile("eurusd", staged, True))

    assert output.read_bytes(KEY) == good and output.stat(KEY) == before
    assert _temporaries(output) == []


@pytest.mark.parametrize("passed", [True, False], ids=["passed", "failed"])
def test_a_staged_file_gone_before_its_publish_is_a_clear_error(
    output: Storage, passed: bool
) -> None:
    good = _file(1000)
    publish_training_file(output, TrainingFile("eurusd", _staged(output, good), True))
    before = output.stat(KEY)
    staged = _staged(output, _file(2000))
    output.discard(staged)

    gone = (
        r"\.training_eurusd\.parquet\.[0-9a-f]{32}\.tmp (is gone; nothing was published|as gs://)"
    )
    with pytest.raises(StorageError, match=gone):
        publish_training_file(output, TrainingFile("eurusd", staged, passed, REPORT))

    assert output.read_bytes(KEY) == good and _identity(output.stat(KEY)) == _identity(before)
    assert list(output.list("quarantine")) == []  # no report of a file not there
    # At most a copy of the published file, made before the publish was tried.
    assert all(output.read_bytes(k) == good for k in output.list("versions"))
    assert _temporaries(output) == []


@pytest.mark.emulator
def test_a_concurrent_publish_on_gcs_is_refused_and_kept(
    gcs_emulator: GCSEmulator, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer published the pair's file after this one looked: this one is refused
    (GCS's generation precondition, answered by the proxy as GCS answers it), the other's file
    stays and no temporary is left."""
    from bqx_assets.core.storage.gcs import GCSStorage

    with gcs_as_google_answers(gcs_emulator) as proxy:
        client = gcs_emulator.client(proxy.endpoint)
        output = GCSStorage(gcs_bucket, chunk_size=CHUNK, client=client)
        publish_training_file(output, TrainingFile("eurusd", _staged(output, _file(1000)), True))
        copy = output.copy

        def copy_then_another_writer(src_key: str, dst_key: str) -> ObjectInfo:
            info = copy(src_key, dst_key)
            output.write_bytes(KEY, b"another writer's file")
            return info

        monkeypatch.setattr(output, "copy", copy_then_another_writer)
        with pytest.raises(StorageError, match=r"training_eurusd\.parquet changed while it was"):
            publish_training_file(
                output, TrainingFile("eurusd", _staged(output, _file(2000)), True)
            )
        other = output.stat(KEY)
        assert output.read_bytes(KEY) == b"another writer's file"
        assert other is not None and other.crc32c == bytes_crc32c(b"another writer's file")
        assert _temporaries(output) == []


@pytest.mark.parametrize(
    "root",
    [
        "local",
        pytest.param("bucket", marks=pytest.mark.emulator),
        pytest.param("prefix", marks=pytest.mark.emulator),
    ],
)
def test_a_dead_writers_temporaries_of_a_training_file_are_cleared_and_nothing_else(
    request: pytest.FixtureRequest, tmp_path: Path, root: str
) -> None:
    if root == "local":
        storage = open_storage(str(tmp_path / "out"))
    else:
        bucket = request.getfixturevalue("gcs_bucket")
        # Production's output root is a bucket's top level: temporaries are listed there too.
        storage = open_storage(f"gs://{bucket}" if root == "bucket" else f"gs://{bucket}/out")
    storage.write_bytes(KEY, b"published")
    # A writer killed after its commit (a staged file never published), one killed while
    # writing (on a local root, its open temporary), files named as others would name them.
    committed = _staged(storage, _file(1000)).key
    writing = storage.stage(KEY)
    writing.write(b"half a file")
    dead = [".training_eurusd.parquet.0123abcd.tmp", ".training_eurusd.parquet.4567ef01.tmp"]
    others = [".training_gbpusd.parquet.89abcdef.tmp", "versions/.training_eurusd.parquet.1.tmp"]
    for key in [*dead, *others]:
        if root == "local":
            (tmp_path / "out" / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "out" / key).write_bytes(b"partial")
        else:
            name = key if root == "bucket" else f"out/{key}"
            storage.client.bucket(bucket).blob(name).upload_from_string(b"partial")  # type: ignore[attr-defined]
    expected = sorted([*dead, committed, *([writing.key] if root == "local" else [])])  # type: ignore[attr-defined]

    assert sorted(clear_dead_writes(storage, "eurusd")) == expected

    assert sorted(storage.temporaries("")) == others[:1]  # the other pair's writer's
    assert list(storage.temporaries("versions")) == others[1:]
    assert storage.read_bytes(KEY) == b"published"
    assert clear_dead_writes(storage, "eurusd") == []
    writing.abort()
