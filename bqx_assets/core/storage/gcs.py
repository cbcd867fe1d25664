"""Google Cloud Storage roots: resumable, CRC32C-verified uploads published by server-side copy."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import tenacity
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as media_exceptions

from bqx_assets.core.errors import ReplacedWhileRead, StorageError
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage.base import ObjectInfo, StagedFile, Storage
from bqx_assets.core.storage.checksum import bytes_crc32c, file_crc32c
from bqx_assets.core.storage.gcs_file import GCSFile
from bqx_assets.core.storage.gcs_sink import GCSSink

log = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
"""When set (`http://127.0.0.1:4443`), clients talk to that emulator with anonymous credentials."""

EMULATOR_PROJECT = "test"

UPLOAD_CHUNK_BYTES = 32 * 1024 * 1024
"""Chunk of a resumable upload: a multiple of 256 KiB. A lost connection costs at most one chunk;
memory held by the client is one chunk."""

UPLOAD_ATTEMPTS = 3
"""Uploads whose stored checksum or size differs from the local file, or whose temporary object
was deleted before its copy, are retried this many times in all, then fail without
publishing."""

TEMP_SUFFIX = ".tmp"
"""Objects being uploaded are named `{dir}/.{name}.{uuid}.tmp` until verified; `list` skips them
and the output bucket's lifecycle deletes any left behind by a killed process."""


def storage_client(project: str | None = None) -> storage.Client:
    """A storage client: the emulator named by `STORAGE_EMULATOR_HOST`, else Application Default
    Credentials (production)."""
    if os.environ.get(EMULATOR_ENV):
        # Anonymous credentials and an explicit project: google-auth must never fall back to the
        # GCE metadata server, which outside Google Cloud hangs and then fails.
        os.environ.setdefault("NO_GCE_CHECK", "True")
        return storage.Client(project=EMULATOR_PROJECT, credentials=AnonymousCredentials())
    return storage.Client(project=project)


