"""A bucket's lifecycle rules as data, and what they act on: GCS's conditions over object names,
times and states. `bqx lifecycle apply --dry-run` and the tests judge a bucket's objects with it;
the bucket itself applies the rules (asynchronously, up to a day late: docs, "Behavior")."""

# Every condition and how it is met, as Cloud Storage documents them:
# https://cloud.google.com/storage/docs/lifecycle ("Conditions", "Actions"); their JSON names are
# the bucket resource's `lifecycle.rule[].condition` (https://cloud.google.com/storage/docs/
# json_api/v1/buckets), which the Python client's `LifecycleRuleConditions` writes. The client
# libraries state the semantics word for word, e.g. https://cloud.google.com/java/docs/reference/
# google-cloud-storage/latest/com.google.cloud.storage.BucketInfo.LifecycleRule.
# LifecycleCondition.Builder: age "is calculated by adding the specified value to the object
# creation time"; createdBefore "is satisfied when an object is created before midnight of the
# specified date in UTC". An object's times are its resource's: `timeCreated`, `customTime`,
# and `timeDeleted`, "the time at which the object became noncurrent"
# (https://cloud.google.com/storage/docs/json_api/v1/objects).

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bqx_assets.core.errors import StorageError

if TYPE_CHECKING:  # the client is imported by whoever lists a bucket
    from google.cloud import storage

DAY = timedelta(days=1)

DELETE = "Delete"
SET_STORAGE_CLASS = "SetStorageClass"
ABORT_MULTIPART = "AbortIncompleteMultipartUpload"
"""Acts on unfinished XML API multipart uploads, which are not objects: it never acts on one."""
ACTIONS = (DELETE, SET_STORAGE_CLASS, ABORT_MULTIPART)

STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")
"""From the dearest at rest to the cheapest: of two SetStorageClass rules met at once, the one
to the cheaper class acts (docs, "Actions")."""


