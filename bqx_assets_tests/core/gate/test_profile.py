"""The profile: built from the footer, published with its file, kept as the pair's history."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.profile import (
    Profile,
    history_key,
    history_prefix,
    load_history,
    load_profile,
    profile_key,
    publish_profile,
)
from bqx_assets.core.merge.coverage import COVERAGE_KEY
from bqx_assets.core.storage import LocalStorage, open_storage
from bqx_assets_tests.core.gate.merged import PAIR, ROWS

PUBLISHED = datetime(2024, 1, 3, 6, tzinfo=UTC)


def test_the_profile_splits_merge_and_source_nulls_per_family(history: Profile) -> None:
    assert history.pair == PAIR and history.rows == ROWS
    assert history.columns.num_rows == 4  # the feature columns, not the key or the target
    corr = history.family("corr")
    assert corr is not None and corr.merge_null_share == pytest.approx(0.5)
    assert corr.newest_null_share == pytest.approx(0.5)
    # The newest day (the second) and its reference minutes (the first day): 720 ETF minutes
    # each, no null value in either.
    assert (corr.newest_cells, corr.reference_cells) == (720, 720)
    assert corr.newest_source_null_share == corr.reference_source_null_share == 0.0
    agg = history.family("agg")
    assert agg is not None and agg.reference_source_null_share == pytest.approx(45 / 1440)
    assert history.family("nope") is None
    assert "| corr | 1 | 50.00% | 50.00% | 0.00% | 50.00% | 0 |" in history.family_markdown()


def test_a_published_profile_round_trips_and_joins_the_pairs_history(
    tmp_path: Path, history: Profile
) -> None:
    storage = open_storage(str(tmp_path / "output"))
    assert load_profile(storage, PAIR) is None and load_history(storage, PAIR) == []
    uri = publish_profile(storage, history, PUBLISHED)
    assert uri.endswith(profile_key(PAIR))
    back = load_profile(storage, PAIR)
    assert back is not None and back.columns.equals(history.columns)
    assert back.families == history.families and back.coverage == history.coverage
    (entry,) = load_history(storage, PAIR)
    assert entry.families == history.families
    assert (tmp_path / "output" / history_key(PAIR, PUBLISHED)).exists()


def test_the_history_keeps_the_newest_profiles_newest_first(
    tmp_path: Path, history: Profile
) -> None:
    storage = LocalStorage(tmp_path)
    for day in range(4):
        profile = replace(history, created=f"2024-01-0{day + 1}T06:00:00+00:00")
        publish_profile(storage, profile, PUBLISHED + timedelta(days=day), keep=3)
    assert len(list(storage.list(history_prefix(PAIR)))) == 3
    created = [p.created[:10] for p in load_history(storage, PAIR)]
    assert created == ["2024-01-04", "2024-01-03", "2024-01-02"]
    assert [p.created[:10] for p in load_history(storage, PAIR, limit=2)] == created[:2]
    current = load_profile(storage, PAIR)
    assert current is not None and current.created.startswith("2024-01-04")


def test_a_corrupt_profile_raises_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"somewhere\.profile\.parquet: not a training-file"):
        Profile.from_bytes(b"PAR1 not really", "somewhere.profile.parquet")


def test_a_profile_of_an_older_gate_is_still_read_for_drift(history: Profile) -> None:
    """A pair's published profile written before the coverage record's last version and the
    newest rows' reference: read without its coverage record (drift does not use it) and without
    the families' newer fields."""
    table = pq.read_table(io.BytesIO(history.to_bytes()))
    metadata = dict(table.schema.metadata or {})
    summary = json.loads(metadata[b"bqx:profile"])
    for family in summary["families"]:
        del family["reference_source_null_share"], family["reference_cells"]
    metadata[b"bqx:profile"] = json.dumps(summary).encode()
    metadata[COVERAGE_KEY.encode()] = json.dumps({"version": 3, "tables": []}).encode()
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), sink)
    old = Profile.from_bytes(sink.getvalue(), "old.profile.parquet")
    assert old.coverage is None and old.columns.equals(history.columns)
    corr = old.family("corr")
    assert corr is not None and corr.reference_source_null_share is None
    assert corr.null_share == pytest.approx(0.5)
