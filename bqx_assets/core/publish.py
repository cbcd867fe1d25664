"""Publishing training files: verified upload, previous version kept, failures quarantined."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bqx_assets.core.errors import StorageError
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.merge import VouchedFile
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage import (
    LocalStorage,
    ObjectInfo,
    ObjectStorage,
    StagedFile,
    Storage,
    StoredFile,
    file_crc32c,
)

VERSIONS_PREFIX = "versions"
"""Replaced training files are kept as `versions/training_{pair}.{published at}.parquet`, the time
being when the replaced file was published (UTC, `%Y%m%dT%H%M%S%fZ`). This works the same on a
local folder, on GCS and on the emulator (fake-gcs-server stores generations but does not list
them); the output bucket's lifecycle never deletes these copies."""

QUARANTINE_PREFIX = "quarantine"
"""Training files that failed a gate check: `quarantine/training_{pair}.{run time}.parquet`, with
the gate report beside it as `.report.json`. The published `training_{pair}.parquet` is never
touched."""

_STAMP = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class TrainingFile:
    """A finished training file handed from the merge to the output root: a file on local disk
    (`local_path`), or, for a gs:// output root, a verified temporary object the merge streamed
    its output into (`staged`), which is published by a server-side copy and then deleted.

    `passed` says whether every gate check passed; `report` is the gate report (JSON-able), written
    beside a quarantined file.
    """

    pair: str
    local_path: Path | None
    passed: bool
    report: dict[str, Any] | None = None
    staged: StagedFile | None = None

    def __post_init__(self) -> None:
        if (self.local_path is None) == (self.staged is None):
            raise StorageError(
                f"training file of {self.pair}: give exactly one of a local path and a staged "
                "object"
            )


@dataclass(frozen=True)
class PublishResult:
    """Where a training file went and what the transfer cost."""

    pair: str
    published: bool
    """True: stored under `training_{pair}.parquet`; False: quarantined."""
    uri: str
    size: int
    crc32c: str
    generation: int | None
    seconds: float
    """Transfer time (the upload for a GCS root; the whole verified copy for a local one)."""
    previous_uri: str | None = None
    """Where the replaced version was kept, when there was one."""
    report_uri: str | None = None
    unchanged: bool = False
    """The same bytes were already published: nothing was uploaded or versioned."""

    @classmethod
    def of(
        cls, pair: str, info: ObjectInfo, *, published: bool, seconds: float, **extra: Any
    ) -> PublishResult:
        return cls(
            pair=pair,
            published=published,
            uri=info.uri,
            size=info.size,
            crc32c=info.crc32c,
            generation=info.generation,
            seconds=seconds,
            **extra,
        )

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def metadata(self) -> dict[str, Any]:
        """Small, human-readable facts for the materialization."""
        meta: dict[str, Any] = {
            "status": "published" if self.published else "quarantined",
            "uri": self.uri,
            "size_bytes": self.size,
            "crc32c": self.crc32c,
            "upload_seconds": round(self.seconds, 3),
            "upload_mb_per_s": round(self.mb_per_s, 1),
        }
        if self.generation is not None:
            meta["generation"] = self.generation
        if self.previous_uri:
            meta["previous_version_uri"] = self.previous_uri
        if self.report_uri:
            meta["report_uri"] = self.report_uri
        if self.unchanged:
            meta["unchanged"] = True
        return meta


def version_key(key: str, info: ObjectInfo) -> str:
    """Key under which a published file is kept when a new version replaces it."""
    stem, dot, ext = key.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot else (key, "")
    return f"{VERSIONS_PREFIX}/{stem}.{info.updated.astimezone(UTC).strftime(_STAMP)}{ext}"


def quarantine_key(pair: str, when: datetime) -> str:
    return f"{QUARANTINE_PREFIX}/training_{pair}.{when.astimezone(UTC).strftime(_STAMP)}.parquet"


def _transfer(storage: Storage, local: Path, key: str, *, keep_local: bool) -> tuple[Any, float]:
    watch = Stopwatch()
    # put_file verifies the stored object before it returns and only then, with move=True,
    # removes the local file: the ephemeral copy outlives any failure.
    info = storage.put_file(local, key, move=not keep_local)
    seconds = getattr(info, "upload_seconds", None) or watch.seconds
    return info, seconds


