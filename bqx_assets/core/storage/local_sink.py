"""A sink into a local root: a temporary file beside its key, copies made by the kernel."""

from __future__ import annotations

import base64
import errno
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c
import numpy as np

from bqx_assets.core.errors import ReplacedWhileRead, StorageError
from bqx_assets.core.storage.base import ObjectInfo, StagedFile, StoredFile
from bqx_assets.core.storage.checksum import crc32c_concat
from bqx_assets.core.storage.sink import CopyMismatch, Sink

if TYPE_CHECKING:
    import pyarrow as pa

COPY_BYTES = 16 * 1024 * 1024
"""A copy that is read moves in blocks of this size."""
_KERNEL_STEP = 256 * 1024 * 1024  # a kernel copy's step: a cancelled copy stops within one
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}
"""copy_file_range's errors for files it cannot copy between (other filesystems, old kernels)."""
_UNREAD = ""
"""What `_splice` returns for bytes copied unread (a vouched-for source): nothing to check."""


class LocalFile(StoredFile):
    """A file of a local root read in place. `vouched`: its root holds a checksum recorded
    when it was written, still bound to its size and mtime (`LocalStorage.vouches`), so its
    bytes may be copied without being read again to check them. `pinned`: the (device, inode)
    of the version that was checked; a read that finds another file there (a refresh renamed
    a new version onto the key) or none fails instead of mixing two versions."""

    def __init__(
        self,
        path: Path | str,
        size: int | None = None,
        *,
        vouched: bool = False,
        pinned: tuple[int, int] | None = None,
    ):
        self.path = Path(path)
        self.uri = str(self.path)
        self._size = size
        self.vouched = vouched
        self.pinned = pinned

    @property
    def size(self) -> int:  # type: ignore[override]
        if self._size is None:
            try:
                self._size = self.path.stat().st_size
            except OSError as exc:
                raise StorageError(f"cannot read {self.uri}: {exc}") from exc
        return self._size

    def read_range(self, start: int, stop: int) -> bytes:
        try:
            with open(self.path, "rb") as f:
                self._same(os.fstat(f.fileno()))
                f.seek(start)
                data = f.read(stop - start)
        except FileNotFoundError as exc:
            if self.pinned is None:
                raise StorageError(f"cannot read {self.uri}: {exc}") from exc
            raise self._gone() from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri}: {exc}") from exc
        if len(data) != stop - start:
            raise StorageError(f"{self.uri} ends early: {len(data)} bytes at {start}")
        return data

    def reader(self, blocks: Sequence[tuple[int, bytes]] = ()) -> pa.NativeFile:
        import pyarrow as pa

        # An open file, not a path: pyarrow would resolve a filesystem for each of ~4,000
        # chunk files (~0.1 ms each). The file closes with its reader.
        try:
            opened = pa.OSFile(str(self.path))
        except FileNotFoundError as exc:
            if self.pinned is None:
                raise  # the reader's caller names the file that is not there
            raise self._gone() from exc
        if self.pinned is None:
            return opened
        # Looked at after opening: the path still the pinned file, the one opened is it.
        try:
            self._same(os.stat(self.path))
        except FileNotFoundError as exc:
            opened.close()
            raise self._gone() from exc
        except BaseException:
            opened.close()
            raise
        return opened

    def _same(self, st: os.stat_result) -> None:
        if self.pinned is not None and (st.st_dev, st.st_ino) != self.pinned:
            raise ReplacedWhileRead(f"{self.uri} was replaced while being read")

    def _gone(self) -> ReplacedWhileRead:
        return ReplacedWhileRead(f"{self.uri} does not exist: deleted while being read")


