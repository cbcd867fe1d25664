"""Storage roots (a local folder or `gs://bucket/prefix`) with atomic, verified writes."""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import errno
import fnmatch
import io
import os
import shutil
import stat
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import google_crc32c

from bqx_assets.core.errors import StorageError

_CHUNK = 8 * 1024 * 1024


def file_crc32c(path: Path | str) -> str:
    """CRC32C of a file, base64 of the big-endian value: the form GCS reports for objects."""
    crc = 0
    # Unbuffered reads sized to what is left (at most _CHUNK): a small chunk file costs one read
    # of its size, not a copy through a buffer nor an 8 MB allocation (-30 % CPU over a
    # refresh's ~14,000 reused chunks). Reads of 1 MB and more checksum without the GIL.
    with open(path, "rb", buffering=0) as f:
        left = os.fstat(f.fileno()).st_size
        while left > 0 and (chunk := f.read(min(_CHUNK, left))):
            crc = google_crc32c.extend(crc, chunk)
            left -= len(chunk)
        while chunk := f.read(_CHUNK):  # grown since the fstat
            crc = google_crc32c.extend(crc, chunk)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def bytes_crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _gf2_times(matrix: list[int], vector: int) -> int:
    out, row = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[row]
        vector >>= 1
        row += 1
    return out


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, matrix[n]) for n in range(32)]


def crc32c_concat(parts: Sequence[tuple[str, int]]) -> str:
    """The CRC32C (base64, as GCS gives it) of the concatenation of parts, each given as its
    own CRC32C (base64) and length: what a composed object's checksum must be. zlib's
    `crc32_combine` (Mark Adler's), for the Castagnoli polynomial: no checksum library the
    project uses (google-crc32c) offers it."""
    total = 0
    for crc_text, length in parts:
        crc = int.from_bytes(base64.b64decode(crc_text), "big")
        if length <= 0:
            continue
        # The operator that appends one zero byte (a zero bit's, squared three times), raised
        # to `length` by squaring: `total` as the CRC of itself followed by `length` zeros.
        op = _gf2_square(_gf2_square(_gf2_square([_CRC32C_POLY] + [1 << n for n in range(31)])))
        n = length
        while n:
            if n & 1:
                total = _gf2_times(op, total)
            n >>= 1
            if n:
                op = _gf2_square(op)
        total ^= crc
    return base64.b64encode(total.to_bytes(4, "big")).decode()


@dataclass(frozen=True)
class ObjectInfo:
    """What a storage root knows about one stored file."""

    uri: str
    size: int
    crc32c: str
    updated: datetime
    generation: int | None = None


