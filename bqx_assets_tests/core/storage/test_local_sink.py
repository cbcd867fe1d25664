"""LocalSink and LocalFile: a file written beside its key in segments, copies checked or vouched
for, committed with the CRC32C of its segments, published by rename or left nowhere."""

from __future__ import annotations

import errno
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage import (
    CopyMismatch,
    LocalFile,
    LocalStorage,
    StoredFile,
    bytes_crc32c,
    file_crc32c,
    local_sink,
)
from bqx_assets.core.storage.local_sink import LocalSink
from bqx_assets_tests.builders import root_with_xattrs

MAGIC = b"PAR1"
RNG = random.Random(11)
GROUPS = [RNG.randbytes(n) for n in (5000, 1, 70_001, 4096)]
"""Row groups of an earlier file, its segments after the magic."""
FOOTER = b"the earlier footer" + MAGIC


def _spans(groups: Sequence[bytes] = GROUPS, at: int = len(MAGIC)) -> list[tuple[int, int, str]]:
    """(start, stop, CRC32C) of each group in a file that starts with them at `at`."""
    spans = []
    for group in groups:
        spans.append((at, at + len(group), bytes_crc32c(group)))
        at += len(group)
    return spans


class BytesFile(StoredFile):
    """A stored file that is not local (as an object store's is to a local sink): read by
    ranges."""

    remote = True

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.uri = "mem://earlier.parquet"
        self.size = len(data)
        self.reads: list[tuple[int, int]] = []

    def read_range(self, start: int, stop: int) -> bytes:
        self.reads.append((start, stop))
        return self.data[start:stop]

    def reader(self, blocks: Sequence[tuple[int, bytes]] = ()) -> object:  # type: ignore[override]
        raise NotImplementedError


@pytest.fixture
def root(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "root")


@pytest.fixture
def earlier(root: LocalStorage) -> Path:
    """An earlier file written by the root: the magic, the groups, a footer (vouched for where
    the filesystem keeps xattrs)."""
    root.write_bytes("out/earlier.parquet", MAGIC + b"".join(GROUPS) + FOOTER)
    return root.root / "out" / "earlier.parquet"


def _left(root: LocalStorage) -> list[str]:
    """Every file under the root, temporaries included."""
    return sorted(p.relative_to(root.root).as_posix() for p in root.root.rglob("*") if p.is_file())


