"""The lifecycle evaluator: GCS's documented conditions over object names, times and states
(https://cloud.google.com/storage/docs/lifecycle), and the shipped rules judged with it: on
object states written here, and on the GCS emulator's bucket after a refresh, a re-refresh and an
append."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.manifest import MANIFEST_SUFFIX, stored_manifests
from bqx_assets.core.checkpoints.refresh import refresh_tables
from bqx_assets.core.checkpoints.schema import owner_of
from bqx_assets.core.errors import StorageError
from bqx_assets.core.layout import chunk_index_key
from bqx_assets.core.storage.gcs import GCSStorage
from bqx_assets.core.storage.lifecycle import (
    Lifecycle,
    ObjectState,
    bucket_objects,
    load_lifecycle,
)
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse
from bqx_assets_tests.conftest import MINI_PAIRS, Warehouses
from bqx_assets_tests.core.checkpoints.conftest import DAY, PAIR, START, pair_sources

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
STAGING = DEPLOY / "gcs-lifecycle-staging.json"
OUTPUT = DEPLOY / "gcs-lifecycle-output.json"
T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
AGES = [timedelta(0), timedelta(hours=23), timedelta(days=1), timedelta(days=7)] + [
    timedelta(days=d) for d in (30, 90, 365, 3650)
]
"""Moments after an object's creation at which the rules are judged: up to ten years."""


def rules(*conditions: dict[str, object], action: str = "Delete") -> Lifecycle:
    return Lifecycle.parse(
        {"rule": [{"action": {"type": action}, "condition": c} for c in conditions]}, "test"
    )


def met(condition: dict[str, object], obj: ObjectState, at: datetime) -> bool:
    return bool(rules(condition).deletions([obj], at))


# -- each condition as documented ----------------------------------------------------------
def test_age_is_met_from_the_creation_time_plus_n_days() -> None:
    obj = ObjectState("a", created=T0)
    assert not met({"age": 7}, obj, T0 + timedelta(days=7) - timedelta(seconds=1))
    assert met({"age": 7}, obj, T0 + timedelta(days=7))
    # Noncurrent versions have an age too: from their own creation.
    old = ObjectState("a", T0, live=False, noncurrent_since=T0 + timedelta(days=6))
    assert met({"age": 7}, old, T0 + timedelta(days=7))


def test_created_before_is_midnight_utc_of_the_date() -> None:
    condition = {"createdBefore": "2025-03-11"}
    assert met(condition, ObjectState("a", T0), T0)
    assert not met(condition, ObjectState("a", datetime(2025, 3, 11, tzinfo=UTC)), T0)


def test_custom_time_conditions_need_a_custom_time() -> None:
    plain = ObjectState("a", T0)
    custom = ObjectState("a", T0, custom_time=T0 - timedelta(days=3))
    at = T0 + timedelta(days=400)
    assert not met({"daysSinceCustomTime": 2}, plain, at)
    assert not met({"customTimeBefore": "2030-01-01"}, plain, at)
    assert met({"daysSinceCustomTime": 2}, custom, T0)
    assert not met({"daysSinceCustomTime": 4}, custom, T0)
    assert met({"customTimeBefore": "2025-03-08"}, custom, T0)
    assert not met({"customTimeBefore": "2025-03-07"}, custom, T0)


def test_noncurrent_conditions_only_meet_noncurrent_versions() -> None:
    live = ObjectState("a", T0)
    gone = ObjectState("a", T0, live=False, noncurrent_since=T0 + timedelta(days=2))
    at = T0 + timedelta(days=3)
    assert not met({"daysSinceNoncurrentTime": 0}, live, at + timedelta(days=999))
    assert not met({"noncurrentTimeBefore": "2099-01-01"}, live, at)
    assert met({"daysSinceNoncurrentTime": 1}, gone, at)
    assert not met({"daysSinceNoncurrentTime": 2}, gone, at)
    assert met({"noncurrentTimeBefore": "2025-03-13"}, gone, at)
    assert not met({"noncurrentTimeBefore": "2025-03-12"}, gone, at)
    assert met({"isLive": False}, gone, at) and not met({"isLive": False}, live, at)
    assert met({"isLive": True}, live, at) and not met({"isLive": True}, gone, at)


