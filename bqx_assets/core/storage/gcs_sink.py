"""A sink into a GCS root: segments uploaded as they are written, composed server-side."""

from __future__ import annotations

import posixpath
import queue
import threading
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage
from google.cloud.storage import exceptions as media_exceptions

from bqx_assets.core.errors import StorageError
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage.base import StagedFile, StoredFile
from bqx_assets.core.storage.checksum import bytes_crc32c, crc32c_concat
from bqx_assets.core.storage.gcs_file import GCSFile
from bqx_assets.core.storage.sink import CopyMismatch, Sink

if TYPE_CHECKING:
    from bqx_assets.core.storage.gcs import GCSStorage

SEGMENTS_FOLDER = ".segments"
"""Beside a staged file `{dir}/{name}`, `{dir}/.segments/{name}/` holds the segments it was
composed from (the magic, then one per row group), each found again by its size and CRC32C."""

COPY_BYTES = 16 * 1024 * 1024
"""A segment copied from a file that has no kept segment for it is read in blocks of this size."""
_UPLOAD_QUEUE = 4
"""Writes waiting for the upload thread: the writer keeps producing while a chunk is sent."""
_COMPOSE_MAX = 32
"""Source objects one compose request takes (GCS's limit)."""


@dataclass(frozen=True)
class _Part:
    """One source object of a composed upload."""

    name: str
    generation: int
    size: int
    crc32c: str
    kept: bool
    """A segment kept for later uploads to refer to (False: a part deleted once composed)."""
    ours: bool = True
    """Uploaded by this upload (False: a segment an earlier one kept, referred to)."""


@dataclass(frozen=True)
class _Cut:
    crc32c: str
    size: int
    kept: bool