def publish_training_file(
    storage: Storage,
    training_file: TrainingFile,
    *,
    keep_local: bool = False,
    now: datetime | None = None,
) -> PublishResult:
    """Store a finished local training file under the output root `storage`.

    Passed: the file is uploaded and verified under `training_{pair}.parquet`; a different file
    already published there is first copied to `versions/` (see `VERSIONS_PREFIX`). Failed: the
    file and its report go to `quarantine/` and the published file stays byte-identical. The
    local file is deleted after its stored copy is verified, unless `keep_local`. The file is
    streamed, never read into memory.
    """
    if training_file.staged is not None:
        return _publish_staged(storage, training_file, now or datetime.now(UTC))
    local = Path(training_file.local_path or "")
    pair = training_file.pair
    if not local.is_file():
        raise StorageError(f"training file of {pair} not found at {local}")
    now = now or datetime.now(UTC)
    if not training_file.passed:
        key = quarantine_key(pair, now)
        report_uri = _write_report(storage, key, training_file.report)
        info, seconds = _transfer(storage, local, key, keep_local=keep_local)
        return PublishResult.of(pair, info, published=False, seconds=seconds, report_uri=report_uri)

    key = training_file_key(pair)
    existing = storage.stat(key)
    previous_uri = None
    if existing is not None:
        # Size first: the checksum of a 9 GB file is only computed when it can be equal.
        if existing.size == local.stat().st_size and existing.crc32c == file_crc32c(local):
            if not keep_local:
                local.unlink()
            return PublishResult.of(pair, existing, published=True, seconds=0.0, unchanged=True)
        previous_uri = storage.copy(key, version_key(key, existing)).uri
    info, seconds = _transfer(storage, local, key, keep_local=keep_local)
    return PublishResult.of(pair, info, published=True, seconds=seconds, previous_uri=previous_uri)


def clear_dead_writes(storage: Storage, pair: str) -> list[str]:
    """Delete the temporary objects a killed writer of the pair's training file left beside it
    (`.training_{pair}.parquet.{uuid}.tmp`: a staged file never published or discarded, a run
    of a compose, a publish cut short); the keys deleted. Safe while one run per pair runs at a
    time (dagster.yaml limits runs to one per partition): a temporary of the pair found before
    its merge starts is a dead writer's."""
    folder, _, name = training_file_key(pair).rpartition("/")
    dead = [k for k in storage.temporaries(folder) if k.rpartition("/")[2].startswith(f".{name}.")]
    for key in dead:
        storage.delete(key)
    return dead


def published_file(storage: Storage, pair: str) -> Path | VouchedFile | StoredFile | None:
    """The pair's published training file, read in place (None when there is none yet): what a
    refresh copies its unchanged row groups from. On a local root, a `VouchedFile` while the
    checksum recorded when it was published still holds (`LocalStorage.vouches`): its row
    groups are then copied without being read again."""
    key = training_file_key(pair)
    if isinstance(storage, ObjectStorage):
        info = storage.stat(key)
        if info is None:
            return None
        return storage.open_stored(key, size=info.size, crc32c=info.crc32c)
    path = storage.local_path(key)
    if path is None or not path.is_file():
        return None
    if isinstance(storage, LocalStorage) and storage.vouches(key):
        return VouchedFile(path)
    return path


def _write_report(storage: Storage, key: str, report: Any) -> str | None:
    """The gate report of a quarantined file, beside it; its URI (None without a report)."""
    if report is None:
        return None
    data = json.dumps(report, indent=2, default=str).encode()
    return storage.write_bytes(key.removesuffix(".parquet") + ".report.json", data).uri


def _publish_staged(storage: Storage, training_file: TrainingFile, now: datetime) -> PublishResult:
    """`publish_training_file` for a file already streamed to a verified temporary object of the
    output root: the same outcomes (published with the previous version kept, unchanged, or
    quarantined with its report), each by a server-side copy; the temporary object is deleted
    in every case, failures included. `seconds` is the streamed upload's (it ran during the
    merge); the copy itself is a metadata operation within a bucket."""
    staged = training_file.staged
    pair = training_file.pair
    assert staged is not None
    if not isinstance(storage, ObjectStorage):
        raise StorageError(
            f"training file of {pair} was staged as {staged.info.uri}, but the output root "
            f"{storage.uri} is not an object store"
        )
    seconds = staged.upload_seconds
    try:
        if not training_file.passed:
            key = quarantine_key(pair, now)
            report_uri = _write_report(storage, key, training_file.report)
            info = storage.publish_staged(staged, key, if_generation_match=0)
            return PublishResult.of(
                pair, info, published=False, seconds=seconds, report_uri=report_uri
            )
        key = training_file_key(pair)
        existing = storage.stat(key)
        previous_uri = None
        if existing is not None:
            if existing.size == staged.info.size and existing.crc32c == staged.info.crc32c:
                return PublishResult.of(pair, existing, published=True, seconds=0.0, unchanged=True)
            previous_uri = storage.copy(key, version_key(key, existing)).uri
        info = storage.publish_staged(
            staged,
            key,
            if_generation_match=existing.generation if existing is not None else 0,
        )
        return PublishResult.of(
            pair, info, published=True, seconds=seconds, previous_uri=previous_uri
        )
    finally:
        storage.discard(staged)
