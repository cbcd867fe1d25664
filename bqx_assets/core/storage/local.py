"""A local folder as a storage root: atomic writes by rename, checksums kept in an xattr."""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fnmatch
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage.base import ObjectInfo, StagedFile, Storage
from bqx_assets.core.storage.checksum import bytes_crc32c, file_crc32c
from bqx_assets.core.storage.local_sink import LocalFile, LocalSink


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
        super().__init__()
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
        """Copy (or with `move`, link) `local` to a temporary file beside `key`, then rename it
        into place. A temporary file deleted before its rename (by another writer clearing the
        folder: a cov table is written by the steps of both its pairs) is made again."""
        local = Path(local)
        dst = self._path(key)
        if _same_file(local, dst):
            return self._info(dst)
        expected = file_crc32c(local)
        for _ in range(PUT_ATTEMPTS):
            tmp = self._temp(dst)
            try:
                self._put_temp(local, tmp, dst, expected, move)
                os.replace(tmp, dst)
                break
            except FileNotFoundError as exc:
                if exc.filename is None or os.fspath(exc.filename) != str(tmp):
                    raise
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise StorageError(
                f"{dst}: the temporary file was deleted before its rename {PUT_ATTEMPTS} times; "
                "nothing was replaced"
            )
        if move:
            local.unlink(missing_ok=True)
        return self._known(str(dst), expected)

    def _put_temp(self, local: Path, tmp: Path, dst: Path, expected: str, move: bool) -> None:
        linked = False
        if move:
            try:
                # A link, not a rename: the source stays until the file is in place, so a
                # temporary file deleted under the writer can be made again from it.
                os.link(local, tmp)
                linked = True
            except OSError:  # another filesystem: copy, then drop the source once in place
                shutil.copyfile(local, tmp)
        else:
            shutil.copyfile(local, tmp)
        if self.durable:
            _fsync(tmp)
        # A link keeps the very bytes that were checksummed; a copy is read back.
        if not linked and file_crc32c(tmp) != expected:
            raise StorageError(f"checksum mismatch writing {dst}; nothing was replaced")
        # Recorded before the rename, which keeps the inode, its mtime and its xattrs: the file
        # appears under its key with its checksum.
        self._record(tmp, None, expected)

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

    # -- read in place, written by a sink --------------------------------------------------------
    def open_file(self, key: str, *, size: int, crc32c: str) -> LocalFile:
        # Pinned to the file there now (checked against its manifest by the caller). One gone
        # already is left to fail when read, as a file of a listing may.
        path = self._where(key)
        try:
            st = os.stat(path)
        except OSError:
            return LocalFile(path, size)
        return LocalFile(path, size, pinned=(st.st_dev, st.st_ino))

    def find_file(self, key: str) -> LocalFile | None:
        path = self._where(key)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return LocalFile(path, st.st_size, vouched=self.vouches(key))

    def stage(self, key: str) -> LocalSink:
        path = self._temp(self._path(key))
        return LocalSink(path, str(path.relative_to(self.root)))

    def publish_staged(
        self, staged: StagedFile, key: str, *, if_generation_match: int | None = None
    ) -> ObjectInfo:
        """Rename the staged file onto `key` (in any folder of the root: atomic), with its CRC32C
        recorded for its size and mtime: the combination of its segments' that the sink
        checked, so a file written here is not read again to be published
        (`if_generation_match` has no meaning on a local root: one writer per key at a time,
        as the runs are limited)."""
        src = self._path(staged.key)
        dst = self._path(key)
        try:
            if self.durable:
                _fsync(src)
            st = os.stat(src)
        except FileNotFoundError as exc:
            raise StorageError(f"{src} is gone; nothing was published") from exc
        if st.st_size != staged.info.size:
            raise StorageError(
                f"{src} has {st.st_size} bytes, {staged.info.size} were committed; nothing was "
                "published"
            )
        self._record(src, st, staged.info.crc32c)
        if not dst.parent.is_dir():  # a key in another folder (quarantine/) than the sink's
            dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return self._known(str(dst), staged.info.crc32c)

    def discard(self, staged: StagedFile) -> None:
        self._path(staged.key).unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file (by device and inode: two stats, not resolving a path)."""
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except FileNotFoundError:
        return False


PUT_ATTEMPTS = 3
"""Times `put_file` makes its temporary file, when others delete it before its rename."""
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
