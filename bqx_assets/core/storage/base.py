"""The storage interface: a root of files by key, files read in place, files written by sinks."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage.checksum import file_crc32c

if TYPE_CHECKING:
    import pyarrow as pa

    from bqx_assets.core.storage.sink import Sink


@dataclass(frozen=True)
class ObjectInfo:
    """What a storage root knows about one stored file."""

    uri: str
    size: int
    crc32c: str
    updated: datetime
    generation: int | None = None


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
    """One stored file read in place, pinned to the version that was checked: a read of a
    replaced or deleted object fails instead of mixing two versions."""

    uri: str
    size: int
    remote: bool = False
    """Each read is a request with its own latency (an object store): readers fetch the byte
    ranges they need ahead, several at once, instead of reading as they go."""

    def __str__(self) -> str:
        return self.uri

    @abstractmethod
    def read_range(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the pinned version; StorageError when it is gone or shorter."""

    @abstractmethod
    def reader(self, blocks: Sequence[tuple[int, bytes]] = ()) -> pa.NativeFile:
        """A seekable read-only file over it (for `pq.ParquetFile`); on an object store, reads
        inside one of `blocks` (offset, bytes), fetched ahead, cost no request."""


@dataclass(frozen=True)
class StagedFile:
    """A complete, verified temporary file written by a `Sink`, not yet published."""

    key: str
    """The temporary file's key (hidden from `list`)."""
    info: ObjectInfo
    file: StoredFile
    """The file itself, for reading back in place."""
    upload_seconds: float = 0.0
    """Time the bytes took to reach the root (a streamed upload; 0 for a local root)."""


class Storage(ABC):
    """A root under which files are stored by key (`eurusd/agg_eurusd.parquet`).

    A writer either produces a complete local file and stores it with `put_file`, or streams it
    into a `Sink` (`stage`) and publishes the committed file with `publish_staged`: either way a
    reader never sees a partial file under its final key.
    """

    uri: str
    concurrency: int = 1
    """Requests worth making at once: 1 for a local disk, more for an object store, whose
    requests wait on the network rather than on the disk."""

    def __init__(self) -> None:
        self.reads = ReadCounter()

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

    @abstractmethod
    def open_file(self, key: str, *, size: int, crc32c: str) -> StoredFile:
        """The stored file `key` to read in place, as a caller that checked it found it (its
        `size` and `crc32c`, from a listing): an object store pins the version that has them
        (StorageError when it changed since); a local file is opened as it is (files here are
        replaced by rename, never changed in place)."""

    @abstractmethod
    def find_file(self, key: str) -> StoredFile | None:
        """The stored file `key` as it is now, to read in place; None when there is none."""

    @abstractmethod
    def stage(self, key: str) -> Sink:
        """A sink writing a temporary file beside `key`, published by `publish_staged`."""

    @abstractmethod
    def publish_staged(
        self, staged: StagedFile, key: str, *, if_generation_match: int | None = None
    ) -> ObjectInfo:
        """Publish a committed sink's file under `key`, atomically, verified; the temporary
        file is gone afterwards. `if_generation_match`: an object store refuses the publish
        when `key` is no longer that generation (0: when it exists)."""

    @abstractmethod
    def discard(self, staged: StagedFile) -> None:
        """Delete a committed sink's temporary file (no error when it is already gone)."""

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