def _damaged(path: Path, at: int) -> None:
    """One byte flipped in place, the file's size and mtime kept (its record still holds)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class CopySpy:
    """os.copy_file_range, recording each call's (src offset, dst offset, count); `refuse`: it
    answers EXDEV (files on two filesystems) instead of copying."""

    def __init__(self, refuse: bool = False, each: Callable[[], None] | None = None) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.refuse = refuse
        self.each = each
        self.real = os.copy_file_range

    def __call__(self, src: int, dst: int, count: int, offset_src: int, offset_dst: int) -> int:
        self.calls.append((offset_src, offset_dst, count))
        if self.each is not None:
            self.each()
        if self.refuse:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return self.real(src, dst, count, offset_src, offset_dst)


# -- writing and committing -----------------------------------------------------------------------
def test_a_committed_file_has_the_crc32c_of_its_bytes_combined_from_its_segments(
    root: LocalStorage, earlier: Path
) -> None:
    sink = root.stage("out/training.parquet")
    assert isinstance(sink, LocalSink)
    assert re.fullmatch(r"out/\.training\.parquet\.[0-9a-f]{32}\.tmp", sink.key)
    assert sink.write_segment(MAGIC) == bytes_crc32c(MAGIC)
    new_group = RNG.randbytes(30_000)
    for at in range(0, len(new_group), 7000):  # written piece by piece, as the merge does
        sink.write(memoryview(new_group)[at : at + 7000])
    sink.write(b"")
    assert sink.end_segment() == bytes_crc32c(new_group)
    assert sink.tell() == len(MAGIC) + len(new_group)
    # A copy from a local file, then from a file read by ranges (an object store's).
    start, stop, crc = _spans()[2]
    sink.copy_segment(LocalFile(earlier), start, stop, crc)
    remote = BytesFile(earlier.read_bytes())
    start1, stop1, crc1 = _spans()[0]
    sink.copy_segment(remote, start1, stop1, crc1)
    assert remote.reads == [(start1, stop1)]
    sink.write(b"a new footer")
    expected = MAGIC + new_group + GROUPS[2] + GROUPS[0] + b"a new footer"
    assert sink.tell() == len(expected)
    assert list(root.list("out")) == ["out/earlier.parquet"]  # hidden until published

    staged = sink.commit()

    assert sink.commit() is staged  # committed once
    assert staged.key == sink.key and staged.upload_seconds == 0.0
    assert (staged.info.size, staged.info.crc32c) == (len(expected), bytes_crc32c(expected))
    assert file_crc32c(sink.path) == staged.info.crc32c
    assert staged.info.uri == str(sink.path)
    assert staged.file.read_range(0, staged.info.size) == expected  # read in place, unpublished
    assert list(root.temporaries("out")) == [staged.key]
    assert list(root.list("out")) == ["out/earlier.parquet"]


def test_a_sink_and_its_publish_make_the_folders_of_their_keys(root: LocalStorage) -> None:
    sink = root.stage("eurusd/new/f.parquet")
    sink.write(b"x")
    root.publish_staged(sink.commit(), "eurusd/new/f.parquet")
    assert root.read_bytes("eurusd/new/f.parquet") == b"x"
    # Published into a folder that does not exist yet (a quarantined file's).
    sink = root.stage("eurusd/new/f.parquet")
    sink.write(b"y")
    root.publish_staged(sink.commit(), "quarantine/f.1.parquet")
    assert root.read_bytes("quarantine/f.1.parquet") == b"y"
    assert _left(root) == ["eurusd/new/f.parquet", "quarantine/f.1.parquet"]


@pytest.mark.parametrize("durable", [True, False])
def test_publish_renames_the_file_onto_its_key_with_its_checksum_recorded(
    tmp_path: Path, durable: bool
) -> None:
    root_with_xattrs(tmp_path)
    root = LocalStorage(tmp_path / "root", durable=durable)
    root.write_bytes("training.parquet", b"the previous version")
    sink = root.stage("training.parquet")
    sink.write_segment(MAGIC)
    sink.write(b"a row group")
    staged = sink.commit()
    inode = os.stat(sink.path).st_ino

    info = root.publish_staged(staged, "training.parquet")

    path = tmp_path / "root" / "training.parquet"
    assert path.read_bytes() == MAGIC + b"a row group"
    assert os.stat(path).st_ino == inode  # renamed, not copied
    assert (info.uri, info.size, info.crc32c) == (str(path), staged.info.size, staged.info.crc32c)
    st = os.stat(path)
    assert os.getxattr(path, "user.bqx.crc32c") == (
        f"{st.st_size} {st.st_mtime_ns} {staged.info.crc32c}".encode()
    )
    assert root.vouches("training.parquet")
    found = root.find_file("training.parquet")
    assert found is not None and found.vouched and found.size == staged.info.size
    assert LocalStorage(tmp_path / "root").stat("training.parquet") == info  # another process
    assert _left(root) == ["training.parquet"]  # no temporary


def test_a_staged_file_changed_or_gone_before_its_publish_is_refused(root: LocalStorage) -> None:
    root.write_bytes("training.parquet", b"the previous version")
    before = root.stat("training.parquet")
    sink = root.stage("training.parquet")
    sink.write(b"the new version")
    staged = sink.commit()
    with open(sink.path, "ab") as f:  # appended to behind the sink's back
        f.write(b"!")

    with pytest.raises(StorageError, match=r"has 16 bytes, 15 were committed; nothing was pub"):
        root.publish_staged(staged, "training.parquet")
    assert root.read_bytes("training.parquet") == b"the previous version"
    assert root.stat("training.parquet") == before

    root.discard(staged)
    with pytest.raises(StorageError, match=r"\.training\.parquet\..*\.tmp is gone; nothing was"):
        root.publish_staged(staged, "training.parquet")
    assert root.stat("training.parquet") == before
    assert _left(root) == ["training.parquet"]


def test_a_file_changed_behind_the_sink_fails_its_commit_and_leaves_nothing(
    root: LocalStorage, earlier: Path
) -> None:
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    sink.copy_segment(LocalFile(earlier), *_spans()[0])  # flushed to the file
    os.truncate(sink.path, 3)
    with pytest.raises(StorageError, match=r"bytes written, the file has another size"):
        sink.commit()
    assert _left(root) == ["out/earlier.parquet"]


# -- copies ---------------------------------------------------------------------------------------
def test_a_copy_from_a_damaged_file_is_a_mismatch_naming_it(
    root: LocalStorage, earlier: Path
) -> None:
    root.write_bytes("out/training.parquet", b"the previous version")
    _damaged(earlier, _spans()[2][0] + 100)
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    sink.copy_segment(LocalFile(earlier), *_spans()[0])  # an undamaged group is copied
    start, stop, crc = _spans()[2]
    with pytest.raises(CopyMismatch, match=rf"bytes {start}-{stop} of {earlier} have CRC32C") as e:
        sink.copy_segment(LocalFile(earlier), start, stop, crc)
    assert (e.value.start, e.value.stop) == (start, stop)
    assert f"not the {crc} recorded" in str(e.value)
    # From a file read by ranges, the same.
    remote = BytesFile(earlier.read_bytes())
    with pytest.raises(CopyMismatch, match=r"of mem://earlier\.parquet have CRC32C"):
        sink.copy_segment(remote, start, stop, crc)
    sink.abort()
    assert _left(root) == ["out/earlier.parquet", "out/training.parquet"]
    assert root.read_bytes("out/training.parquet") == b"the previous version"


def test_a_copy_from_a_vouched_file_is_made_unread(
    root: LocalStorage, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file its root vouches for is copied by the kernel without being read: its bytes are
    trusted to be the recorded ones (a flipped byte its record cannot see is copied as it is,
    and the committed CRC32C is the recorded one)."""
    _damaged(earlier, _spans()[2][0] + 100)
    data = earlier.read_bytes()

    def no_reads(*args: object) -> int:
        raise AssertionError("a vouched file was read")

    monkeypatch.setattr(os, "preadv", no_reads)
    spy = CopySpy()
    monkeypatch.setattr(os, "copy_file_range", spy)
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    for start, stop, crc in _spans():
        sink.copy_segment(LocalFile(earlier, vouched=True), start, stop, crc)
    staged = sink.commit()
    assert sink.path.read_bytes() == data[: _spans()[-1][1]]
    assert staged.info.crc32c == bytes_crc32c(MAGIC + b"".join(GROUPS))  # the recorded bytes'
    assert [(src, dst) for src, dst, _ in spy.calls] == [(s, s) for s, _, _ in _spans()]