class GCSSink(Sink):
    """An upload to `{dir}/.{name}.{uuid}.tmp`, fed as the file is written, in segments
    composed into that object by `commit()`.

    Each segment goes to an object of its own under `{dir}/.segments/{name}/` by a resumable
    upload, and is kept. A later upload of the same file name that copies the same bytes (a
    refresh's unchanged row groups) refers to the kept segment instead of sending them: GCS
    composes the object from its parts server-side, so an unchanged row group is neither
    downloaded nor uploaded. What follows the last segment (the footer) is a part deleted once
    composed. `commit()` also deletes the kept segments that the new object does not hold (a
    refresh keeps only its own).

    The bytes go to a background thread that sends them chunk by chunk (the root's chunk size,
    one chunk in memory), so producing the file and sending it overlap. CRC32C is computed on
    the way twice: by the sink, over what the writer handed over, and by the client, over what
    it sent, which it puts in the final chunk's `X-Goog-Hash` header (GCS rejects a body that
    does not match). Each part's stored CRC32C and size are compared with the writer's; the
    composed object's with the combination of its parts' (`crc32c_concat`). A process killed
    before `commit()` leaves no staged object (an unfinished resumable upload is not an
    object); the segments it uploaded are deleted by the next commit for that file.
    """

    def __init__(self, root: GCSStorage, name: str) -> None:
        super().__init__()
        self.root = root
        self.name = name
        self.temp = root._temp_name(name)
        head, _, base = name.rpartition("/")
        self.segments = posixpath.join(head, SEGMENTS_FOLDER, base)
        self._blob = root.bucket.blob(self.temp)
        self._pos = 0
        self.sent = 0
        """Bytes written, and so sent: not those of the segments referred to."""
        self._parts: list[_Part] = []
        self._kept: dict[tuple[int, str], _Part] | None = None  # segments found, by size, CRC
        self._queue: queue.Queue[bytes | _Cut | _Part | None] = queue.Queue(_UPLOAD_QUEUE)
        self._error: BaseException | None = None
        self._watch = Stopwatch()
        self._part: tuple[storage.Blob, BinaryIO] | None = None  # the part being uploaded
        self._thread = threading.Thread(target=self._send, name="gcs-upload", daemon=True)
        self._thread.start()
        self._committed: StagedFile | None = None

    # -- the sending thread -------------------------------------------------------------------
    def _send(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the writer learns of the error on its next call
            try:
                if isinstance(item, _Part):
                    self._parts.append(item)
                elif isinstance(item, _Cut):
                    self._close_part(item)
                else:
                    self._writer().write(item)
            except BaseException as exc:  # handed to the writing thread
                self._error = exc

    def _writer(self) -> BinaryIO:
        if self._part is None:
            blob = self.root.bucket.blob(
                f"{self.segments}/{uuid.uuid4().hex}", chunk_size=self.root.chunk_size
            )
            writer = blob.open(
                "wb",
                chunk_size=self.root.chunk_size,
                if_generation_match=0,
                checksum="crc32c",
                content_type="application/octet-stream",
            )
            self._part = (blob, writer)
        return self._part[1]

    def _close_part(self, cut: _Cut) -> None:
        """Finish the part being uploaded and check it against what was written into it."""
        if self._part is None:
            return
        blob, writer = self._part
        self._part = None
        writer.close()  # the last chunk, with the CRC32C of the part
        blob.reload()
        part = _Part(blob.name, int(blob.generation), int(blob.size or 0), blob.crc32c or "",
                     cut.kept)  # fmt: skip
        self._parts.append(part)
        if (part.crc32c, part.size) != (cut.crc32c, cut.size):
            raise StorageError(
                f"{self.root._gs(blob.name)} was stored with crc32c {part.crc32c}, "
                f"{part.size} bytes; {cut.crc32c}, {cut.size} bytes were written"
            )

    # -- the writing thread -------------------------------------------------------------------
    def _raise(self) -> None:
        if self._error is not None:
            raise StorageError(
                f"upload of {self.root._gs(self.temp)} failed: {self._error}"
            ) from self._error

    def _append(self, data: bytes | memoryview) -> None:
        self._raise()
        if not isinstance(data, bytes):
            data = bytes(data)  # sent later by the thread: the piece's buffer is freed sooner
        self._queue.put(data)
        self._pos += len(data)
        self.sent += len(data)

    def _ended(self, crc32c: str, size: int) -> None:
        self._raise()  # after an error the sending thread may be gone: nothing more is queued
        self._queue.put(_Cut(crc32c, size, kept=True))

    def tell(self) -> int:
        return self._pos

    def _refer(self, size: int, crc32c: str) -> bool:
        """Append a segment an earlier upload of this file name kept, with `size` bytes and
        CRC32C `crc32c`, without sending its bytes; False (nothing appended) when there is
        none."""
        self._raise()
        if self._kept is None:
            self._kept = {
                (info.size, info.crc32c): _Part(
                    self.root._name(key),
                    info.generation,
                    info.size,
                    info.crc32c,
                    kept=True,
                    ours=False,
                )
                for key, info in self.root.infos(self.root._key(self.segments)).items()
                if info.generation is not None
            }
        found = self._kept.get((size, crc32c))
        if found is None:
            return False
        self.end_segment()
        self._queue.put(found)
        self._pos += size
        return True

    def write_segment(self, data: bytes) -> str:
        crc = bytes_crc32c(data)
        if self._refer(len(data), crc):
            return crc
        return super().write_segment(data)

    def copy_segment(self, source: StoredFile, start: int, stop: int, crc32c: str) -> None:
        # Composed from the segment an earlier upload kept: GCS holds these bytes with this
        # CRC32C (its own, from the listing), neither downloaded nor uploaded.
        if self._refer(stop - start, crc32c):
            return
        self.end_segment()
        for at in range(start, stop, COPY_BYTES):
            self.write(source.read_range(at, min(at + COPY_BYTES, stop)))
        crc = self.end_segment()
        if crc != crc32c:
            raise CopyMismatch(source, start, stop, crc32c, crc)

    # -- ending -------------------------------------------------------------------------------
    def _finish_thread(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _compose(self, target: storage.Blob, parts: list[_Part]) -> None:
        sources = [self.root.bucket.blob(p.name, generation=p.generation) for p in parts]
        target.compose(
            sources,
            if_generation_match=0,
            if_source_generation_match=[p.generation for p in parts],
        )

    def commit(self) -> StagedFile:
        if self._committed is not None:
            return self._committed
        crc, size = self._take_segment()
        if size:
            self._queue.put(_Cut(crc, size, kept=False))  # the footer: a part of this object only
        self._finish_thread()
        if self._error is not None:
            # A part failed on its way: nothing of this upload stays (the part being sent, left
            # open, would be stored by io's finalizer).
            self.abort()
            self._raise()
        uri = self.root._gs(self.temp)
        parts = list(self._parts)
        steps: list[storage.Blob] = []
        try:
            # More parts than one request takes: runs of them composed first (a window of
            # years: ~30 month segments).
            while len(parts) > _COMPOSE_MAX:
                run, parts = parts[:_COMPOSE_MAX], parts[_COMPOSE_MAX:]
                step = self.root.bucket.blob(self.root._temp_name(self.name))
                self._compose(step, run)
                step.reload()
                steps.append(step)
                parts.insert(0, _Part(step.name, int(step.generation), int(step.size or 0),
                                      step.crc32c or "", False))  # fmt: skip
            self._compose(self._blob, parts)
            upload_seconds = self._watch.seconds
            self._blob.reload()
        except (
            api_exceptions.GoogleAPICallError,
            media_exceptions.InvalidResponse,
            media_exceptions.DataCorruption,
            OSError,
        ) as exc:
            self._delete()
            raise StorageError(f"upload of {uri} failed: {exc}") from exc
        finally:
            for step in steps:
                with suppress(api_exceptions.GoogleAPICallError):
                    step.delete()
        expected = crc32c_concat([(p.crc32c, p.size) for p in self._parts])
        if self._blob.crc32c != expected or int(self._blob.size or 0) != self._pos:
            self._delete()
            raise StorageError(
                f"{uri} was stored with crc32c {self._blob.crc32c}, {self._blob.size} bytes; "
                f"{expected}, {self._pos} bytes were written; nothing was kept"
            )
        self._drop_parts(keep={p.name for p in self._parts if p.kept})
        info = self.root._info(self._blob)
        self._committed = StagedFile(
            key=self.root._key(self.temp),
            info=info,
            file=GCSFile(self.root, self.temp, info.size, int(self._blob.generation)),
            upload_seconds=upload_seconds,
        )
        return self._committed

    def _drop_parts(self, keep: set[str]) -> None:
        """Delete the segments folder's objects but `keep` (a dead writer's too)."""
        for key in self.root.list(self.root._key(self.segments)):
            if self.root._name(key) not in keep:
                self.root.delete(key)

    def _delete(self) -> None:
        with suppress(api_exceptions.NotFound, api_exceptions.GoogleAPICallError):
            self.root.bucket.blob(self.temp).delete()
        # What this upload stored: nothing of a failed or dropped upload stays (a killed
        # writer's segments are deleted by the next commit of the file).
        for part in self._parts:
            if part.ours:
                with suppress(api_exceptions.NotFound, api_exceptions.GoogleAPICallError):
                    self.root.bucket.blob(part.name).delete()

    def abort(self) -> None:
        if self._error is None:
            self._error = StorageError("aborted")
        self._finish_thread()
        if self._part is not None:
            # The part being sent is cancelled: left open, its writer would be closed, and the
            # part stored, by io's finalizer whenever it is collected. The cancel is a request
            # of the client's authorized session (requests' errors are OSErrors; a credential
            # refresh raises google.auth's): neither may hide the error that caused the abort.
            writer = self._part[1]
            self._part = None
            with suppress(auth_exceptions.GoogleAuthError, OSError):
                writer.terminate()
        # An unfinished resumable upload created no object; a committed one is deleted.
        self._delete()