class LocalSink(Sink):
    """A file written to `.{name}.{uuid}.tmp` beside its key. A segment copied from a local file
    is checksummed as it is read and moved by `copy_file_range` (no pass through Python's
    buffers; on XFS or btrfs the kernel shares the source's extents instead of writing), or,
    from a vouched-for file, moved unread; leading segments may be copied in the background
    (`copy_ahead`). `commit()` checks the file's size and gives its CRC32C as the combination
    of its segments' (each computed as written, checked as copied, or vouched for)."""

    def __init__(self, path: Path, key: str) -> None:
        super().__init__()
        self.path = path
        self.key = key
        """The temporary file's key in its root."""
        self.uri = str(path)
        self._f = open(path, "w+b")  # noqa: SIM115 - closed by commit or abort
        self._parts: list[tuple[str, int]] = []
        self._leading: _LeadingCopy | None = None
        self._staged: StagedFile | None = None

    def _append(self, data: bytes | memoryview) -> None:
        self._f.write(data)

    def _ended(self, crc32c: str, size: int) -> None:
        self._parts.append((crc32c, size))

    def tell(self) -> int:
        return self._f.tell()

    def copy_segment(self, source: StoredFile, start: int, stop: int, crc32c: str) -> None:
        self.end_segment()
        if isinstance(source, LocalFile):
            self._f.flush()
            at = self._f.tell()
            crc = _splice(source.path, self._f.fileno(), start, stop, at, read=not source.vouched)
            assert crc is not None  # no cancel: the copy ran to its end
            self._f.seek(at + stop - start)
        else:
            checksum = google_crc32c.Checksum()
            for at in range(start, stop, COPY_BYTES):
                data = source.read_range(at, min(at + COPY_BYTES, stop))
                checksum.update(data)
                self._f.write(data)
            crc = base64.b64encode(checksum.digest()).decode()
        if crc not in (_UNREAD, crc32c):
            raise CopyMismatch(source, start, stop, crc32c, crc)
        self._parts.append((crc32c, stop - start))

    def copy_ahead(self, source: StoredFile, spans: Sequence[tuple[int, int, str]]) -> int:
        if not isinstance(source, LocalFile) or not spans or self._leading is not None:
            return 0
        self.end_segment()
        self._f.flush()
        self._leading = _LeadingCopy(self._f.fileno(), source, spans, self._f.tell())
        self._leading.start()
        self._parts += [(crc, stop - start) for start, stop, crc in spans]
        self._f.seek(self._leading.end)
        return len(spans)

    def commit(self) -> StagedFile:
        if self._staged is not None:
            return self._staged
        self.end_segment()  # what follows the last segment (a file's footer)
        try:
            if self._leading is not None:
                self._leading.wait()
            self._f.flush()
            size = self._f.tell()
            self._f.close()
            if os.stat(self.path).st_size != size or sum(n for _, n in self._parts) != size:
                raise StorageError(f"{self.uri}: {size} bytes written, the file has another size")
        except BaseException:
            self.abort()
            raise
        stat = os.stat(self.path)
        info = ObjectInfo(
            uri=self.uri,
            size=size,
            crc32c=crc32c_concat(self._parts),
            updated=datetime.fromtimestamp(stat.st_mtime, UTC),
        )
        self._staged = StagedFile(self.key, info, LocalFile(self.path, size))
        return self._staged

    def abort(self) -> None:
        if self._leading is not None:
            self._leading.cancel()
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)


class _LeadingCopy(threading.Thread):
    """The leading segments a caller copies from a local file (a refresh's unchanged months and
    weeks), copied into their final place by a thread of their own: the copy waits on the disk
    while the caller's checks and encoding use the CPU, so they overlap. `wait` raises what the
    copy raised (CopyMismatch for a damaged source)."""

    def __init__(
        self, fd: int, source: LocalFile, spans: Sequence[tuple[int, int, str]], at: int
    ) -> None:
        super().__init__(name="bqx-copy-ahead", daemon=True)
        self.fd = fd
        self.source = source
        self.spans = list(spans)
        self.starts: list[int] = []  # where each one goes
        for start, stop, _ in self.spans:
            self.starts.append(at)
            at += stop - start
        self.end = at
        # Where each lands is where it lay in the source (both begin with the same bytes before
        # them): the whole span from byte 0 can then be copied as one.
        self.in_place = all(s == span[0] for s, span in zip(self.starts, self.spans, strict=True))
        self._cancel = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            # Block-aligned: one copy of the file's first `end` bytes to the same offsets, so
            # that XFS or btrfs share every whole block (a copy per segment starts mid-block
            # and makes the kernel copy the bytes: 11 s at production length).
            whole = self.source.vouched and self.in_place and hasattr(os, "copy_file_range")
            if whole and _kernel_copy(self.source.path, self.fd, 0, self.end, 0, self._cancel) in (
                True,
                None,
            ):
                return
            for (start, stop, crc32c), at in zip(self.spans, self.starts, strict=True):
                crc = _splice(
                    self.source.path, self.fd, start, stop, at, self._cancel,
                    read=not self.source.vouched,
                )  # fmt: skip
                if crc is None:
                    return
                if crc not in (_UNREAD, crc32c):
                    raise CopyMismatch(self.source, start, stop, crc32c, crc)
        except BaseException as exc:
            self._error = exc

    def cancel(self) -> None:
        self._cancel.set()
        if self.is_alive():
            self.join()

    def wait(self) -> None:
        self.join()
        if self._error is not None:
            raise self._error