def test_a_copy_from_a_file_shorter_than_its_span_is_an_error_naming_it(
    root: LocalStorage, earlier: Path
) -> None:
    size = earlier.stat().st_size
    for vouched in (False, True):
        sink = root.stage("out/training.parquet")
        sink.write_segment(MAGIC)
        with pytest.raises(StorageError, match=rf"{earlier} ends early"):
            sink.copy_segment(LocalFile(earlier, vouched=vouched), 4, size + 10, "AAAAAA==")
        sink.abort()
    assert _left(root) == ["out/earlier.parquet"]


@pytest.mark.parametrize("vouched", [False, True], ids=["read", "vouched"])
@pytest.mark.parametrize("how", ["copy_segment", "copy_ahead"])
def test_a_copy_the_kernel_refuses_is_written_from_the_bytes_read(
    root: LocalStorage,
    earlier: Path,
    monkeypatch: pytest.MonkeyPatch,
    vouched: bool,
    how: str,
) -> None:
    """copy_file_range refused (EXDEV: the two files on two filesystems) gives the same bytes
    and CRC32C, the source read and checked instead."""
    spy = CopySpy(refuse=True)
    monkeypatch.setattr(os, "copy_file_range", spy)
    source = LocalFile(earlier, vouched=vouched)
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    if how == "copy_ahead":
        assert sink.copy_ahead(source, _spans()) == len(GROUPS)
    else:
        for span in _spans():
            sink.copy_segment(source, *span)
    sink.write(FOOTER)
    staged = sink.commit()
    assert spy.calls  # it was asked, and refused
    assert sink.path.read_bytes() == earlier.read_bytes()
    assert staged.info.crc32c == file_crc32c(earlier)


def test_a_kernel_refusal_after_a_first_step_copies_the_rest_from_the_bytes_read(
    root: LocalStorage, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_sink, "_KERNEL_STEP", 1000)
    spy = CopySpy()
    monkeypatch.setattr(os, "copy_file_range", spy)
    spy.each = lambda: setattr(spy, "refuse", len(spy.calls) > 3)  # refused from the 4th step
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    start, stop, crc = _spans()[2]
    sink.copy_segment(LocalFile(earlier), start, stop, crc)
    sink.commit()
    assert len(spy.calls) == 4
    assert sink.path.read_bytes() == MAGIC + GROUPS[2]


