"""GCSStorage, publishing and lifecycle rules against fake-gcs-server on 127.0.0.1."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from google.auth.credentials import AnonymousCredentials

from bqx_assets.cli.commands import lifecycle
from bqx_assets.core.errors import StorageError
from bqx_assets.core.publish import TrainingFile, clear_dead_writes, publish_training_file
from bqx_assets.core.storage import ObjectInfo, StagedFile, bytes_crc32c, file_crc32c, open_storage
from bqx_assets.core.storage.gcs import GCSStorage, UploadedObject, split_gs_uri, storage_client
from bqx_assets_tests.emulators import gcs as gcs_fixtures
from bqx_assets_tests.emulators.gcs import GCSEmulator

# Fixtures made visible to this module (a plain import would be shadowed by the arguments).
gcs_emulator = gcs_fixtures.gcs_emulator
gcs_bucket = gcs_fixtures.gcs_bucket

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[1]
CHUNK = 256 * 1024  # the smallest chunk a resumable upload accepts


def _random_file(path: Path, size: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(1024 * 1024) if seed == 0 else bytes([seed % 256]) * (1024 * 1024)
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            f.write(block[:n])
            written += n
    return path


def _identity(info: ObjectInfo | None) -> tuple[Any, ...] | None:
    return None if info is None else (info.uri, info.size, info.crc32c, info.generation)


def _all_object_names(emulator: GCSEmulator, bucket: str) -> list[str]:
    """Every object in the bucket, temporary ones included (Storage.list hides those)."""
    return sorted(blob.name for blob in emulator.client().list_blobs(bucket))


class _CorruptingStream:
    """A file whose bytes at `offset` are flipped as they are read: corruption on the way out."""

    def __init__(self, inner: BinaryIO, offset: int) -> None:
        self._inner = inner
        self._offset = offset

    def read(self, size: int = -1) -> bytes:
        start = self._inner.tell()
        data = self._inner.read(size)
        if start <= self._offset < start + len(data):
            i = self._offset - start
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _CorruptingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


class CorruptingGCSStorage(GCSStorage):
    """The real storage client, fed a corrupted stream for the first `corrupt_uploads` uploads."""

    def __init__(self, *args: Any, corrupt_uploads: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.corrupt_uploads = corrupt_uploads
        self.uploads = 0

    def _open_for_upload(self, local: Path) -> BinaryIO:
        self.uploads += 1
        stream = super()._open_for_upload(local)
        if self.uploads <= self.corrupt_uploads:
            return _CorruptingStream(stream, local.stat().st_size // 2)  # type: ignore[return-value]
        return stream


# the client


def test_client_uses_the_emulator_anonymously(gcs_emulator: GCSEmulator) -> None:
    client = storage_client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project == "test"
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.endpoint
    assert os.environ["NO_GCE_CHECK"] == "True"


def test_uri_parsing() -> None:
    assert split_gs_uri("gs://bqx-ml-staging/checkpoints/") == ("bqx-ml-staging", "checkpoints")
    assert split_gs_uri("gs://bqx-ml-output") == ("bqx-ml-output", "")
    with pytest.raises(StorageError, match="names no bucket"):
        split_gs_uri("gs:///x")


# round trips


def test_round_trip(gcs_bucket: str, tmp_path: Path) -> None:
    storage = open_storage(f"gs://{gcs_bucket}/checkpoints")
    assert isinstance(storage, GCSStorage)
    local = _random_file(tmp_path / "agg_eurusd.parquet", 10 * 1024 * 1024 + 7)
    assert storage.stat("eurusd/agg_eurusd.parquet") is None

    info = storage.put_file(local, "eurusd/agg_eurusd.parquet", move=False)
    assert info.uri == f"gs://{gcs_bucket}/checkpoints/eurusd/agg_eurusd.parquet"
    assert (info.size, info.crc32c) == (local.stat().st_size, file_crc32c(local))
    assert info.generation is not None and info.generation > 0
    assert isinstance(info, UploadedObject) and info.attempts == 1 and info.upload_seconds > 0
    stat = storage.stat("eurusd/agg_eurusd.parquet")
    assert stat is not None and _identity(stat) == _identity(info)
    assert local.exists()

    back = storage.get_file("eurusd/agg_eurusd.parquet", tmp_path / "back" / "agg.parquet")
    assert back.read_bytes() == local.read_bytes()

    storage.write_bytes("eurusd/agg_eurusd.manifest.json", b'{"rows": 3}')
    assert storage.read_bytes("eurusd/agg_eurusd.manifest.json") == b'{"rows": 3}'
    assert storage.read_bytes("eurusd/missing.json") is None

    copied = storage.copy("eurusd/agg_eurusd.parquet", "shared/agg.parquet")
    assert (copied.size, copied.crc32c) == (info.size, info.crc32c)
    storage.write_bytes("eurusdx/other.json", b"{}")
    assert list(storage.list("eurusd")) == [
        "eurusd/agg_eurusd.manifest.json",
        "eurusd/agg_eurusd.parquet",
    ]
    assert sorted(storage.list()) == [
        "eurusd/agg_eurusd.manifest.json",
        "eurusd/agg_eurusd.parquet",
        "eurusdx/other.json",
        "shared/agg.parquet",
    ]

    storage.delete("eurusd/agg_eurusd.parquet")
    storage.delete("eurusd/agg_eurusd.parquet")  # deleting what is gone is no error
    assert storage.stat("eurusd/agg_eurusd.parquet") is None
    fetched = storage.fetch("shared/agg.parquet", tmp_path / "cache")
    assert file_crc32c(fetched) == info.crc32c
    with pytest.raises(StorageError, match="does not exist"):
        storage.get_file("eurusd/agg_eurusd.parquet", tmp_path / "gone.parquet")


def test_move_deletes_the_local_file_after_publishing(gcs_bucket: str, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_bucket, chunk_size=CHUNK)
    local = _random_file(tmp_path / "f.parquet", 3 * CHUNK + 11)
    expected = file_crc32c(local)
    info = storage.put_file(local, "f.parquet", move=True)
    assert info.crc32c == expected
    assert not local.exists()


def test_invalid_keys_are_refused(gcs_bucket: str) -> None:
    storage = GCSStorage(gcs_bucket)
    for key in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(StorageError, match="invalid storage key"):
            storage.stat(key)


# verification


def test_corrupted_upload_is_retried_then_published(gcs_bucket: str, tmp_path: Path) -> None:
    storage = CorruptingGCSStorage(gcs_bucket, "out", chunk_size=CHUNK, corrupt_uploads=1)
    local = _random_file(tmp_path / "training_eurusd.parquet", 4 * CHUNK + 3)
    info = storage.put_file(local, "training_eurusd.parquet")
    assert info.attempts == 2
    assert info.crc32c == file_crc32c(local)
    data = storage.read_bytes("training_eurusd.parquet")
    assert data == local.read_bytes()


def test_corrupted_upload_fails_clearly_and_publishes_nothing(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    storage = CorruptingGCSStorage(gcs_bucket, "out", chunk_size=CHUNK, corrupt_uploads=99)
    local = _random_file(tmp_path / "training_eurusd.parquet", 4 * CHUNK + 3)
    with pytest.raises(StorageError) as err:
        storage.put_file(local, "training_eurusd.parquet", move=True)
    message = str(err.value)
    assert f"gs://{gcs_bucket}/out/training_eurusd.parquet" in message
    assert "3 times" in message and "nothing was published" in message
    assert storage.uploads == 3
    assert storage.stat("training_eurusd.parquet") is None
    assert _all_object_names(gcs_emulator, gcs_bucket) == []  # no temporary object left
    assert local.exists()  # the local file outlives a failed upload, even with move=True


def test_corrupted_upload_leaves_the_published_object_untouched(
    gcs_bucket: str, tmp_path: Path
) -> None:
    good = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    first = _random_file(tmp_path / "v1.parquet", 3 * CHUNK)
    before = good.put_file(first, "training_eurusd.parquet")
    bad = CorruptingGCSStorage(gcs_bucket, "out", chunk_size=CHUNK, corrupt_uploads=99)
    with pytest.raises(StorageError):
        bad.put_file(_random_file(tmp_path / "v2.parquet", 5 * CHUNK), "training_eurusd.parquet")
    assert _identity(good.stat("training_eurusd.parquet")) == _identity(before)
    assert good.read_bytes("training_eurusd.parquet") == first.read_bytes()


# an upload killed mid-way

_KILLED_UPLOAD = """
import sys, time
from pathlib import Path
from bqx_assets.core.storage.gcs import GCSStorage