def test_names_classes_and_newer_versions() -> None:
    obj = ObjectState("checkpoints/eurusd/t/x.parquet", T0, storage_class="NEARLINE")
    assert met({"matchesPrefix": ["exports/", "checkpoints/"]}, obj, T0)
    assert not met({"matchesPrefix": ["eurusd/"]}, obj, T0)  # a prefix of the whole name
    assert met({"matchesSuffix": [".tmp", ".parquet"]}, obj, T0)
    assert not met({"matchesSuffix": [".json"]}, obj, T0)
    assert met({"matchesStorageClass": ["NEARLINE"]}, obj, T0)
    assert not met({"matchesStorageClass": ["STANDARD"]}, obj, T0)
    # "at least N versions (including the live version) newer than this version"
    older = ObjectState("a", T0, live=False, noncurrent_since=T0, newer_versions=2)
    assert met({"numNewerVersions": 2}, older, T0)
    assert not met({"numNewerVersions": 3}, older, T0)


def test_every_condition_of_a_rule_must_be_met() -> None:
    obj = ObjectState("exports/x/1.parquet", T0)
    condition = {"age": 1, "matchesPrefix": ["exports/"]}
    assert not met(condition, obj, T0 + timedelta(hours=23))
    assert met(condition, obj, T0 + timedelta(days=1))
    assert not met(condition, ObjectState("checkpoints/x", T0), T0 + timedelta(days=99))


def test_delete_wins_over_storage_class_and_the_cheapest_class_wins() -> None:
    both = Lifecycle.parse(
        {
            "rule": [
                {"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
                 "condition": {"age": 1}},
                {"action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
                 "condition": {"age": 1}},
                {"action": {"type": "Delete"}, "condition": {"age": 2}},
                {"action": {"type": "AbortIncompleteMultipartUpload"}, "condition": {"age": 1}},
            ]
        },
        "test",
    )  # fmt: skip
    obj = ObjectState("a", T0)
    chosen = both.action_on(obj, T0 + timedelta(days=1))
    assert chosen is not None and chosen.storage_class == "COLDLINE"
    assert both.deletions([obj], T0 + timedelta(days=1)) == []
    assert both.deletions([obj], T0 + timedelta(days=2)) == [(obj, 2)]


# -- bad rules: one clear error naming the file, the rule and the condition ----------------
@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rule": []}, r"has no lifecycle rules"),
        ([1], r"has no lifecycle rules"),
        ({"rule": [{"action": {"type": "Delete"}}]}, r"rule 0 has no condition"),
        ({"rule": [{"action": {"type": "Erase"}, "condition": {"age": 1}}]},
         r"rule 0 has no action type of Delete"),
        ({"rule": [{"action": {"type": "Delete"}, "condition": {"ages": 1}}]},
         r"rule 0: 'ages' is not a lifecycle condition"),
        ({"rule": [{"action": {"type": "Delete"}, "condition": {"age": -1}}]},
         r"rule 0 condition age is -1, not a whole number of days"),
        ({"rule": [{"action": {"type": "Delete"}, "condition": {"age": True}}]},
         r"condition age is True"),
        ({"rule": [{"action": {"type": "Delete"}, "condition": {"createdBefore": "3/1/25"}}]},
         r"condition createdBefore is '3/1/25', not a date"),
        ({"rule": [{"action": {"type": "Delete"}, "condition": {"isLive": "false"}}]},
         r"condition isLive is 'false', not true or false"),
        ({"rule": [{"action": {"type": "Delete"}, "condition": {"matchesPrefix": "x/"}}]},
         r"condition matchesPrefix is 'x/', not a non-empty list"),
        ({"rule": [{"action": {"type": "SetStorageClass", "storageClass": "COLD"},
                    "condition": {"age": 1}}]},
         r"SetStorageClass to 'COLD'"),
    ],
)  # fmt: skip
def test_a_bad_rules_file_is_named_with_its_rule(
    tmp_path: Path, document: object, message: str
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(document))
    with pytest.raises(StorageError, match=message) as caught:
        load_lifecycle(path)
    assert str(path) in str(caught.value)