class Storage(ABC):
    """A root under which files are stored by key (`eurusd/agg_eurusd.parquet`).

    Writers produce a complete local file first and then call `put_file`, which publishes it
    atomically: a reader never sees a partial file under its final key.
    """

    uri: str

    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, checksum and time of a stored file, or None when there is none."""

    @abstractmethod
    def put_file(self, local: Path, key: str, *, move: bool = False) -> ObjectInfo:
        """Store a complete local file under `key`, atomically, verified against its CRC32C.

        `move=True` lets a local root rename the file instead of copying it.
        """

    @abstractmethod
    def get_file(self, key: str, local: Path) -> Path:
        """Fetch a stored file to `local` (verified), returning the path."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The stored file itself when the root is a local folder, else None."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """Content of a small stored file (a manifest), or None when there is none."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store a small file atomically."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove a stored file; no error when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under a prefix."""

    def infos(self, prefix: str) -> dict[str, ObjectInfo]:
        """What `stat` says of each key under a prefix, as `list` lists them. An object store
        answers from its listing: one request for the folder, not one per object."""
        found = {}
        for key in self.list(prefix):
            info = self.stat(key)
            if info is not None:
                found[key] = info
        return found

    @abstractmethod
    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Copy a stored file to another key, atomically."""

    @abstractmethod
    def temporaries(self, prefix: str) -> Iterator[str]:
        """Keys of the temporary files (`.{name}.{uuid}.tmp`) directly under the folder
        `prefix`: what a writer killed before publishing left behind (`list` skips them)."""

    def fetch(self, key: str, cache_dir: Path) -> Path:
        """A local path holding the stored file: the file itself for a local root, otherwise a
        verified copy in `cache_dir` (reused when its checksum still matches)."""
        path = self.local_path(key)
        if path is not None:
            return path
        info = self.stat(key)
        if info is None:
            raise StorageError(f"{self.uri_of(key)} does not exist")
        local = cache_dir / key
        if (
            local.exists()
            and local.stat().st_size == info.size
            and file_crc32c(local) == info.crc32c
        ):
            return local
        return self.get_file(key, local)


class LocalStorage(Storage):
    """A folder on the local filesystem: atomic by write-to-temp then `os.replace`.

    Each file's CRC32C is kept with the file, as GCS keeps it with an object: in the extended
    attribute `user.bqx.crc32c`, recorded when the file is written or first read whole, bound
    to the file's size and mtime (ns) at that moment. A `stat` trusts a record whose size and
    mtime are the file's and reads no data; any other file is read and checksummed again (and
    recorded). A write changes a file's size or mtime, so a file changed since its record is
    read again; only a change that keeps both (a deliberate `touch -d` or `os.utime`, a
    same-size rewrite within one timestamp tick) goes unseen, as with `make` or rsync's quick
    check. Files here are replaced by rename, never rewritten in place.
    `trust_recorded_crc32c=False` reads every file (a deep check), as does a root on a
    filesystem without user xattrs.
    """

    def __init__(
        self, root: Path | str, *, durable: bool = True, trust_recorded_crc32c: bool = True
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        # fsync before the rename. Checkpoint roots turn it off: a checkpoint is checked against
        # its manifest's size and CRC32C before every reuse, so one torn by a power loss is
        # redone. A filesystem that commits a file's size only after its bytes (ext4's default
        # data=ordered, XFS) leaves a torn file a size that differs from its checksum's record;
        # on ext4 data=writeback only a deep check (trust_recorded_crc32c=False) finds it.
        self.durable = durable
        self.trust_recorded_crc32c = trust_recorded_crc32c
        # Cleared when the root's filesystem refuses user xattrs, so that it is asked once per
        # storage object, not per file.
        self._xattrs = hasattr(os, "getxattr")
        self.uri = str(self.root)
        self._crc_cache: dict[tuple[str, int, int, int], str] = {}
        # Resolved folders by their key: resolving a path costs an lstat and Python work per
        # component (~90 us), paid once per folder instead of on every file operation.
        self._folders: dict[str, str] = {}

    def _where(self, key: str) -> str:
        """The path of `key` as `(root / key).resolve()` gives it, or StorageError when that is
        outside the root. The key's folder is resolved once per storage object (folders are
        made by writers under the root, never replaced by links); a name that is a link, `.`
        or `..` is resolved whole."""
        path = self._in_folder(key)
        return self._resolved(key) if os.path.islink(path) else path

    def _in_folder(self, key: str) -> str:
        """The path of `key` in its resolved folder, its name not checked for a link (the
        caller's stat or open does that without another system call); `.` and `..` resolved."""
        folder, _, name = key.rpartition("/")
        real = self._folders.get(folder)
        if real is None:
            real = os.path.realpath(os.path.join(self.uri, folder)) if folder else self.uri
            self._check_inside(real, key)
            if os.path.isdir(real):
                self._folders[folder] = real
        if name in ("", ".", ".."):
            return self._resolved(key)
        return f"{real}/{name}" if real != "/" else f"/{name}"

    def _resolved(self, key: str) -> str:
        path = os.path.realpath(os.path.join(self.uri, key))
        self._check_inside(path, key)
        return path

    def _check_inside(self, path: str, key: str) -> None:
        if path != self.uri and not path.startswith(self.uri.rstrip("/") + "/"):
            raise StorageError(f"key {key!r} escapes the storage root {self.root}")

    def _path(self, key: str) -> Path:
        return Path(self._where(key))

    def _temp(self, path: Path) -> Path:
        if not path.parent.is_dir():  # a stat: cheaper than mkdir's error for a folder there
            path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")

    def _info(self, path: Path | str, st: os.stat_result | None = None) -> ObjectInfo:
        text = str(path)
        st = st if st is not None else os.stat(text)
        # A file is only replaced by rename, so (inode, size, mtime) identifies its content and
        # the checksum is computed once per file, not on every stat.
        ident = (text, st.st_ino, st.st_size, st.st_mtime_ns)
        crc = self._crc_cache.get(ident)
        if crc is None:
            crc = self._recorded(text, st) if self.trust_recorded_crc32c else None
            if crc is None:
                crc = file_crc32c(text)
                # Bound to the stat taken before the read: a write during or after it changes
                # the mtime, so the record is stale and the file is read again.
                self._record(text, st, crc)
            self._crc_cache[ident] = crc
        return ObjectInfo(
            uri=text,
            size=st.st_size,
            crc32c=crc,
            updated=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def _recorded(self, path: str, st: os.stat_result) -> str | None:
        """The CRC32C recorded on the file for its present size and mtime, else None."""
        if not self._xattrs:
            return None
        try:
            raw = os.getxattr(path, _CRC32C_XATTR)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._xattrs = False
            return None  # none recorded (ENODATA), or unreadable: the file is read
        return _recorded_crc32c(raw, st)

    def _record(self, path: str | Path, st: os.stat_result | None, crc32c: str) -> None:
        """Record `crc32c` on the file for its size and mtime (`st`, else stat now). Never
        fails: a file without a record is read again, which is all the record saves."""
        if not self._xattrs:
            return
        try:
            st = st if st is not None else os.stat(path)
            os.setxattr(path, _CRC32C_XATTR, _crc32c_record(st, crc32c))
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                self._xattrs = False

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._in_folder(key)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                path = self._resolved(key)
                st = os.stat(path)
        except OSError as exc:
            if exc.errno in _ABSENT:
                return None
            raise
        return self._info(path, st) if stat.S_ISREG(st.st_mode) else None

    def vouches(self, key: str) -> bool:
        """Whether the file at `key` holds the bytes it was written with, as far as its
        checksum record tells: one recorded when it was written (or first read whole), bound
        to its present size and mtime. False without a record, with a stale one, with xattrs
        unsupported, or when records are not trusted (`trust_recorded_crc32c=False`)."""
        if not self.trust_recorded_crc32c:
            return False
        path = self._where(key)
        try:
            st = os.stat(path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and self._recorded(path, st) is not None

    def put_file(self, local: Path, key: str, *, move: bool = False) -> ObjectInfo:
        local = Path(local)
        dst = self._path(key)
        if _same_file(local, dst):
            return self._info(dst)
        expected = file_crc32c(local)
        tmp = self._temp(dst)
        try:
            renamed = False
            if move:
                try:
                    os.replace(local, tmp)
                    renamed = True
                except OSError:  # another filesystem: copy, then drop the source below
                    shutil.copyfile(local, tmp)
            else:
                shutil.copyfile(local, tmp)
            if self.durable:
                _fsync(tmp)
            # A rename keeps the very bytes that were checksummed; a copy is read back.
            if not renamed and file_crc32c(tmp) != expected:
                raise StorageError(f"checksum mismatch writing {dst}; nothing was replaced")
            # Recorded before the rename, which keeps the inode, its mtime and its xattrs: the
            # file appears under its key with its checksum.
            self._record(tmp, None, expected)
            os.replace(tmp, dst)
            if move and local.exists():
                local.unlink()
        finally:
            tmp.unlink(missing_ok=True)
        return self._known(str(dst), expected)

    def _known(self, path: str, crc32c: str) -> ObjectInfo:
        """The info of a file just renamed into place whose bytes' CRC32C is known."""
        st = os.stat(path)
        self._crc_cache[(path, st.st_ino, st.st_size, st.st_mtime_ns)] = crc32c
        return self._info(path, st)

    def get_file(self, key: str, local: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise StorageError(f"{src} does not exist")
        local = Path(local)
        tmp = self._temp(local)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            try:  # a link's target is checked to be inside the root first
                fd = os.open(self._in_folder(key), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                fd = os.open(self._resolved(key), os.O_RDONLY)
            with open(fd, "rb", buffering=0) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        dst = self._where(key)
        tmp = self._temp(Path(dst))
        try:
            # No fsync: small files here are manifests, which are parsed and matched against
            # the file they describe before anything trusts them.
            tmp.write_bytes(data)
            # The file holds the very bytes written: their checksum, not a read back.
            crc = bytes_crc32c(data)
            self._record(tmp, None, crc)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return self._known(dst, crc)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._where(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._where(prefix) if prefix else self.uri
        if os.path.isfile(base):
            yield prefix
            return
        if not os.path.isdir(base):
            return
        # Keys as text from one directory scan per folder (not a Path per file), in the order
        # of sorted paths (by their parts).
        inside = base[len(self.uri) :].strip("/")
        keys = sorted(_files_under(base, inside), key=lambda k: k.split("/"))
        yield from (k for k in keys if not k.endswith(".tmp"))

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """A second name for the file's bytes: a hard link, made under a temporary name and
        renamed into place. Files under a local root are never changed in place (every write
        is a rename onto a new inode), so the two names keep the same bytes until one is
        replaced, which leaves the other as it was: what `versions/` needs of a published
        training file, at no cost (a byte copy of a 9 GB file took ~20 s). Where links are
        refused (another filesystem) the bytes are copied and checked, as `put_file` does."""
        src = self._path(src_key)
        dst = self._path(dst_key)
        if _same_file(src, dst):
            return self._info(dst)
        tmp = self._temp(dst)
        try:
            os.link(src, tmp)
        except OSError:
            return self.put_file(src, dst_key)
        try:
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return self._info(dst)

    def temporaries(self, prefix: str) -> Iterator[str]:
        folder = self._where(prefix)
        if not os.path.isdir(folder):
            return
        inside = folder[len(self.uri) :].strip("/")
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if fnmatch.fnmatchcase(e.name, ".*.tmp"))
        for name in names:
            yield f"{inside}/{name}" if inside else name


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file (by device and inode: two stats, not resolving a path)."""
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except FileNotFoundError:
        return False


_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP})
"""Errors of a stat that mean "no file there", as `Path.is_file` treats them."""

_CRC32C_XATTR = "user.bqx.crc32c"
"""The extended attribute holding a local file's CRC32C: `{size} {mtime_ns} {crc32c}`."""

_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})
"""Errors of an xattr call that mean the filesystem refuses user xattrs (tmpfs on older
kernels, some overlay filesystems)."""


def _crc32c_record(st: os.stat_result, crc32c: str) -> bytes:
    return f"{st.st_size} {st.st_mtime_ns} {crc32c}".encode()


def _recorded_crc32c(raw: bytes, st: os.stat_result) -> str | None:
    """The CRC32C of a record made for the size and mtime of `st`; None for a stale or
    malformed one."""
    prefix = f"{st.st_size} {st.st_mtime_ns} ".encode()
    if not raw.startswith(prefix):
        return None
    crc = raw[len(prefix) :]
    try:
        digest = base64.b64decode(crc, validate=True)
    except binascii.Error:
        return None
    # Only the one form file_crc32c gives: 4 bytes, padded.
    return crc.decode() if len(digest) == 4 and base64.b64encode(digest) == crc else None


def _files_under(folder: str, key: str) -> Iterator[str]:
    """Keys (`key/name`, recursively) of the files under `folder`, as `Path.rglob("*")` and
    `is_file` find them: links to files are files, links to folders are not entered."""
    with os.scandir(folder) as entries:
        found = list(entries)
    for entry in found:
        child = f"{key}/{entry.name}" if key else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _files_under(entry.path, child)
        elif entry.is_file():
            yield child


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def open_storage(uri: str | Path, *, durable: bool = True) -> Storage:
    """The storage root for a local folder or a `gs://bucket/prefix` URI (`durable`: fsync local
    files before they are renamed into place)."""
    text = str(uri)
    if text.startswith("gs://"):
        from bqx_assets.core.gcs import (
            GCSStorage,  # imported lazily: local runs never load the client
        )

        return GCSStorage.from_uri(text)
    if "://" in text:
        raise StorageError(f"unsupported storage root {text!r}: use a local folder or gs://")
    return LocalStorage(text, durable=durable)


# -- stored objects read and written in place (object stores) ----------------------------------
class ReadCounter:
    """Requests made and bytes received by ranged reads of one storage root (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def add(self, count: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += count


class StoredFile(ABC):
    """One stored object read in place by byte ranges, pinned to the version that was checked:
    a read of a replaced or deleted object fails instead of mixing two versions."""

    uri: str
    size: int

    def __str__(self) -> str:
        return self.uri

    @abstractmethod
    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the pinned version; StorageError when it is gone."""

    def open(self, blocks: Sequence[tuple[int, bytes]] = ()) -> RangeReader:
        """A seekable read-only file over the object (for `pq.ParquetFile`); reads that fall
        inside one of `blocks` (offset, bytes), fetched ahead of time, cost no request."""
        return RangeReader(self, blocks)


class RangeReader(io.RawIOBase):
    """A read-only file object over a `StoredFile`: every read is one ranged request, unless
    it lies inside a block fetched ahead of time."""

    def __init__(self, stored: StoredFile, blocks: Sequence[tuple[int, bytes]] = ()) -> None:
        super().__init__()
        self._stored = stored
        self._blocks = sorted(blocks, key=lambda b: b[0])
        self._starts = [offset for offset, _ in self._blocks]
        self._pos = 0

    @property
    def name(self) -> str:
        return self._stored.uri

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._stored.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position in {self._stored.uri}")
        self._pos = base + offset
        return self._pos

    def size(self) -> int:
        return self._stored.size

    def read(self, size: int | None = -1) -> bytes:
        stop = self._stored.size if size is None or size < 0 else self._pos + size
        stop = min(stop, self._stored.size)
        if stop <= self._pos:
            return b""
        data = self._cached(self._pos, stop)
        if data is None:
            data = self._stored.read_range(self._pos, stop)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def _cached(self, start: int, stop: int) -> bytes | None:
        i = bisect.bisect_right(self._starts, start) - 1
        if i < 0:
            return None
        offset, block = self._blocks[i]
        if stop > offset + len(block):
            return None
        return block[start - offset : stop - offset]


@dataclass(frozen=True)
class StagedFile:
    """A complete, verified temporary object written by a `StagedUpload`, not yet published."""

    key: str
    """The temporary object's key (hidden from `list`)."""
    info: ObjectInfo
    file: StoredFile
    """The object itself, for reading back in place."""
    upload_seconds: float


class StagedUpload(ABC):
    """A file written straight to a temporary object as it is produced (a resumable upload):
    nothing is kept on local disk. `commit()` finishes and verifies it; `abort()` drops it."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> int: ...

    @abstractmethod
    def tell(self) -> int: ...

    def cut(self) -> None:  # noqa: B027 - optional: an upload in one piece ignores it
        """End a segment here: the bytes written since the last cut are a segment that a later
        upload of the same file name may `refer` to."""

    def refer(self, size: int, crc32c: str) -> bool:
        """Append a segment that an earlier upload of this file name kept, with `size` bytes and
        CRC32C `crc32c`, without sending its bytes; False (nothing appended) when there is none:
        the caller writes the bytes instead."""
        return False

    @abstractmethod
    def commit(self) -> StagedFile:
        """Finish the upload and check the stored object's CRC32C and size against the bytes
        written; StorageError (and no object left) when they differ."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the upload and any temporary object; safe to call at any point."""


class ObjectStorage(Storage):
    """A root whose files are not on the local disk (GCS): read in place by ranges and written
    by streaming uploads instead of being copied through local files."""

    reads: ReadCounter

    @abstractmethod
    def open_stored(self, key: str, *, size: int, crc32c: str) -> StoredFile:
        """The stored file `key`, checked to have `size` bytes and CRC32C `crc32c` (its
        manifest's) and pinned to the version checked; StorageError otherwise."""

    @abstractmethod
    def stage(self, key: str) -> StagedUpload:
        """A streaming upload to a temporary object beside `key`."""

    @abstractmethod
    def publish_staged(
        self, staged: StagedFile, key: str, *, if_generation_match: int | None = None
    ) -> ObjectInfo:
        """Publish a staged object under `key` atomically (server-side copy), verified."""

    @abstractmethod
    def discard(self, staged: StagedFile) -> None:
        """Delete a staged temporary object (no error when it is already gone)."""