@dataclass(frozen=True)
class ObjectState:
    """One version (generation) of an object, as lifecycle management sees it."""

    name: str
    created: datetime
    """`timeCreated` of this generation: a rewrite or an overwrite makes a new one."""
    live: bool = True
    noncurrent_since: datetime | None = None
    """`timeDeleted`: when it became noncurrent (replaced or deleted in a versioned bucket)."""
    custom_time: datetime | None = None
    storage_class: str = "STANDARD"
    newer_versions: int = 0
    """Versions of the same name newer than this one, the live one included."""
    generation: int | None = None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _days(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StorageError(f"{where} is {value!r}, not a whole number of days >= 0")
    return value


def _day(value: Any, where: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise StorageError(f"{where} is {value!r}, not a date YYYY-MM-DD (UTC)") from None


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise StorageError(f"{where} is {value!r}, not true or false")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise StorageError(f"{where} is {value!r}, not a non-empty list of strings")
    return tuple(value)


_CONDITIONS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "age": ("age", _days),
    "createdBefore": ("created_before", _day),
    "customTimeBefore": ("custom_time_before", _day),
    "daysSinceCustomTime": ("days_since_custom_time", _days),
    "daysSinceNoncurrentTime": ("days_since_noncurrent_time", _days),
    "isLive": ("is_live", _flag),
    "matchesPrefix": ("matches_prefix", _names),
    "matchesStorageClass": ("matches_storage_class", _names),
    "matchesSuffix": ("matches_suffix", _names),
    "noncurrentTimeBefore": ("noncurrent_time_before", _day),
    "numNewerVersions": ("num_newer_versions", _days),
}
"""Each documented condition's JSON name -> (field, parser)."""


@dataclass(frozen=True)
class Condition:
    """A rule's conditions: an object meets it when it meets every one that is set."""

    age: int | None = None
    created_before: date | None = None
    custom_time_before: date | None = None
    days_since_custom_time: int | None = None
    days_since_noncurrent_time: int | None = None
    is_live: bool | None = None
    matches_prefix: tuple[str, ...] | None = None
    matches_storage_class: tuple[str, ...] | None = None
    matches_suffix: tuple[str, ...] | None = None
    noncurrent_time_before: date | None = None
    num_newer_versions: int | None = None

    @classmethod
    def parse(cls, record: Any, where: str) -> Condition:
        if not isinstance(record, dict) or not record:
            raise StorageError(f"{where} has no condition (a rule needs at least one)")
        unknown = sorted(set(record) - set(_CONDITIONS))
        if unknown:
            raise StorageError(
                f"{where}: {', '.join(map(repr, unknown))} is not a lifecycle condition "
                f"({', '.join(_CONDITIONS)})"
            )
        values = {}
        for name, value in record.items():
            attribute, parse = _CONDITIONS[name]
            values[attribute] = parse(value, f"{where} condition {name}")
        return cls(**values)

    def met(self, obj: ObjectState, now: datetime) -> bool:
        """Whether `obj` meets every condition set, at `now` (docs, "Conditions")."""
        noncurrent = None if obj.live else obj.noncurrent_since
        custom = obj.custom_time
        checks: list[bool] = []
        if self.age is not None:
            # "satisfied when an object reaches the specified age": its creation time plus N
            # days, noncurrent or not.
            checks.append(now >= obj.created + self.age * DAY)
        if self.created_before is not None:
            # "created before midnight of the specified date in UTC".
            checks.append(obj.created < _midnight(self.created_before))
        # Conditions on the custom time are not met by an object without one, those on the
        # noncurrent time only by noncurrent versions.
        if self.custom_time_before is not None:
            checks.append(custom is not None and custom < _midnight(self.custom_time_before))
        if self.days_since_custom_time is not None:
            checks.append(custom is not None and now >= custom + self.days_since_custom_time * DAY)
        if self.days_since_noncurrent_time is not None:
            days = self.days_since_noncurrent_time
            checks.append(noncurrent is not None and now >= noncurrent + days * DAY)
        if self.noncurrent_time_before is not None:
            before = _midnight(self.noncurrent_time_before)
            checks.append(noncurrent is not None and noncurrent < before)
        if self.is_live is not None:
            # True: live versions (every object of a bucket that keeps no versions); false:
            # noncurrent ones.
            checks.append(obj.live is self.is_live)
        # Lists: any of the prefixes, suffixes or classes.
        if self.matches_prefix is not None:
            checks.append(obj.name.startswith(self.matches_prefix))
        if self.matches_suffix is not None:
            checks.append(obj.name.endswith(self.matches_suffix))
        if self.matches_storage_class is not None:
            checks.append(obj.storage_class in self.matches_storage_class)
        if self.num_newer_versions is not None:
            # "at least N versions (including the live version) newer than this version".
            checks.append(obj.newer_versions >= self.num_newer_versions)
        return all(checks)


@dataclass(frozen=True)
class LifecycleRule:
    """One rule: an action taken on every object that meets its condition."""

    action: str
    condition: Condition
    storage_class: str | None = None
    """The class a SetStorageClass rule moves objects to."""
    record: dict[str, Any] = field(default_factory=dict, compare=False)
    """The rule as written in its file: what is sent to the bucket."""

    @classmethod
    def parse(cls, record: Any, where: str) -> LifecycleRule:
        action = record.get("action") if isinstance(record, dict) else None
        kind = action.get("type") if isinstance(action, dict) else None
        if kind not in ACTIONS:
            raise StorageError(f"{where} has no action type of {', '.join(ACTIONS)}: {action!r}")
        storage_class = action.get("storageClass")
        if kind == SET_STORAGE_CLASS and storage_class not in STORAGE_CLASSES:
            raise StorageError(
                f"{where}: SetStorageClass to {storage_class!r}, not one of "
                f"{', '.join(STORAGE_CLASSES)}"
            )
        return cls(kind, Condition.parse(record.get("condition"), where), storage_class, record)

    def acts_on(self, obj: ObjectState, now: datetime) -> bool:
        return self.action != ABORT_MULTIPART and self.condition.met(obj, now)


@dataclass(frozen=True)
class Lifecycle:
    """A bucket's lifecycle configuration: its rules, in their file's order."""

    rules: tuple[LifecycleRule, ...]
    source: str = ""
    """Where the rules were read from, for messages."""

    @classmethod
    def parse(cls, document: Any, source: str) -> Lifecycle:
        """From `{"rule": [...]}` (what `gcloud storage buckets update --lifecycle-file` reads)
        or the bucket resource's `{"lifecycle": {"rule": [...]}}`."""
        inner = document.get("lifecycle", document) if isinstance(document, dict) else None
        rules = inner.get("rule") if isinstance(inner, dict) else None
        if not isinstance(rules, list) or not rules:
            raise StorageError(f"{source} has no lifecycle rules (expected {{'rule': [...]}})")
        return cls(
            tuple(LifecycleRule.parse(r, f"{source}: rule {i}") for i, r in enumerate(rules)),
            source,
        )

    @property
    def records(self) -> list[dict[str, Any]]:
        """The rules as their file writes them: what the bucket is given."""
        return [rule.record for rule in self.rules]

    def action_on(self, obj: ObjectState, now: datetime) -> LifecycleRule | None:
        """The rule that acts on `obj` at `now`, or None. Of several rules met at once, a
        Delete acts before any SetStorageClass, and of those the cheapest class (docs,
        "Actions")."""
        met = [rule for rule in self.rules if rule.acts_on(obj, now)]
        if not met:
            return None
        deletes = [rule for rule in met if rule.action == DELETE]
        if deletes:
            return deletes[0]
        return max(met, key=lambda rule: STORAGE_CLASSES.index(rule.storage_class or "STANDARD"))

    def deletions(
        self, objects: Iterable[ObjectState], now: datetime
    ) -> list[tuple[ObjectState, int]]:
        """Each object a Delete rule acts on at `now`, with that rule's index (a live object of
        a versioned bucket becomes noncurrent; any other is gone)."""
        out = []
        for obj in objects:
            rule = self.action_on(obj, now)
            if rule is not None and rule.action == DELETE:
                out.append((obj, self.rules.index(rule)))
        return out


def load_lifecycle(path: Path | str) -> Lifecycle:
    """The lifecycle rules of a JSON file; a StorageError naming the file, the rule and the
    condition when one is not a rule GCS would take."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StorageError(f"cannot read lifecycle rules from {path}: {exc}") from exc
    return Lifecycle.parse(document, str(path))


def object_states(blobs: Iterable[storage.Blob]) -> list[ObjectState]:
    """The states of a listing's objects, every version of each name included (a listing with
    `versions`): how many versions of its name are newer than each one is counted here."""
    listed = list(blobs)
    generations: dict[str, list[int]] = defaultdict(list)
    for blob in listed:
        generations[blob.name].append(int(blob.generation or 0))
    out = []
    for blob in listed:
        generation = int(blob.generation or 0)
        out.append(
            ObjectState(
                name=blob.name,
                created=blob.time_created,
                live=blob.time_deleted is None,
                noncurrent_since=blob.time_deleted,
                custom_time=blob.custom_time,
                storage_class=blob.storage_class or "STANDARD",
                newer_versions=sum(g > generation for g in generations[blob.name]),
                generation=generation,
            )
        )
    return out


def bucket_objects(client: storage.Client, bucket: str, prefix: str = "") -> list[ObjectState]:
    """Every version of every object of `bucket` under `prefix`, as lifecycle management sees
    them (noncurrent ones exist only where the bucket keeps versions)."""
    from google.api_core import exceptions as api_exceptions

    try:
        # "true" as the JSON API documents the parameter: fake-gcs-server reads the client's
        # `True` as false and would list live versions only.
        blobs = client.list_blobs(bucket, prefix=prefix or None, versions="true")  # type: ignore[arg-type]
        return object_states(blobs)
    except api_exceptions.GoogleAPICallError as exc:
        raise StorageError(f"cannot list gs://{bucket}/{prefix}: {exc}") from exc