def test_an_unreadable_rules_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text("{not json")
    with pytest.raises(StorageError, match=r"cannot read lifecycle rules from .*rules\.json"):
        load_lifecycle(path)
    with pytest.raises(StorageError, match=r"missing\.json"):
        load_lifecycle(tmp_path / "missing.json")


def test_the_bucket_resource_form_is_read_too() -> None:
    record = json.loads(STAGING.read_text())
    assert Lifecycle.parse({"lifecycle": record}, "b").records == load_lifecycle(STAGING).records


# -- the shipped rules on object states -----------------------------------------------------
CURRENT = [
    "checkpoints/eurusd/eurusd_bqx_45/2024-01-01_2024-01-31.parquet",
    "checkpoints/eurusd/eurusd_bqx_45/2024-01-01_2024-01-31.manifest.json",
    "checkpoints/eurusd/eurusd_bqx_45/chunks.index.json",
    "checkpoints/shared/usd_vol/2023-05-01_2023-05-31.parquet",
    "checkpoints/shared/usd_vol/2023-05-01_2023-05-31.manifest.json",
]


def test_staging_rules_never_delete_a_live_checkpoint_at_any_age() -> None:
    lifecycle = load_lifecycle(STAGING)
    for name in CURRENT:
        for age in AGES:
            # A chunk reused for ten years keeps its first creation time and storage class.
            obj = ObjectState(name, T0, newer_versions=0)
            assert lifecycle.deletions([obj], T0 + age) == [], (name, age)


def test_staging_rules_delete_superseded_temporary_and_exported_objects_after_a_day() -> None:
    lifecycle = load_lifecycle(STAGING)
    replaced = T0 + timedelta(days=40)  # the refresh deleted or overwrote it then
    gone = [
        ObjectState(CURRENT[0].replace("01-01_2024-01-31", "01-30_2024-01-30"), T0,
                    live=False, noncurrent_since=replaced, newer_versions=0),
        ObjectState(CURRENT[2], T0, live=False, noncurrent_since=replaced, newer_versions=1),
    ]  # fmt: skip
    for obj in gone:
        assert lifecycle.deletions([obj], replaced + timedelta(hours=23)) == []
        assert lifecycle.deletions([obj], replaced + timedelta(days=1)) == [(obj, 2)]
    temporary = ObjectState("checkpoints/eurusd/t/.2024-01-01_2024-01-31.parquet.ab12.tmp", T0)
    shard = ObjectState("exports/bqx.usd_vol/0123456789abcdef/000000000000.parquet", T0)
    for obj, rule in ((temporary, 0), (shard, 1)):
        assert lifecycle.deletions([obj], T0 + timedelta(hours=23)) == []
        assert lifecycle.deletions([obj], T0 + timedelta(days=1)) == [(obj, rule)]


def test_output_rules_keep_published_files_and_drop_superseded_segments() -> None:
    lifecycle = load_lifecycle(OUTPUT)
    kept = [
        "training_eurusd.parquet",
        "training_eurusd.profile.parquet",
        "versions/training_eurusd.20250310T120000Z.parquet",
        ".segments/training_eurusd.parquet/0f1e2d3c",  # the latest file's, reused by the next
        "gate/training_eurusd.report.json",
    ]
    for name in kept:
        for age in AGES:
            assert lifecycle.deletions([ObjectState(name, T0)], T0 + age) == [], (name, age)
    segment = ObjectState(kept[3], T0, live=False, noncurrent_since=T0 + timedelta(days=3))
    assert lifecycle.deletions([segment], T0 + timedelta(days=4)) == [(segment, 2)]
    replaced = ObjectState(kept[0], T0, live=False, noncurrent_since=T0 + timedelta(days=3))
    assert lifecycle.deletions([replaced], T0 + timedelta(days=92)) == []
    assert lifecycle.deletions([replaced], T0 + timedelta(days=93)) == [(replaced, 3)]
    quarantined = ObjectState("quarantine/training_eurusd.20250310T120000Z.parquet", T0)
    assert lifecycle.deletions([quarantined], T0 + timedelta(days=30)) == [(quarantined, 1)]