def split_gs_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix/` -> (`bucket`, `some/prefix`)."""
    if not uri.startswith("gs://"):
        raise StorageError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} names no bucket")
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class UploadedObject(ObjectInfo):
    """An object published by `GCSStorage.put_file`, with what the upload cost.

    `upload_seconds` covers the transfer of the successful attempt, `verify_seconds` the local
    checksum and the comparison with the stored object, `attempts` how many uploads it took.
    """

    upload_seconds: float = 0.0
    verify_seconds: float = 0.0
    attempts: int = 1

    @property
    def upload_mb_per_s(self) -> float:
        return self.size / 1e6 / self.upload_seconds if self.upload_seconds > 0 else 0.0


class _ChecksumMismatch(Exception):
    """An uploaded temporary object differs from the local file (retried, never published)."""


class _TemporaryGone(Exception):
    """The temporary object was deleted before its copy: another writer of the same folder took
    it for a dead writer's (`clear_temporaries`). Uploaded again."""


class GCSStorage(Storage):
    """A `gs://bucket/prefix` root.

    `put_file` streams the local file with a resumable upload to a temporary object, compares the
    object's CRC32C and size (computed by GCS over the bytes it received) with the local file,
    retries a mismatch, and only then publishes it under the final name by a server-side rewrite
    with an `if_generation_match` precondition: a reader never sees an unverified object, and a
    concurrent writer is refused instead of silently overwritten. No file is read into memory.
    """

    concurrency = 8
    """Requests at once (under the client's HTTP connection pool of 10)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: storage.Client | None = None,
        chunk_size: int = UPLOAD_CHUNK_BYTES,
        attempts: int = UPLOAD_ATTEMPTS,
    ) -> None:
        super().__init__()
        self.client = client if client is not None else storage_client()
        self.bucket = self.client.bucket(bucket)
        self.prefix = prefix.strip("/")
        self.chunk_size = chunk_size
        self.attempts = attempts
        self.uri = f"gs://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, client: storage.Client | None = None) -> GCSStorage:
        bucket, prefix = split_gs_uri(uri)
        return cls(bucket, prefix, client=client)

    # names

    def _name(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid storage key {key!r} under {self.uri}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _gs(self, name: str) -> str:
        return f"gs://{self.bucket.name}/{name}"

    def _temp_name(self, name: str) -> str:
        head, _, base = name.rpartition("/")
        temp = f".{base}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        return f"{head}/{temp}" if head else temp

    def _info(self, blob: storage.Blob) -> ObjectInfo:
        return ObjectInfo(
            uri=self._gs(blob.name),
            size=int(blob.size or 0),
            crc32c=blob.crc32c or "",
            updated=blob.updated or datetime.now(UTC),
            generation=int(blob.generation) if blob.generation is not None else None,
        )

    def _get_blob(self, name: str) -> storage.Blob | None:
        try:
            return self.bucket.get_blob(name)
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(f"cannot read {self._gs(name)}: {exc}") from exc

    # reading

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self._get_blob(self._name(key))
        return self._info(blob) if blob is not None else None

    def local_path(self, key: str) -> Path | None:
        return None

    def get_file(self, key: str, local: Path) -> Path:
        name = self._name(key)
        blob = self._get_blob(name)
        if blob is None:
            raise StorageError(f"{self._gs(name)} does not exist")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
        try:
            # Pinned to the generation just stat'ed, so the checksum compared below is the one of
            # the bytes downloaded even if the object is replaced meanwhile.
            blob.download_to_filename(str(tmp), if_generation_match=blob.generation, checksum=None)
            got = file_crc32c(tmp)
            if got != blob.crc32c or tmp.stat().st_size != blob.size:
                raise StorageError(
                    f"download of {self._gs(name)} to {local} is corrupt: crc32c {got}, "
                    f"{tmp.stat().st_size} bytes; the object has {blob.crc32c}, {blob.size} bytes"
                )
            os.replace(tmp, local)
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(f"cannot download {self._gs(name)}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def read_bytes(self, key: str) -> bytes | None:
        name = self._name(key)
        try:
            return self.bucket.blob(name).download_as_bytes(checksum="crc32c")
        except api_exceptions.NotFound:
            return None
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(f"cannot read {self._gs(name)}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        yield from (self._key(blob.name) for blob in self._listed(prefix))

    def infos(self, prefix: str) -> dict[str, ObjectInfo]:
        return {self._key(blob.name): self._info(blob) for blob in self._listed(prefix)}

    def _listed(self, prefix: str) -> Iterator[storage.Blob]:
        """The objects under a prefix (temporaries left out), with their metadata."""
        name = self._name(prefix.rstrip("/")) if prefix else ""
        search = name or (f"{self.prefix}/" if self.prefix else "")
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=search):
                # A prefix names a file or a folder, as for a local root: `a` lists `a/x`, not
                # `ab`.
                inside = not name or blob.name == name or blob.name.startswith(f"{name}/")
                if inside and not blob.name.endswith(TEMP_SUFFIX):
                    yield blob
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(f"cannot list {self._gs(search)}: {exc}") from exc

    # writing

    def _open_for_upload(self, local: Path) -> BinaryIO:
        """The stream an upload reads. A seam for tests that inject corruption on the wire."""
        return open(local, "rb")

    def _upload_temp(
        self, local: Path, name: str, size: int, crc32c: str | None = None
    ) -> tuple[storage.Blob, float]:
        blob = self.bucket.blob(self._temp_name(name), chunk_size=self.chunk_size)
        # The local file's CRC32C goes with the upload's metadata (multipart and resumable
        # alike): GCS itself refuses an object whose bytes do not match it. The client computes
        # no checksum of its own (checksum=None): it would hash the bytes as sent, not the file.
        blob.crc32c = crc32c
        watch = Stopwatch()
        with self._open_for_upload(local) as stream:
            # Larger than one chunk: a resumable upload, streamed chunk by chunk. The fresh temp
            # name with if_generation_match=0 makes the client's own retries of a chunk safe.
            blob.upload_from_file(
                stream,
                size=size,
                if_generation_match=0,
                content_type="application/octet-stream",
                checksum=None,
            )
        return blob, watch.seconds

    def put_file(
        self,
        local: Path,
        key: str,
        *,
        move: bool = False,
        if_generation_match: int | None = None,
    ) -> UploadedObject:
        """Upload, verify, publish; `move=True` deletes the local file once the published object
        is verified. `if_generation_match` defaults to the generation of `key` (0: none) seen when
        the upload starts, so a writer that published meanwhile is not overwritten (and one that
        published the very same bytes stands for this publish). A temporary object deleted
        before its copy (by another writer clearing the folder) is uploaded again."""
        local = Path(local)
        name = self._name(key)
        uri = self._gs(name)
        if not local.is_file():
            raise StorageError(f"cannot upload {local} to {uri}: no such file")
        if if_generation_match is None:
            current = self._get_blob(name)
            if_generation_match = int(current.generation) if current is not None else 0
        size = local.stat().st_size
        watch = Stopwatch()
        expected = file_crc32c(local)
        verify_seconds = watch.seconds
        attempts = 0
        temp: storage.Blob | None = None
        upload_seconds = 0.0

        def attempt() -> storage.Blob:
            nonlocal attempts, upload_seconds, verify_seconds, temp
            attempts += 1
            try:
                blob, upload_seconds = self._upload_temp(local, name, size, expected)
            except api_exceptions.BadRequest as exc:
                # GCS answers 400 "Provided CRC32C ... doesn't match calculated CRC32C": bytes
                # corrupted on the way, retried like a mismatch found by the read-back below.
                if "crc32c" not in str(exc).lower():
                    raise
                raise _ChecksumMismatch(f"GCS refused the upload: {exc}") from exc
            temp = blob
            check = Stopwatch()
            try:
                blob.reload()
            except api_exceptions.NotFound as exc:
                raise _TemporaryGone(f"{self._gs(blob.name)} deleted before its check") from exc
            verify_seconds += check.seconds
            if blob.crc32c != expected or blob.size != size:
                with suppress(api_exceptions.NotFound):
                    blob.delete()
                raise _ChecksumMismatch(
                    f"stored crc32c {blob.crc32c}, {blob.size} bytes; "
                    f"local {expected}, {size} bytes"
                )
            try:
                return self._publish(blob, name, if_generation_match)
            except api_exceptions.NotFound as exc:
                raise _TemporaryGone(f"{self._gs(blob.name)} deleted before its copy") from exc

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            retry=tenacity.retry_if_exception_type(
                (_ChecksumMismatch, media_exceptions.DataCorruption, _TemporaryGone)
            ),
            reraise=True,
        )
        try:
            published = retrying(attempt)
        except _TemporaryGone as exc:
            raise StorageError(
                f"upload of {local} to {uri}: the temporary object was deleted before its copy "
                f"{attempts} times ({exc}); nothing was published"
            ) from exc
        except (_ChecksumMismatch, media_exceptions.DataCorruption) as exc:
            raise StorageError(
                f"upload of {local} to {uri} failed verification {attempts} times ({exc}); "
                "nothing was published"
            ) from exc
        except api_exceptions.PreconditionFailed as exc:
            current = self._get_blob(name)
            if current is None or current.crc32c != expected or int(current.size or 0) != size:
                raise StorageError(
                    f"{uri} changed while {local} was uploading (expected generation "
                    f"{if_generation_match}); nothing was published"
                ) from exc
            # Another writer published these very bytes meanwhile (a cov table is written by
            # the steps of both its pairs, each as of the same cut): kept as they are.
            log.info("%s: published meanwhile by another writer, with the same bytes", uri)
            published = current
        except (
            api_exceptions.GoogleAPICallError,
            media_exceptions.InvalidResponse,
            OSError,
        ) as exc:
            # The client has already retried transient errors chunk by chunk; what reaches here
            # is final. The local file is kept for a re-run.
            raise StorageError(f"upload of {local} to {uri} failed: {exc}") from exc
        finally:
            if temp is not None:
                with suppress(api_exceptions.NotFound):
                    temp.delete()
        if published.crc32c != expected or published.size != size:
            raise StorageError(
                f"{uri} was published with crc32c {published.crc32c}, {published.size} bytes, "
                f"but {local} has {expected}, {size} bytes"
            )
        if move:
            local.unlink(missing_ok=True)
        info = self._info(published)
        return UploadedObject(
            **vars(info),
            upload_seconds=upload_seconds,
            verify_seconds=verify_seconds,
            attempts=attempts,
        )

    def _publish(
        self, source: storage.Blob, name: str, if_generation_match: int | None
    ) -> storage.Blob:
        """Server-side copy of a verified temporary object to its final name."""
        dst = self.bucket.blob(name)
        token: str | None = None
        while True:
            # Within a bucket a rewrite is usually a metadata operation finished in one call;
            # across locations or storage classes it returns a token to continue with.
            token, _, _ = dst.rewrite(
                source,
                token=token,
                if_generation_match=if_generation_match,
                if_source_generation_match=source.generation,
            )
            if token is None:
                break
        dst.reload()
        return dst

    def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        name = self._name(key)
        expected = bytes_crc32c(data)
        blob = self.bucket.blob(name)
        try:
            # A single-request upload is atomic and the crc32c sent with it is checked by GCS,
            # which rejects a body that does not match.
            blob.upload_from_string(data, checksum="crc32c")
        except (api_exceptions.GoogleAPICallError, media_exceptions.DataCorruption) as exc:
            raise StorageError(f"cannot write {self._gs(name)}: {exc}") from exc
        if blob.crc32c != expected:
            raise StorageError(
                f"{self._gs(name)} was stored with crc32c {blob.crc32c}, expected {expected}"
            )
        return self._info(blob)

    def delete(self, key: str) -> None:
        with suppress(api_exceptions.NotFound):
            self.bucket.blob(self._name(key)).delete()

    def temporaries(self, prefix: str) -> Iterator[str]:
        # "" is the root's own folder: the bucket's top level, or its prefix.
        folder = self._name(prefix.rstrip("/")) if prefix.rstrip("/") else self.prefix
        search = f"{folder}/." if folder else "."
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=search):
                head, _, base = blob.name.rpartition("/")
                if head == folder and base.endswith(TEMP_SUFFIX):
                    yield self._key(blob.name)
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(f"cannot list {self._gs(search)}: {exc}") from exc

    # in place: ranged reads and streamed uploads

    def open_file(self, key: str, *, size: int, crc32c: str) -> GCSFile:
        name = self._name(key)
        blob = self._get_blob(name)
        # Checked against its manifest before: gone or different now, a refresh replaced it.
        if blob is None:
            raise ReplacedWhileRead(f"{self._gs(name)} does not exist")
        if int(blob.size or 0) != size or blob.crc32c != crc32c:
            raise ReplacedWhileRead(
                f"{self._gs(name)} has {blob.size} bytes, crc32c {blob.crc32c}; expected {size} "
                f"bytes, crc32c {crc32c}: it changed since it was checked"
            )
        return GCSFile(self, name, size, int(blob.generation))

    def find_file(self, key: str) -> GCSFile | None:
        info = self.stat(key)
        if info is None:
            return None
        return self.open_file(key, size=info.size, crc32c=info.crc32c)

    def stage(self, key: str) -> GCSSink:
        return GCSSink(self, self._name(key))

    def publish_staged(
        self, staged: StagedFile, key: str, *, if_generation_match: int | None = None
    ) -> ObjectInfo:
        name = self._name(key)
        source = self.bucket.blob(self._name(staged.key), generation=staged.info.generation)
        try:
            published = self._publish(source, name, if_generation_match)
        except api_exceptions.PreconditionFailed as exc:
            raise StorageError(
                f"{self._gs(name)} changed while it was being written (expected generation "
                f"{if_generation_match}); nothing was published"
            ) from exc
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(
                f"cannot publish {staged.info.uri} as {self._gs(name)}: {exc}"
            ) from exc
        if published.crc32c != staged.info.crc32c or published.size != staged.info.size:
            raise StorageError(
                f"{self._gs(name)} was published with crc32c {published.crc32c}, "
                f"{published.size} bytes; the verified upload has {staged.info.crc32c}, "
                f"{staged.info.size} bytes"
            )
        # Published: the temporary object goes, as a local root's is renamed away.
        self.discard(staged)
        return self._info(published)

    def discard(self, staged: StagedFile) -> None:
        with suppress(api_exceptions.NotFound):
            self.bucket.blob(self._name(staged.key)).delete()

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        src_name = self._name(src_key)
        source = self._get_blob(src_name)
        if source is None:
            raise StorageError(f"cannot copy {self._gs(src_name)}: it does not exist")
        try:
            dst = self._publish(source, self._name(dst_key), None)
        except api_exceptions.GoogleAPICallError as exc:
            raise StorageError(f"cannot copy {self._gs(src_name)} to {dst_key}: {exc}") from exc
        if dst.crc32c != source.crc32c or dst.size != source.size:
            raise StorageError(f"copy of {self._gs(src_name)} to {self._gs(dst.name)} differs")
        return self._info(dst)
