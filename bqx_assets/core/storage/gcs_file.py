"""An object of a GCS root read in place by ranged requests, pinned to one generation."""

from __future__ import annotations

import bisect
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.api_core import exceptions as api_exceptions
from google.cloud.storage import exceptions as media_exceptions

from bqx_assets.core.errors import ReplacedWhileRead, StorageError
from bqx_assets.core.storage.base import StoredFile

if TYPE_CHECKING:
    from bqx_assets.core.storage.gcs import GCSStorage


class GCSFile(StoredFile):
    """An object read in place by ranged GETs of one generation: `generation=` in the request
    pins the bytes, and `if_generation_match` makes a replaced object an error even in a bucket
    that keeps old generations. One request per read, no local copy; the client retries a
    broken connection or a 5xx itself (its default retry for media downloads)."""

    remote = True

    def __init__(self, storage: GCSStorage, name: str, size: int, generation: int) -> None:
        self.storage = storage
        self.name = name
        self.size = size
        self.generation = generation
        self.uri = storage._gs(name)
        self._blob = storage.bucket.blob(name, generation=generation)

    def read_range(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        try:
            # Part of an object: its CRC32C covers the whole, so the check is the length here
            # and the parquet page checks and decoders downstream.
            data = self._blob.download_as_bytes(
                start=start,
                end=stop - 1,
                if_generation_match=self.generation,
                checksum=None,
                raw_download=True,
            )
        except (api_exceptions.NotFound, api_exceptions.PreconditionFailed) as exc:
            raise ReplacedWhileRead(
                f"{self.uri} generation {self.generation} was replaced or deleted while being "
                f"read ({type(exc).__name__})"
            ) from exc
        except (api_exceptions.GoogleAPICallError, media_exceptions.InvalidResponse) as exc:
            raise StorageError(f"cannot read bytes {start}-{stop} of {self.uri}: {exc}") from exc
        if len(data) != stop - start:
            raise StorageError(
                f"short read of {self.uri}: {len(data)} bytes for range {start}-{stop}"
            )
        self.storage.reads.add(len(data))
        return data

    def reader(self, blocks: Sequence[tuple[int, bytes]] = ()) -> RangeReader:
        return RangeReader(self, blocks)


class RangeReader(io.RawIOBase):
    """A read-only file object over a `StoredFile`: every read is one ranged request, unless
    it lies inside a block fetched ahead of time."""

    def __init__(self, stored: GCSFile, blocks: Sequence[tuple[int, bytes]] = ()) -> None:
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
