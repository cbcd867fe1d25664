"""Publishing a training file: the committed file renamed into place, the previous one kept under
`versions/`, a failed one quarantined with its report."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bqx_assets.core.gate.profile import Profile, profile_key, publish_profile
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.storage import ObjectInfo, StagedFile, Storage

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


def report_key(pair: str) -> str:
    """Storage key of the gate report of the pair's latest build, published or quarantined."""
    return f"gate/training_{pair}.report.json"


@dataclass(frozen=True)
class TrainingFile:
    """A finished training file handed from the merge to the output root: the verified
    temporary file its sink committed (`staged`), published under its key or quarantined.

    `passed` says whether every gate check passed; `report` is the gate report (JSON-able),
    kept as the pair's latest report and beside a quarantined file; `profile` is the file's
    profile, published with the file: what the pair's next build is judged against.
    """

    pair: str
    staged: StagedFile
    passed: bool
    report: dict[str, Any] | None = None
    profile: Profile | None = None


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
    def status(self) -> str:
        """`published`, `unchanged` (the same bytes were already published) or `quarantined`."""
        if not self.published:
            return "quarantined"
        return "unchanged" if self.unchanged else "published"


def version_key(key: str, info: ObjectInfo) -> str:
    """Key under which a published file is kept when a new version replaces it."""
    stem, dot, ext = key.rpartition(".")
    stem, ext = (stem, f".{ext}") if dot else (key, "")
    return f"{VERSIONS_PREFIX}/{stem}.{info.updated.astimezone(UTC).strftime(_STAMP)}{ext}"


def quarantine_key(pair: str, when: datetime) -> str:
    return f"{QUARANTINE_PREFIX}/training_{pair}.{when.astimezone(UTC).strftime(_STAMP)}.parquet"


def publish_training_file(
    storage: Storage,
    training_file: TrainingFile,
    *,
    now: datetime | None = None,
    run_id: str | None = None,
) -> PublishResult:
    """Publish a training file its sink committed in the output root `storage`.

    Passed: it replaces `training_{pair}.parquet`; a different file already published there is
    first copied to `versions/` (see `VERSIONS_PREFIX`); the same bytes already published are
    left as they are. Its profile is published with it (`gate.profile.publish_profile`).
    Failed: the file and its report go to `quarantine/` and the published file and profile
    stay byte-identical. Each outcome is a rename (local) or a server-side copy (GCS), never a
    transfer of the file; the temporary file is gone afterwards, failures included. Last, the
    build's gate report becomes the pair's latest (`report_key`), with `run_id`.
    """
    staged = training_file.staged
    pair = training_file.pair
    now = now or datetime.now(UTC)
    watch = Stopwatch()

    def seconds() -> float:
        # A streamed upload's own time (it ran during the merge); a local root's publish.
        return staged.upload_seconds or watch.seconds

    try:
        if not training_file.passed:
            key = quarantine_key(pair, now)
            # The file first: a publish that fails leaves no report of a file not there.
            info = storage.publish_staged(staged, key, if_generation_match=0)
            report_uri = _write_report(storage, key, training_file.report)
            result = PublishResult.of(
                pair, info, published=False, seconds=seconds(), report_uri=report_uri
            )
        else:
            result = _publish_passed(storage, training_file, seconds)
            # An unchanged file's profile is already published, unless it never was.
            profile = training_file.profile
            if profile is not None and (
                not result.unchanged or not storage.stat(profile_key(pair))
            ):
                publish_profile(storage, profile, now)
    finally:
        storage.discard(staged)
    _write_latest(storage, training_file, result, now, run_id)
    return result


def _publish_passed(
    storage: Storage, training_file: TrainingFile, seconds: Callable[[], float]
) -> PublishResult:
    staged, pair = training_file.staged, training_file.pair
    key = training_file_key(pair)
    existing = storage.stat(key)
    previous_uri = None
    if existing is not None:
        if existing.size == staged.info.size and existing.crc32c == staged.info.crc32c:
            return PublishResult.of(pair, existing, published=True, seconds=0.0, unchanged=True)
        previous_uri = storage.copy(key, version_key(key, existing)).uri
    info = storage.publish_staged(
        staged, key, if_generation_match=existing.generation if existing is not None else 0
    )
    return PublishResult.of(
        pair, info, published=True, seconds=seconds(), previous_uri=previous_uri
    )


def _write_latest(
    storage: Storage,
    training_file: TrainingFile,
    result: PublishResult,
    now: datetime,
    run_id: str | None,
) -> None:
    """The build's gate report as the pair's latest: what the gate view and the alerts read."""
    record = {
        **(training_file.report or {}),
        "pair": training_file.pair,
        "passed": training_file.passed,
        "status": result.status,
        "uri": result.uri,
        "at": now.astimezone(UTC).isoformat(),
        "run_id": run_id,
    }
    storage.write_bytes(report_key(training_file.pair), json.dumps(record, default=str).encode())


def latest_report(storage: Storage, pair: str) -> dict[str, Any] | None:
    """The gate report of the pair's latest build (`publish_training_file`), None before one."""
    data = storage.read_bytes(report_key(pair))
    return None if data is None else json.loads(data)


def clear_dead_writes(storage: Storage, pair: str) -> list[str]:
    """Delete the temporary files a killed writer of the pair's training file left beside it
    (`.training_{pair}.parquet.{uuid}.tmp`: a sink never committed or a committed file never
    published, a run of a compose); the keys deleted. Safe while one run per pair runs at a
    time (dagster.yaml limits runs to one per partition): a temporary of the pair found before
    its merge starts is a dead writer's."""
    folder, _, name = training_file_key(pair).rpartition("/")
    dead = [k for k in storage.temporaries(folder) if k.rpartition("/")[2].startswith(f".{name}.")]
    for key in dead:
        storage.delete(key)
    return dead


def _write_report(storage: Storage, key: str, report: Any) -> str | None:
    """The gate report of a quarantined file, beside it; its URI (None without a report)."""
    if report is None:
        return None
    data = json.dumps(report, indent=2, default=str).encode()
    return storage.write_bytes(key.removesuffix(".parquet") + ".report.json", data).uri
