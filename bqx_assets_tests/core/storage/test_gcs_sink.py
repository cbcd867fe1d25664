"""GCSSink against fake-gcs-server: segments uploaded as written and kept, composed by commit,
referred to by a later upload of the same file instead of sent; an abort or a killed writer
leaves nothing a reader sees."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage import CopyMismatch, StagedFile, StoredFile, bytes_crc32c
from bqx_assets.core.storage.gcs import GCSStorage
from bqx_assets.core.storage.gcs_sink import SEGMENTS_FOLDER, GCSSink
from emulators.gcs import GCSEmulator

pytestmark = pytest.mark.emulator

REPO = Path(__file__).resolve().parents[3]
CHUNK = 256 * 1024  # the smallest chunk a resumable upload accepts
MAGIC = b"PAR1"
SEGMENTS = f"{SEGMENTS_FOLDER}/training_eurusd.parquet"


def _names(emulator: GCSEmulator, bucket: str) -> list[str]:
    """Every object in the bucket, temporary ones included (Storage.list hides those)."""
    return sorted(blob.name for blob in emulator.client().list_blobs(bucket))


def _segment_sizes(storage: GCSStorage, name: str = "training_eurusd.parquet") -> list[int]:
    infos = storage.infos(f"{SEGMENTS_FOLDER}/{name}")
    return sorted(info.size for info in infos.values())


def _stream(sink: GCSSink, data: bytes, piece: int = 100_000) -> None:
    for start in range(0, len(data), piece):  # written piece by piece, as the merge does
        sink.write(memoryview(data)[start : start + piece])


def _file(sink: GCSSink, segments: Sequence[bytes], footer: bytes) -> StagedFile:
    """The magic, each segment, the footer, committed."""
    sink.write_segment(MAGIC)
    for segment in segments:
        _stream(sink, segment)
        sink.end_segment()
    sink.write(footer)
    return sink.commit()


class Unreadable(StoredFile):
    """A source whose bytes must not be needed: a copy from it is composed from kept segments."""

    uri = "mem://unreadable"
    size = 1 << 40

    def read_range(self, start: int, stop: int) -> bytes:
        raise AssertionError(f"bytes {start}-{stop} were read")

    def reader(self, blocks: Sequence[tuple[int, bytes]] = ()) -> object:  # type: ignore[override]
        raise AssertionError("read")


def test_a_streamed_file_is_hidden_until_published_and_readable_in_place(
    gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    storage.write_bytes("training_eurusd.parquet", b"the previous version")
    data = os.urandom(3 * CHUNK + 5)  # several chunks
    sink = storage.stage("training_eurusd.parquet")
    assert isinstance(sink, GCSSink)
    _stream(sink, data)
    assert sink.tell() == len(data)

    staged = sink.commit()

    assert sink.commit() is staged
    assert re.fullmatch(r"\.training_eurusd\.parquet\.[0-9a-f]{32}\.tmp", staged.key)
    assert (staged.info.size, staged.info.crc32c) == (len(data), bytes_crc32c(data))
    assert staged.info.uri == f"gs://{gcs_bucket}/out/{staged.key}"
    assert staged.upload_seconds > 0
    assert staged.file.read_range(10, 20) == data[10:20]  # readable in place before publishing
    assert list(storage.list()) == ["training_eurusd.parquet"]  # hidden until published
    assert list(storage.temporaries("")) == [staged.key]

    info = storage.publish_staged(staged, "training_eurusd.parquet")

    assert (info.size, info.crc32c) == (len(data), bytes_crc32c(data))
    assert storage.read_bytes("training_eurusd.parquet") == data
    # Published: no temporary left (its one part, not a segment, was deleted once composed).
    assert _names(gcs_emulator, gcs_bucket) == ["out/training_eurusd.parquet"]
    storage.discard(staged)  # no error when already gone


def test_segments_are_kept_and_a_later_upload_refers_to_them(
    gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    groups = [os.urandom(n) for n in (CHUNK + 3, 1000, 2 * CHUNK)]
    first = _file(storage.stage("training_eurusd.parquet"), groups, b"the first footer")
    expected = MAGIC + b"".join(groups) + b"the first footer"
    assert (first.info.size, first.info.crc32c) == (len(expected), bytes_crc32c(expected))
    storage.publish_staged(first, "training_eurusd.parquet")
    # The segments stay: the magic and each group, not the footer.
    assert _segment_sizes(storage) == sorted([4, *map(len, groups)])
    published = storage.find_file("training_eurusd.parquet")
    assert published is not None

    # A refresh: the magic and the first two groups unchanged, the third new.
    again = storage.stage("training_eurusd.parquet")
    assert isinstance(again, GCSSink)
    assert again.write_segment(MAGIC) == bytes_crc32c(MAGIC)
    at = len(MAGIC)
    for group in groups[:2]:
        again.copy_segment(Unreadable(), at, at + len(group), bytes_crc32c(group))
        at += len(group)
    assert again.sent == 0 and again.tell() == at  # composed from kept segments, not sent
    new = os.urandom(5000)
    again.write(new)
    again.end_segment()
    again.write(b"a new footer")
    staged = again.commit()
    expected = MAGIC + b"".join(groups[:2]) + new + b"a new footer"
    assert storage.read_bytes(staged.key) == expected
    assert (staged.info.size, staged.info.crc32c) == (len(expected), bytes_crc32c(expected))
    assert again.sent == len(new) + len(b"a new footer")
    storage.publish_staged(staged, "training_eurusd.parquet")
    # The third group of the first upload is no longer part of the file: gone.
    assert _segment_sizes(storage) == sorted([4, len(groups[0]), len(groups[1]), len(new)])
    names = _names(gcs_emulator, gcs_bucket)
    assert [n for n in names if not n.startswith(f"out/{SEGMENTS}/")] == [
        "out/training_eurusd.parquet"
    ]


def test_a_copy_without_a_kept_segment_is_read_checked_and_sent(
    gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    data = MAGIC + os.urandom(3000) + os.urandom(2 * CHUNK + 1) + b"footer"
    storage.write_bytes("earlier.parquet", data)
    earlier = storage.find_file("earlier.parquet")
    assert earlier is not None
    spans = [(4, 3004), (3004, len(data) - 6)]

    sink = storage.stage("training_eurusd.parquet")
    sink.write_segment(MAGIC)
    for start, stop in spans:
        sink.copy_segment(earlier, start, stop, bytes_crc32c(data[start:stop]))
    sink.write(b"footer")
    staged = sink.commit()
    assert storage.read_bytes(staged.key) == data
    assert staged.info.crc32c == bytes_crc32c(data)
    storage.discard(staged)

    # Bytes that differ from the CRC32C recorded for them: a mismatch naming the source, and
    # nothing of this upload left once aborted (the segments kept before stay).
    before = _names(gcs_emulator, gcs_bucket)
    other = storage.stage("other.parquet")
    other.write_segment(MAGIC)
    start, stop = spans[1]
    wrong = bytes_crc32c(b"other bytes")
    with pytest.raises(CopyMismatch, match=rf"bytes {start}-{stop} of {earlier.uri} have CRC32C"):
        other.copy_segment(earlier, start, stop, wrong)
    other.abort()
    assert _names(gcs_emulator, gcs_bucket) == before


def test_an_upload_in_more_segments_than_one_compose_takes_is_composed_in_runs(
    gcs_emulator: GCSEmulator, gcs_bucket: str
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    segments = [bytes([i]) * (100 + i) for i in range(40)]  # 40 row groups and a magic: > 32
    sink = storage.stage("f.parquet")
    for data in segments:
        sink.write(data)
        sink.end_segment()
    sink.write(b"footer")
    staged = sink.commit()
    assert storage.read_bytes(staged.key) == b"".join(segments) + b"footer"
    assert staged.info.crc32c == bytes_crc32c(b"".join(segments) + b"footer")
    storage.discard(staged)
    # Only the segments stay (not the footer's part, not the runs composed on the way).
    assert _segment_sizes(storage, "f.parquet") == sorted(map(len, segments))
    assert len(_names(gcs_emulator, gcs_bucket)) == len(segments)

    # Written again, the same segments are referred to, not sent; a new one is sent.
    again = storage.stage("f.parquet")
    for data in segments[:-1]:
        assert again.write_segment(data) == bytes_crc32c(data)
    assert again.sent == 0
    again.write_segment(b"new")
    staged = again.commit()
    assert storage.read_bytes(staged.key) == b"".join(segments[:-1]) + b"new"
    assert again.sent == 3
    storage.discard(staged)
    # The last segment of the first upload is no longer part of the file: gone.
    assert _segment_sizes(storage, "f.parquet") == sorted([3, *map(len, segments[:-1])])


@pytest.mark.parametrize("when", ["written", "committed"])
def test_an_abort_leaves_no_object_and_cancels_the_part_being_sent(
    gcs_emulator: GCSEmulator, gcs_bucket: str, when: str
) -> None:
    storage = GCSStorage(gcs_bucket, chunk_size=CHUNK)
    sink = storage.stage("training_eurusd.parquet")
    sink.write_segment(MAGIC)  # a segment stored whole
    for _ in range(12):  # more writes than the queue holds: the sending thread has begun
        sink.write(os.urandom(CHUNK // 4 + 1))  # some chunks sent, the rest buffered
    if when == "committed":
        sink.end_segment()
        sink.commit()
        assert _names(gcs_emulator, gcs_bucket)
    sink.abort()
    assert _names(gcs_emulator, gcs_bucket) == []
    with pytest.raises(StorageError, match="aborted"):
        sink.write(b"more")
    with pytest.raises(StorageError, match="aborted"):
        sink.end_segment()
    sink.abort()  # twice: no error
    # The part's writer, once collected, does not finish its upload (io's finalizer closes it).
    del sink
    gc.collect()
    assert _names(gcs_emulator, gcs_bucket) == []


def test_a_part_stored_unlike_what_was_written_fails_the_commit_and_leaves_nothing(
    gcs_emulator: GCSEmulator, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes changed between the writer and the upload (the sink's CRC32C is of what it was
    handed): the stored part's CRC32C differs, and commit says so and keeps nothing."""
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    storage.write_bytes("training_eurusd.parquet", b"the previous version")
    before = storage.stat("training_eurusd.parquet")
    append = GCSSink._append

    def flipped(self: GCSSink, data: bytes | memoryview) -> None:
        data = bytes(data)
        append(self, data[:-1] + bytes([data[-1] ^ 1]) if len(data) > 100 else data)

    monkeypatch.setattr(GCSSink, "_append", flipped)
    sink = storage.stage("training_eurusd.parquet")
    sink.write_segment(MAGIC)
    sink.write(os.urandom(CHUNK + 7))  # a part in two chunks, the last one open
    with pytest.raises(StorageError, match=r"upload of gs://.*failed: .* was stored with crc32c"):
        sink.end_segment()
        sink.write(os.urandom(CHUNK))
        sink.commit()
    sink.abort()
    assert _names(gcs_emulator, gcs_bucket) == ["out/training_eurusd.parquet"]
    assert storage.stat("training_eurusd.parquet") == before

    # Found only by the commit: the commit drops the upload itself.
    sink = storage.stage("training_eurusd.parquet")
    sink.write_segment(MAGIC)
    sink.write(os.urandom(2 * CHUNK))
    with pytest.raises(StorageError, match=r"was stored with crc32c .* bytes were written"):
        sink.commit()
    assert _names(gcs_emulator, gcs_bucket) == ["out/training_eurusd.parquet"]