class Stalling:
    # Signals once some chunks have been sent, then never finishes: the test kills us there.
    def __init__(self, inner, marker):
        self.inner, self.marker = inner, marker
    def read(self, size=-1):
        if self.inner.tell() >= 12 * 1024 * 1024:
            # Written whole, then renamed: the test kills us as soon as the marker exists.
            Path(self.marker + ".part").write_text(str(self.inner.tell()))
            Path(self.marker + ".part").replace(self.marker)
            time.sleep(3600)
        return self.inner.read(size)
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.inner.close()

class Storage(GCSStorage):
    def _open_for_upload(self, local):
        return Stalling(super()._open_for_upload(local), sys.argv[4])

Storage(sys.argv[1], "out", chunk_size=4 * 1024 * 1024).put_file(Path(sys.argv[2]), sys.argv[3])
"""


def test_upload_killed_mid_way_is_restarted_and_correct(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=4 * 1024 * 1024)
    previous = _random_file(tmp_path / "previous.parquet", 1024 * 1024, seed=7)
    storage.put_file(previous, "training_eurusd.parquet")
    local = _random_file(tmp_path / "training_eurusd.parquet", 50 * 1024 * 1024)
    marker = tmp_path / "chunks_sent"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _KILLED_UPLOAD,
            gcs_bucket,
            str(local),
            "training_eurusd.parquet",
            str(marker),
        ],
        env=gcs_emulator.env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    try:
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert int(marker.read_text()) >= 12 * 1024 * 1024  # killed after several chunks
    # The killed upload published nothing: the previous object is intact.
    assert storage.read_bytes("training_eurusd.parquet") == previous.read_bytes()
    assert list(storage.list()) == ["training_eurusd.parquet"]

    info = storage.put_file(local, "training_eurusd.parquet")
    assert (info.size, info.crc32c) == (local.stat().st_size, file_crc32c(local))
    back = storage.get_file("training_eurusd.parquet", tmp_path / "back.parquet")
    assert file_crc32c(back) == file_crc32c(local)
    assert [n for n in _all_object_names(gcs_emulator, gcs_bucket) if n.endswith(".tmp")] == []


# publishing training files


def test_failed_training_file_is_quarantined_and_published_one_untouched(
    gcs_bucket: str, tmp_path: Path
) -> None:
    storage = GCSStorage(gcs_bucket, chunk_size=CHUNK)
    good = _random_file(tmp_path / "good.parquet", 3 * CHUNK, seed=1)
    published = publish_training_file(storage, TrainingFile("eurusd", good, passed=True))
    assert published.published and not good.exists()
    before = storage.stat("training_eurusd.parquet")
    original = storage.read_bytes("training_eurusd.parquet")

    bad = _random_file(tmp_path / "bad.parquet", 2 * CHUNK, seed=2)
    report = {"row_count": {"passed": False, "actual": 100, "expected": 177748}}
    result = publish_training_file(
        storage, TrainingFile("eurusd", bad, passed=False, report=report)
    )
    assert not result.published
    assert result.uri.startswith(f"gs://{gcs_bucket}/quarantine/training_eurusd.")
    assert storage.stat("training_eurusd.parquet") == before
    assert storage.read_bytes("training_eurusd.parquet") == original
    keys = sorted(storage.list("quarantine"))
    assert len(keys) == 2 and keys[0].endswith(".parquet") and keys[1].endswith(".report.json")
    assert json.loads(storage.read_bytes(keys[1]) or b"") == report
    assert result.crc32c == storage.stat(keys[0]).crc32c  # type: ignore[union-attr]


def test_second_version_keeps_the_first_recoverable(gcs_bucket: str, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    v1 = _random_file(tmp_path / "v1.parquet", 3 * CHUNK, seed=1)
    v1_bytes = v1.read_bytes()
    first = publish_training_file(storage, TrainingFile("gbpusd", v1, passed=True))
    v2 = _random_file(tmp_path / "v2.parquet", 3 * CHUNK, seed=2)
    v2_bytes = v2.read_bytes()
    second = publish_training_file(storage, TrainingFile("gbpusd", v2, passed=True))

    assert second.previous_uri is not None
    previous_key = second.previous_uri.removeprefix(f"{storage.uri}/")
    assert previous_key.startswith("versions/training_gbpusd.")
    assert storage.read_bytes(previous_key) == v1_bytes
    assert storage.read_bytes("training_gbpusd.parquet") == v2_bytes
    assert second.generation != first.generation

    # Publishing the same bytes again is a no-op: no new version.
    v2_again = tmp_path / "v2_again.parquet"
    v2_again.write_bytes(v2_bytes)
    third = publish_training_file(storage, TrainingFile("gbpusd", v2_again, passed=True))
    assert third.unchanged and third.generation == second.generation
    assert len(list(storage.list("versions"))) == 1


def test_publishing_to_a_local_root_keeps_versions_too(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "output")
    v1 = _random_file(tmp_path / "v1.parquet", 1000, seed=1)
    v1_bytes = v1.read_bytes()
    publish_training_file(storage, TrainingFile("usdjpy", v1, passed=True))
    v2 = _random_file(tmp_path / "v2.parquet", 2000, seed=2)
    second = publish_training_file(storage, TrainingFile("usdjpy", v2, passed=True))
    assert not v2.exists()
    assert (tmp_path / "output" / "training_usdjpy.parquet").stat().st_size == 2000
    assert second.previous_uri and Path(second.previous_uri).read_bytes() == v1_bytes


def test_missing_training_file_is_a_clear_error(gcs_bucket: str, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_bucket)
    with pytest.raises(StorageError, match=r"training file of eurusd not found at .*nope"):
        publish_training_file(storage, TrainingFile("eurusd", tmp_path / "nope", passed=True))


# lifecycle


DEPLOY = REPO / "deploy"


@pytest.mark.parametrize("name", ["gcs-lifecycle-staging.json", "gcs-lifecycle-output.json"])
def test_lifecycle_files_are_valid(name: str) -> None:
    rules = lifecycle.load_rules(DEPLOY / name)
    assert rules and all({"action", "condition"} <= set(rule) for rule in rules)


def test_staging_lifecycle_deletes_checkpoints_after_7_days() -> None:
    rules = lifecycle.load_rules(DEPLOY / "gcs-lifecycle-staging.json")
    deletes = [r["condition"] for r in rules if r["action"]["type"] == "Delete"]
    assert {"age": 7, "matchesPrefix": ["checkpoints/"]} in deletes


def test_output_lifecycle_never_deletes_live_training_files() -> None:
    rules = lifecycle.load_rules(DEPLOY / "gcs-lifecycle-output.json")
    for rule in (r for r in rules if r["action"]["type"] == "Delete"):
        condition = rule["condition"]
        # Every delete is limited to noncurrent versions, temporary uploads or quarantine.
        assert (
            condition.get("isLive") is False
            or condition.get("matchesSuffix") == [".tmp"]
            or condition.get("matchesPrefix") == ["quarantine/"]
        ), rule


def test_lifecycle_dry_run_prints_rules(capsys: pytest.CaptureFixture[str]) -> None:
    from bqx_assets.cli import main

    rules_file = DEPLOY / "gcs-lifecycle-staging.json"
    assert (
        main(["lifecycle", "apply", "--bucket", "b", "--rules", str(rules_file), "--dry-run"]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bucket"] == "b" and result["applied"] is False
    assert result["rules"] == lifecycle.load_rules(rules_file)


def test_lifecycle_apply_reaches_the_bucket(
    gcs_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bqx_assets.cli import main

    rules_file = DEPLOY / "gcs-lifecycle-staging.json"
    assert main(["lifecycle", "apply", "--bucket", gcs_bucket, "--rules", str(rules_file)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["applied"] is True and result["bucket"] == gcs_bucket
    # fake-gcs-server accepts the bucket PATCH but does not store lifecycle rules, so what the
    # bucket holds afterwards cannot be checked here; the rules sent are checked above.


def test_lifecycle_rejects_a_bad_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text('{"rule": [{"action": {"type": "Delete"}}]}')
    with pytest.raises(StorageError, match=r"rules\.json"):
        lifecycle.load_rules(bad)


# training files streamed to a temporary object (no local file)


def _staged(storage: GCSStorage, key: str, data: bytes) -> StagedFile:
    upload = storage.stage(key)
    for start in range(0, len(data), 100_000):  # written piece by piece, as the merge does
        upload.write(data[start : start + 100_000])
    return upload.commit()


def test_staged_training_file_is_published_versioned_or_quarantined(
    gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    storage = GCSStorage(gcs_bucket, chunk_size=CHUNK)
    first = os.urandom(3 * CHUNK + 5)
    staged = _staged(storage, "training_eurusd.parquet", first)
    assert staged.info.size == len(first) and list(storage.list()) == []  # hidden until published
    assert staged.file.read_range(10, 20) == first[10:20]  # readable in place before publishing
    done = publish_training_file(storage, TrainingFile("eurusd", None, True, staged=staged))
    assert done.published and storage.read_bytes("training_eurusd.parquet") == first

    # The same bytes again: nothing copied, nothing versioned.
    again = publish_training_file(
        storage, TrainingFile("eurusd", None, True, staged=_staged(storage, "t.parquet", first))
    )
    assert again.unchanged

    # A failed gate: quarantined with its report, the published file untouched.
    bad = _staged(storage, "training_eurusd.parquet", os.urandom(CHUNK))
    before = storage.stat("training_eurusd.parquet")
    report = {"row_count": {"actual": 1, "expected": 177_748}}
    held = publish_training_file(storage, TrainingFile("eurusd", None, False, report, staged=bad))
    assert not held.published and held.uri.split("/", 3)[3].startswith("quarantine/")
    assert _identity(storage.stat("training_eurusd.parquet")) == _identity(before)

    # A new version: the previous one kept under versions/.
    second = os.urandom(2 * CHUNK)
    newer = publish_training_file(
        storage,
        TrainingFile(
            "eurusd", None, True, staged=_staged(storage, "training_eurusd.parquet", second)
        ),
    )
    assert newer.previous_uri is not None and "/versions/" in newer.previous_uri
    assert storage.read_bytes("training_eurusd.parquet") == second
    assert not [n for n in _all_object_names(gcs_emulator, gcs_bucket) if n.endswith(".tmp")]


def test_an_aborted_stream_leaves_no_object(gcs_emulator: GCSEmulator, gcs_bucket: str) -> None:
    storage = GCSStorage(gcs_bucket, chunk_size=CHUNK)
    upload = storage.stage("training_eurusd.parquet")
    for _ in range(12):  # more writes than the queue holds: the sending thread has begun
        upload.write(os.urandom(CHUNK // 4 + 1))  # some chunks sent, the rest buffered
    upload.abort()
    assert _all_object_names(gcs_emulator, gcs_bucket) == []
    with pytest.raises(StorageError):
        upload.write(b"more")
    # The part's writer, once collected, does not finish its upload (io's finalizer closes it).
    del upload
    gc.collect()
    assert _all_object_names(gcs_emulator, gcs_bucket) == []


def test_an_upload_in_more_segments_than_one_compose_takes_is_composed_in_runs(
    gcs_bucket: str,
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    segments = [bytes([i]) * (100 + i) for i in range(40)]  # 40 row groups and a magic: > 32
    upload = storage.stage("f.parquet")
    for data in segments:
        upload.write(data)
        upload.cut()
    upload.write(b"footer")
    staged = upload.commit()
    assert storage.read_bytes(staged.key) == b"".join(segments) + b"footer"
    assert staged.info.crc32c == bytes_crc32c(b"".join(segments) + b"footer")
    storage.discard(staged)
    # Only the segments stay (not the footer's part, not the runs composed on the way).
    assert sorted(storage.stat(k).size for k in storage.list()) == sorted(map(len, segments))

    # Written again, the same segments are referred to, not sent; a new one is sent.
    again = storage.stage("f.parquet")
    for data in segments[:-1]:
        assert again.refer(len(data), bytes_crc32c(data))
    assert not again.refer(3, bytes_crc32c(b"new"))
    again.write(b"new")
    staged = again.commit()
    assert storage.read_bytes(staged.key) == b"".join(segments[:-1]) + b"new"
    assert again.sent == 3
    storage.discard(staged)
    # The last segment of the first upload is no longer part of the file: gone.
    sizes = sorted(storage.stat(k).size for k in storage.list())
    assert sizes == sorted(map(len, segments[:-1]))


@pytest.mark.parametrize("root", ["local", "bucket", "prefix"])
def test_a_dead_writers_temporaries_of_a_training_file_are_cleared_and_nothing_else(
    request: pytest.FixtureRequest, tmp_path: Path, root: str
) -> None:
    if root == "local":
        storage = open_storage(str(tmp_path / "out"))
    else:
        bucket = request.getfixturevalue("gcs_bucket")
        # Production's output root is a bucket's top level: temporaries are listed there too.
        storage = open_storage(f"gs://{bucket}" if root == "bucket" else f"gs://{bucket}/out")
    storage.write_bytes("training_eurusd.parquet", b"published")
    dead = [".training_eurusd.parquet.0123abcd.tmp", ".training_eurusd.parquet.4567ef01.tmp"]
    others = [".training_gbpusd.parquet.89abcdef.tmp", "versions/.training_eurusd.parquet.1.tmp"]
    for key in [*dead, *others]:
        if root == "local":
            (tmp_path / "out" / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "out" / key).write_bytes(b"partial")
        else:
            name = key if root == "bucket" else f"out/{key}"
            storage.client.bucket(bucket).blob(name).upload_from_string(b"partial")
    assert sorted(clear_dead_writes(storage, "eurusd")) == dead
    assert sorted(storage.temporaries("")) == others[:1]  # the other pair's writer's
    assert storage.read_bytes("training_eurusd.parquet") == b"published"
    assert clear_dead_writes(storage, "eurusd") == []
