"""A sink: a file written in order into a storage root, in segments, committed whole or not."""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Sequence

import google_crc32c
import numpy as np

from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage.base import StagedFile, StoredFile


class CopyMismatch(StorageError):
    """Bytes [start, stop) copied from an earlier file do not have the CRC32C recorded for
    them."""

    def __init__(self, source: StoredFile, start: int, stop: int, crc32c: str, found: str):
        super().__init__(
            f"bytes {start}-{stop} of {source.uri} have CRC32C {found}, not the {crc32c} "
            "recorded when they were written"
        )
        self.start = start
        self.stop = stop


class Sink(ABC):
    """Where a file is written: bytes appended in order, cut into segments (each row group of a
    training file), a segment copied from an earlier file where its bytes are unchanged.

    `commit()` finishes the file as a verified temporary file of the root (`StagedFile`), which
    the root publishes or discards; `abort()` leaves nothing. How a copy is made is the sink's
    business: a local file shares the earlier file's extents where the filesystem can, an object
    store composes the file from segments it kept, so the caller never asks which it has.
    """

    def __init__(self) -> None:
        self._crc = google_crc32c.Checksum()
        self._segment_bytes = 0

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        """Append `data` to the segment being written."""
        # The C extension refuses memoryviews; a numpy view of the same bytes is no copy.
        self._crc.update(np.frombuffer(data, dtype=np.uint8) if len(data) else b"")
        self._segment_bytes += len(data)
        self._append(data)

    def end_segment(self) -> str:
        """End the segment being written; the CRC32C (base64) of its bytes."""
        crc, size = self._take_segment()
        if size:
            self._ended(crc, size)
        return crc

    def _take_segment(self) -> tuple[str, int]:
        """The CRC32C and size of the bytes written since the last segment ended, which start
        a new one."""
        crc = base64.b64encode(self._crc.digest()).decode()
        size = self._segment_bytes
        self._crc = google_crc32c.Checksum()
        self._segment_bytes = 0
        return crc, size

    def write_segment(self, data: bytes) -> str:
        """A whole segment of known bytes (a file's leading magic): its CRC32C."""
        self.write(data)
        return self.end_segment()

    @abstractmethod
    def tell(self) -> int:
        """Bytes of the file so far, copied ones included."""

    @abstractmethod
    def copy_segment(self, source: StoredFile, start: int, stop: int, crc32c: str) -> None:
        """Append bytes [start, stop) of `source` as a segment of their own, checked against
        the CRC32C `crc32c` recorded for them (CopyMismatch when they differ; a local source
        whose root vouches for it is copied unread)."""

    def copy_ahead(self, source: StoredFile, spans: Sequence[tuple[int, int, str]]) -> int:
        """Start copying the leading `spans` (start, stop, CRC32C) of `source` to their places
        right after what is written so far, in the background, so that the copy overlaps the
        caller's work; writing then goes on after them. Returns how many spans were taken (0:
        none, the caller copies them with `copy_segment` in turn). A CopyMismatch of the
        background copy is raised by `commit()`."""
        return 0

    # -- ending -------------------------------------------------------------------------------
    @abstractmethod
    def commit(self) -> StagedFile:
        """Finish the file and check the stored bytes against what was written and copied;
        StorageError (and nothing left) when they differ."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the file and anything stored for it; safe to call at any point, after
        `commit()` too."""

    # -- the implementation's part ------------------------------------------------------------
    @abstractmethod
    def _append(self, data: bytes | memoryview) -> None:
        """Send or write `data` (already counted in the segment's CRC32C)."""

    def _ended(self, crc32c: str, size: int) -> None:  # noqa: B027 - optional hook
        """A segment of `size` bytes with CRC32C `crc32c` ended."""