_KILLED_SINK = """
import sys, time
from pathlib import Path
from bqx_assets.core.storage.gcs import GCSStorage

bucket, marker = sys.argv[1:]
storage = GCSStorage(bucket, "out", chunk_size=256 * 1024)
sink = storage.stage("training_eurusd.parquet")
sink.write_segment(b"PAR1")
for i in range(3):
    sink.write(bytes([i]) * 300_000)
    sink.end_segment()
deadline = time.monotonic() + 60
while len(list(storage.list(".segments/training_eurusd.parquet"))) < 4:  # stored whole
    assert time.monotonic() < deadline
    time.sleep(0.02)
sink.write(bytes([3]) * 600_000)  # chunks of a part sent, the part not finished
time.sleep(0.3)
# Written whole, then renamed: the test kills us as soon as the marker exists.
Path(marker + ".part").write_text(str(sink.tell()))
Path(marker + ".part").replace(marker)
time.sleep(3600)
"""


def test_a_writer_killed_mid_way_leaves_nothing_a_reader_sees_and_a_rerun_publishes(
    gcs_emulator: GCSEmulator, gcs_bucket: str, tmp_path: Path
) -> None:
    storage = GCSStorage(gcs_bucket, "out", chunk_size=CHUNK)
    previous = storage.write_bytes("training_eurusd.parquet", b"the previous version")
    marker = tmp_path / "sent"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SINK, gcs_bucket, str(marker)],
        env=gcs_emulator.env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert int(marker.read_text()) == 4 + 3 * 300_000 + 600_000
    # Nothing half-written and no temporary object: the previous file, and the segments the
    # killed writer finished (whole objects, each checked as it was stored).
    names = _names(gcs_emulator, gcs_bucket)
    assert [n for n in names if not n.startswith(f"out/{SEGMENTS}/")] == [
        "out/training_eurusd.parquet"
    ]
    assert _segment_sizes(storage) == [4, 300_000, 300_000, 300_000]
    assert storage.stat("training_eurusd.parquet") == previous

    # The rerun: the magic and two groups unchanged are referred to, the rest sent.
    groups = [bytes([0]) * 300_000, bytes([1]) * 300_000, b"new" * 1000, bytes([3]) * 600_000]
    sink = storage.stage("training_eurusd.parquet")
    sink.write_segment(MAGIC)
    for group in groups:
        sink.write_segment(group)
    sink.write(b"footer")
    staged = sink.commit()
    assert sink.sent == 3000 + 600_000 + 6
    info = storage.publish_staged(staged, "training_eurusd.parquet")
    expected = MAGIC + b"".join(groups) + b"footer"
    assert (info.size, info.crc32c) == (len(expected), bytes_crc32c(expected))
    assert storage.read_bytes("training_eurusd.parquet") == expected
    # The dead writer's segment the file does not hold is gone, its others are the file's.
    assert _segment_sizes(storage) == sorted([4, *map(len, groups)])
    assert not [n for n in _names(gcs_emulator, gcs_bucket) if n.endswith(".tmp")]