def _splice(
    source: Path,
    fd: int,
    start: int,
    stop: int,
    at: int,
    cancel: threading.Event | None = None,
    *,
    read: bool = True,
) -> str | None:
    """Copy bytes [start, stop) of the local file `source` to `at` in the file open as `fd`;
    their CRC32C, or None when `cancel` is set on the way.

    With `read=False` (the source's root vouches for its bytes) the kernel copies them unread,
    and `_UNREAD` is returned: on XFS or btrfs that shares their extents and costs neither a
    read nor a write. Where the kernel cannot copy between the two files, they are read,
    checked and written as below.

    Each step is checksummed as it is read from the source (its pages are in the page cache,
    having just been read), then copied by the kernel where it can copy between the two files,
    else written from the bytes read. The checked bytes are the copied ones unless the source
    is rewritten in place during the copy; files are only ever replaced by a rename, which this
    open file outlives."""
    kernel = hasattr(os, "copy_file_range")
    if kernel and not read:
        copied = _kernel_copy(source, fd, start, stop, at, cancel)
        if copied is None:
            return None
        if copied:
            return _UNREAD
        kernel = False  # the whole range again, read, checked and written
    crc = google_crc32c.Checksum()
    block = bytearray(min(COPY_BYTES, max(stop - start, 1)))
    view = memoryview(block)
    with open(source, "rb", buffering=0) as src:
        done = start
        while done < stop:
            if cancel is not None and cancel.is_set():
                return None
            step = min(stop - done, _KERNEL_STEP)
            before, got = crc.copy(), 0
            while got < step:
                n = os.preadv(src.fileno(), [view[: min(len(block), step - got)]], done + got)
                if n == 0:
                    raise StorageError(f"{source} ends early: nothing at {done + got}")
                crc.update(np.frombuffer(block, dtype=np.uint8, count=n))  # no copy
                if not kernel:
                    _write_all(fd, view[:n], at + done - start + got)
                got += n
            if kernel:
                try:
                    _copy_range(src.fileno(), fd, done, at + done - start, step, source)
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel, crc = False, before
                    continue  # this step again, written from what is read
            done += step
    return base64.b64encode(crc.digest()).decode()


def _kernel_copy(
    source: Path, fd: int, start: int, stop: int, at: int, cancel: threading.Event | None = None
) -> bool | None:
    """Copy bytes [start, stop) of `source` to `at` in `fd` by the kernel alone, unread: True
    when copied, False when the kernel cannot copy between the two files, None when `cancel`
    is set on the way. Extents are shared (XFS, btrfs) only where `start` and `at` fall at the
    same offset within a block; elsewhere the kernel copies the bytes (~1 GB/s here)."""
    try:
        with open(source, "rb", buffering=0) as src:
            for done in range(start, stop, _KERNEL_STEP):
                if cancel is not None and cancel.is_set():
                    return None
                step = min(stop - done, _KERNEL_STEP)
                _copy_range(src.fileno(), fd, done, at + done - start, step, source)
        return True
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
        return False


def _copy_range(src: int, dst: int, offset: int, to: int, count: int, source: Path) -> None:
    while count > 0:
        n = os.copy_file_range(src, dst, count, offset, to)
        if n == 0:  # the end of the source file
            raise StorageError(f"{source} ends early: nothing at {offset}")
        offset, to, count = offset + n, to + n, count - n


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
