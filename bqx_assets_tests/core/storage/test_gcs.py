"""GCSStorage and GCSFile against fake-gcs-server on 127.0.0.1: verified uploads, ranged reads
of one generation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.auth.credentials import AnonymousCredentials

from bqx_assets.core.errors import ReplacedWhileRead, StorageError
from bqx_assets.core.storage import ObjectInfo, bytes_crc32c, file_crc32c, open_storage
from bqx_assets.core.storage.gcs import GCSStorage, UploadedObject, split_gs_uri, storage_client
from bqx_assets.core.storage.gcs_file import GCSFile, RangeReader
from bqx_assets_tests.conftest import gcs_as_google_answers
from emulators.gcs import GCSEmulator
from emulators.proxy import Exchange, Reply

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[3]
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
    with pytest.raises(StorageError, match="is not a gs:// URI"):
        split_gs_uri("s3://b/x")


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
    assert fetched == tmp_path / "cache" / "shared" / "agg.parquet"
    assert file_crc32c(fetched) == info.crc32c
    mtime = fetched.stat().st_mtime_ns
    assert storage.fetch("shared/agg.parquet", tmp_path / "cache") == fetched  # reused
    assert fetched.stat().st_mtime_ns == mtime
    with open(fetched, "r+b") as f:  # a damaged cached copy is fetched again
        f.write(b"\0\0\0\0")
    assert file_crc32c(storage.fetch("shared/agg.parquet", tmp_path / "cache")) == info.crc32c
    with pytest.raises(StorageError, match=r"eurusd/agg_eurusd\.parquet does not exist"):
        storage.fetch("eurusd/agg_eurusd.parquet", tmp_path / "cache")
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
    local = _random_file(tmp_path / "training_eurusd.parquet", 24 * 1024 * 1024)
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


def test_a_concurrent_publish_is_refused_and_kept(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    """A writer that published while this one was uploading is not overwritten (GCS's
    generation precondition on the copy, answered by the proxy as GCS answers it)."""
    with gcs_as_google_answers(gcs_emulator) as proxy:
        client = gcs_emulator.client(proxy.endpoint)
        storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK, client=client)
        first = storage.write_bytes("training_eurusd.parquet", b"first")
        other = storage.write_bytes("training_eurusd.parquet", b"another writer's")
        local = _random_file(tmp_path / "mine.parquet", 2 * CHUNK)
        with pytest.raises(StorageError, match=r"changed while .* was uploading .*nothing was pub"):
            storage.put_file(local, "training_eurusd.parquet", if_generation_match=first.generation)
        assert _identity(storage.stat("training_eurusd.parquet")) == _identity(other)
        assert local.exists()
        assert [n for n in _all_object_names(gcs_emulator, gcs_bucket)] == [
            "out/training_eurusd.parquet"
        ]  # no temporary left
        # Without a precondition given, the one seen when the upload starts.
        info = storage.put_file(local, "training_eurusd.parquet")
        assert info.crc32c == file_crc32c(local) and info.generation != other.generation
        with pytest.raises(
            StorageError, match=r"cannot copy .*missing\.parquet: it does not exist"
        ):
            storage.copy("missing.parquet", "elsewhere.parquet")


def test_a_concurrent_publish_of_the_same_bytes_stands_for_this_one(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    """Two writers of one object with the same bytes (a cov table's two pairs, as of one cut):
    the later one's copy is refused by the precondition, and it keeps the other's object."""
    local = _random_file(tmp_path / "mine.parquet", 2 * CHUNK)
    with gcs_as_google_answers(gcs_emulator) as proxy:
        client = gcs_emulator.client(proxy.endpoint)
        storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK, client=client)
        other = storage.write_bytes("chunk.parquet", local.read_bytes())
        info = storage.put_file(local, "chunk.parquet", if_generation_match=0, move=True)
    assert _identity(info) == _identity(other)
    assert not local.exists()  # moved: it is published
    assert _all_object_names(gcs_emulator, gcs_bucket) == ["out/chunk.parquet"]


def test_a_temporary_object_deleted_before_its_copy_is_uploaded_again(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    """Another writer of the folder took this one's temporary object for a dead writer's and
    deleted it between its upload and its copy: it is uploaded again, and published."""
    deleted: list[str] = []

    def delete_the_first_copys_source(exchange: Exchange) -> Reply | None:
        if "/rewriteTo/" in exchange.route and not deleted:
            source = unquote(exchange.route.split("/o/", 1)[1].split("/rewriteTo/", 1)[0])
            gcs_emulator.client().bucket(gcs_bucket).blob(source).delete()
            deleted.append(source)
        return None  # then forwarded: the copy of an object that is gone

    local = _random_file(tmp_path / "mine.parquet", 2 * CHUNK)
    with gcs_as_google_answers(gcs_emulator, delete_the_first_copys_source) as proxy:
        client = gcs_emulator.client(proxy.endpoint)
        storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK, client=client)
        info = storage.put_file(local, "chunk.parquet")
    assert deleted and deleted[0].endswith(".tmp")
    assert info.attempts == 2
    assert storage.read_bytes("chunk.parquet") == local.read_bytes()
    assert _all_object_names(gcs_emulator, gcs_bucket) == ["out/chunk.parquet"]


def test_a_temporary_object_deleted_before_every_copy_fails_and_keeps_the_published_one(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    """Deleted before each of its copies, the upload gives up naming the object: the object
    already published and the local file stay as they were."""

    def delete_every_copys_source(exchange: Exchange) -> Reply | None:
        if "/rewriteTo/" in exchange.route:
            source = unquote(exchange.route.split("/o/", 1)[1].split("/rewriteTo/", 1)[0])
            gcs_emulator.client().bucket(gcs_bucket).blob(source).delete()
        return None

    local = _random_file(tmp_path / "mine.parquet", 2 * CHUNK)
    with gcs_as_google_answers(gcs_emulator, delete_every_copys_source) as proxy:
        client = gcs_emulator.client(proxy.endpoint)
        storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK, client=client)
        before = storage.write_bytes("chunk.parquet", b"the published chunk")
        with pytest.raises(
            StorageError,
            match=r"chunk\.parquet: the temporary object was deleted before its copy 3 times "
            r".*nothing was published",
        ):
            storage.put_file(local, "chunk.parquet", move=True)
        assert _identity(storage.stat("chunk.parquet")) == _identity(before)
    assert local.exists()
    assert _all_object_names(gcs_emulator, gcs_bucket) == ["out/chunk.parquet"]


# listings


def test_listings_skip_temporaries_and_temporaries_lists_them(
    gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    storage = GCSStorage(gcs_bucket, "out")
    for key in ("a/x.parquet", "a/y.json", "ab/z.parquet"):
        storage.write_bytes(key, key.encode())
    bucket = gcs_emulator.client().bucket(gcs_bucket)
    for name in ("out/a/.x.parquet.0123.tmp", "out/.top.parquet.4567.tmp", "out/a/b/.z.1.tmp"):
        bucket.blob(name).upload_from_string(b"partial")

    assert list(storage.list("a")) == ["a/x.parquet", "a/y.json"]  # not ab/
    assert list(storage.list("a/x.parquet")) == ["a/x.parquet"]
    infos = storage.infos("a")
    assert sorted(infos) == ["a/x.parquet", "a/y.json"]
    assert _identity(infos["a/x.parquet"]) == _identity(storage.stat("a/x.parquet"))
    assert infos["a/y.json"].crc32c == bytes_crc32c(b"a/y.json")
    assert list(storage.temporaries("a")) == ["a/.x.parquet.0123.tmp"]
    assert list(storage.temporaries("")) == [".top.parquet.4567.tmp"]
    assert list(storage.temporaries("missing")) == []


# read in place


def test_a_stored_file_is_read_in_place_by_ranges(gcs_bucket: str, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_bucket, "ckpt")
    table = pa.table({"x": list(range(1000)), "y": [str(i) for i in range(1000)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=300)
    info = storage.put_file(tmp_path / "t.parquet", "eurusd/t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()

    found = storage.find_file("eurusd/t.parquet")
    assert isinstance(found, GCSFile) and found.remote
    assert (found.uri, found.size, found.generation) == (info.uri, info.size, info.generation)
    before = storage.reads.requests, storage.reads.bytes
    assert found.read_range(10, 20) == data[10:20]
    assert found.read_range(5, 5) == b""
    assert (storage.reads.requests, storage.reads.bytes) == (before[0] + 1, before[1] + 10)
    assert pq.ParquetFile(found.reader()).read().equals(table)
    assert storage.find_file("eurusd/missing.parquet") is None
    with pytest.raises(StorageError, match=r"short read of .*t\.parquet"):
        found.read_range(info.size - 4, info.size + 4)

    # Reads inside a block fetched ahead cost no request.
    tail = info.size - 1000
    reader = found.reader([(tail, data[tail:]), (0, data[:100])])
    assert isinstance(reader, RangeReader) and reader.name == info.uri
    requests = storage.reads.requests
    assert reader.seek(-8, os.SEEK_END) == info.size - 8
    assert reader.read() == data[-8:]
    assert reader.seek(50) == 50 and reader.read(10) == data[50:60]
    assert reader.tell() == 60
    buffer = bytearray(5)
    assert reader.readinto(buffer) == 5 and bytes(buffer) == data[60:65]
    assert storage.reads.requests == requests
    assert reader.read(200) == data[65:265]  # past the block: one request
    assert storage.reads.requests == requests + 1
    reader.seek(0, os.SEEK_END)
    assert reader.read(10) == b""
    with pytest.raises(ValueError, match="negative seek"):
        reader.seek(-1)


def test_a_file_is_pinned_to_the_version_that_was_checked(gcs_bucket: str, tmp_path: Path) -> None:
    storage = GCSStorage(gcs_bucket, "ckpt")
    first = storage.write_bytes("t.parquet", b"the first version")
    opened = storage.open_file("t.parquet", size=first.size, crc32c=first.crc32c)
    assert opened.read_range(4, 9) == b"first"

    storage.write_bytes("t.parquet", b"the second version")
    # Checked against its manifest when opened: a changed object is refused before any read.
    with pytest.raises(ReplacedWhileRead, match="changed since it was checked"):
        storage.open_file("t.parquet", size=first.size, crc32c=first.crc32c)
    # Opened before the change: a read fails instead of mixing two versions.
    with pytest.raises(ReplacedWhileRead, match=r"t\.parquet generation \d+ was replaced or del"):
        opened.read_range(4, 9)
    storage.delete("t.parquet")
    with pytest.raises(ReplacedWhileRead, match="does not exist"):
        storage.open_file("t.parquet", size=first.size, crc32c=first.crc32c)