# -- the rules on the emulator's bucket after a refresh, a re-refresh and an append --------
@pytest.fixture
def appendable(
    warehouses: Warehouses, mini: tuple[Catalog, Path], tmp_path: Path
) -> Iterator[EmbeddedWarehouse]:
    """A writable copy of the mini warehouse, Monday 29 to Wednesday 31 January 2024."""
    path = warehouses.copy(
        tmp_path / "w.duckdb", mini[0], pairs=MINI_PAIRS, rows=3 * DAY, start=START
    )
    wh = EmbeddedWarehouse(path, read_only=False)
    yield wh
    wh.close()


@pytest.mark.emulator
def test_staging_rules_on_the_emulator_bucket_keep_every_current_chunk(
    gcs_emulator: object, mini: tuple[Catalog, Path], appendable: EmbeddedWarehouse
) -> None:
    from emulators.gcs import GCSEmulator

    assert isinstance(gcs_emulator, GCSEmulator)
    catalog, _ = mini
    bucket = gcs_emulator.create_bucket(versioning=True)
    client = gcs_emulator.client()
    storage = GCSStorage(bucket, "checkpoints", client=client)
    sources = pair_sources(catalog, PAIR)
    refresh_tables(appendable, sources, storage, threads=2)
    again = refresh_tables(appendable, sources, storage, threads=2)
    assert sum(c.count("extracted") for c in again) == 0  # a re-refresh reuses every chunk
    appendable.append(DAY)  # 1 February: January's day chunks become one month chunk
    refreshed = refresh_tables(appendable, sources, storage, threads=2)
    assert sum(c.count("compacted") for c in refreshed) > 0
    # What a killed writer and an export leave behind.
    client.bucket(bucket).blob(
        f"checkpoints/{owner_of(sources[1])}/{sources[1].name}/.2024-02-01_2024-02-01.parquet"
        ".0a1b2c3d.tmp"
    ).upload_from_string(b"partial")
    client.bucket(bucket).blob("exports/bqx.t/0123456789abcdef/0.parquet").upload_from_string(b"x")

    current = set()
    for source in sources:
        found = stored_manifests(storage, source)
        for key in found.manifests:
            current |= {key, key.removesuffix(".parquet") + MANIFEST_SUFFIX}
        current.add(chunk_index_key(owner_of(source), source.name))
    current = {f"checkpoints/{k}" for k in current}
    objects = bucket_objects(client, bucket)
    live = {o.name for o in objects if o.live}
    assert current <= live and any(".manifest.json" in k for k in current)
    superseded = [o for o in objects if not o.live]
    # The January day chunks the compaction replaced and the indexes written again.
    assert any("2024-01-30_2024-01-30.parquet" in o.name for o in superseded)
    assert any(o.name.endswith("chunks.index.json") for o in superseded)

    lifecycle = load_lifecycle(STAGING)
    newest = max(o.noncurrent_since or o.created for o in objects)
    kept = {(o.name, o.generation) for o in objects if o.live and o.name in current}
    for age in AGES:
        deleted = {(o.name, o.generation) for o, _ in lifecycle.deletions(objects, newest + age)}
        # No current chunk, manifest or index is ever selected, at any age.
        assert not kept & deleted, age
        expired = {(o.name, o.generation) for o in superseded} | {
            (o.name, o.generation) for o in objects if o.name.endswith(".tmp")
            or o.name.startswith("exports/")
        }  # fmt: skip
        assert deleted == (expired if age >= timedelta(days=1) else set()), age

    # The rules shipped before: every checkpoint a week after it was written, current or not.
    before = Lifecycle.parse(
        {"rule": [{"action": {"type": "Delete"},
                   "condition": {"age": 7, "matchesPrefix": ["checkpoints/"]}}]},
        "the 7-day rule",
    )  # fmt: skip
    week = {o.name for o, _ in before.deletions(objects, newest + timedelta(days=7))}
    assert current <= week