# -- copy ahead -----------------------------------------------------------------------------------
def test_copy_ahead_of_a_vouched_file_in_place_is_one_copy_from_byte_0(
    root: LocalStorage, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leading groups land where they lay in the earlier file (both begin with the same
    magic): one block-aligned copy of its first bytes to the same offsets, which XFS or btrfs
    makes by sharing every whole block."""
    spy = CopySpy()
    monkeypatch.setattr(os, "copy_file_range", spy)
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    leading = _spans()[:3]
    assert sink.copy_ahead(LocalFile(earlier, vouched=True), leading) == 3
    end = leading[-1][1]
    assert sink.tell() == end  # writing goes on after them
    new_group = RNG.randbytes(9000)
    sink.write(new_group)
    sink.end_segment()
    sink.write(b"a new footer")
    staged = sink.commit()
    expected = MAGIC + b"".join(GROUPS[:3]) + new_group + b"a new footer"
    assert sink.path.read_bytes() == expected
    assert staged.info.crc32c == bytes_crc32c(expected)
    assert spy.calls == [(0, 0, end)]


@pytest.mark.parametrize("vouched", [False, True], ids=["read", "vouched"])
def test_copy_ahead_elsewhere_copies_each_span(
    root: LocalStorage, earlier: Path, monkeypatch: pytest.MonkeyPatch, vouched: bool
) -> None:
    """Spans that land at other offsets (a file with another leading segment), or a source not
    vouched for (each span checked as it is read), are copied one by one."""
    spy = CopySpy()
    monkeypatch.setattr(os, "copy_file_range", spy)
    sink = root.stage("out/training.parquet")
    head = MAGIC + b"+" if vouched else MAGIC
    sink.write_segment(head)
    assert sink.copy_ahead(LocalFile(earlier, vouched=vouched), _spans()[1:]) == 3
    sink.write(b"footer")
    staged = sink.commit()
    expected = head + b"".join(GROUPS[1:]) + b"footer"
    assert sink.path.read_bytes() == expected
    assert staged.info.crc32c == bytes_crc32c(expected)
    first = _spans()[1][0]
    assert [(src, dst) for src, dst, _ in spy.calls] == [
        (start, start - first + len(head)) for start, _, _ in _spans()[1:]
    ]


def test_copy_ahead_takes_local_spans_once(root: LocalStorage, earlier: Path) -> None:
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    remote = BytesFile(earlier.read_bytes())
    assert sink.copy_ahead(remote, _spans()) == 0  # not local: the caller copies in turn
    assert sink.copy_ahead(LocalFile(earlier), []) == 0
    assert sink.copy_ahead(LocalFile(earlier), _spans()[:2]) == 2
    assert sink.copy_ahead(LocalFile(earlier), _spans()[2:]) == 0  # one copy ahead per file
    for span in _spans()[2:]:
        sink.copy_segment(LocalFile(earlier), *span)
    sink.write(FOOTER)
    staged = sink.commit()
    assert sink.path.read_bytes() == earlier.read_bytes()
    assert staged.info.crc32c == file_crc32c(earlier)


def test_a_mismatch_of_a_copy_ahead_is_raised_by_commit_and_leaves_nothing(
    root: LocalStorage, earlier: Path
) -> None:
    root.write_bytes("out/training.parquet", b"the previous version")
    start, stop, _ = _spans()[1]
    _damaged(earlier, start)
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    assert sink.copy_ahead(LocalFile(earlier), _spans()) == len(GROUPS)
    sink.write(FOOTER)
    with pytest.raises(CopyMismatch, match=rf"bytes {start}-{stop} of {earlier}"):
        sink.commit()
    assert _left(root) == ["out/earlier.parquet", "out/training.parquet"]
    assert root.read_bytes("out/training.parquet") == b"the previous version"


# -- abort and discard ----------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["opened", "written", "copied", "committed", "aborted"])
def test_abort_at_any_point_leaves_no_file(root: LocalStorage, earlier: Path, when: str) -> None:
    sink = root.stage("out/training.parquet")
    if when != "opened":
        sink.write_segment(MAGIC)
        sink.write(b"a row group")
    if when in ("copied", "committed", "aborted"):
        sink.copy_segment(LocalFile(earlier), *_spans()[0])
        sink.copy_ahead(LocalFile(earlier), _spans()[1:])
    if when == "committed":
        sink.commit()
    if when == "aborted":
        sink.abort()
    sink.abort()
    assert _left(root) == ["out/earlier.parquet"]


def test_abort_stops_a_copy_ahead_on_its_way(
    root: LocalStorage, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_sink, "_KERNEL_STEP", 64)  # ~1,200 steps of 20 ms each: 24 s
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.02)

    spy = CopySpy(each=slow)
    monkeypatch.setattr(os, "copy_file_range", spy)
    sink = root.stage("out/training.parquet")
    sink.write_segment(MAGIC)
    assert sink.copy_ahead(LocalFile(earlier, vouched=True), _spans()) == len(GROUPS)
    assert started.wait(10)
    sink.abort()
    calls = len(spy.calls)
    time.sleep(0.1)
    assert len(spy.calls) == calls < 100  # stopped within a step
    assert _left(root) == ["out/earlier.parquet"]


def test_discard_deletes_a_committed_file(root: LocalStorage) -> None:
    sink = root.stage("out/training.parquet")
    sink.write(b"bytes")
    staged = sink.commit()
    root.discard(staged)
    root.discard(staged)  # no error when already gone
    assert _left(root) == []
    with pytest.raises(StorageError, match="cannot read"):
        staged.file.read_range(0, 1)
