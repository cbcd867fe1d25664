"""The profile: built from the footer, stored beside the published file, promoted from a
candidate only once its file is published."""

from __future__ import annotations

from pathlib import Path

import pytest

from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.profile import (
    Profile,
    candidate_key,
    load_profile,
    profile_key,
    promote_profile,
    save_profile,
)
from bqx_assets.core.storage import LocalStorage, open_storage
from bqx_assets_tests.core.gate.merged import PAIR, ROWS


def test_the_profile_splits_merge_and_source_nulls_per_family(history: Profile) -> None:
    assert history.pair == PAIR and history.rows == ROWS
    assert history.columns.num_rows == 4  # the feature columns, not the key or the target
    corr = history.family("corr")
    assert corr is not None and corr.merge_null_share == pytest.approx(0.5)
    assert corr.newest_null_share == pytest.approx(0.5)
    assert history.family("nope") is None
    assert "| corr | 1 | 50.00% | 50.00% | 0.00% | 50.00% | 0 |" in history.family_markdown()


def test_profile_round_trips_through_a_storage_root(tmp_path: Path, history: Profile) -> None:
    storage = open_storage(str(tmp_path / "output"))
    assert load_profile(storage, PAIR) is None  # a pair's first build
    uri = save_profile(storage, history)
    assert uri.endswith(profile_key(PAIR))
    back = load_profile(storage, PAIR)
    assert back is not None and back.columns.equals(history.columns)
    assert back.families == history.families and back.coverage == history.coverage
    assert back.columns.num_rows == 4


def test_a_corrupt_profile_raises_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"somewhere\.profile\.parquet: not a training-file"):
        Profile.from_bytes(b"PAR1 not really", "somewhere.profile.parquet")


def test_a_candidate_profile_becomes_the_pairs_profile_when_promoted(
    tmp_path: Path, history: Profile
) -> None:
    storage = LocalStorage(tmp_path)
    save_profile(storage, history, candidate_key(PAIR))
    assert load_profile(storage, PAIR) is None  # not the reference before it is promoted
    promoted = promote_profile(storage, PAIR)
    assert promoted.columns.equals(history.columns) and promoted.created == history.created
    stored = load_profile(storage, PAIR)
    assert stored is not None and stored.families == history.families


def test_promoting_without_a_candidate_fails_and_keeps_the_published_profile(
    tmp_path: Path, history: Profile
) -> None:
    storage = LocalStorage(tmp_path)
    save_profile(storage, history)
    before = (tmp_path / profile_key(PAIR)).read_bytes()
    with pytest.raises(ValidationError, match=rf"pair {PAIR}: no candidate profile at .*gate"):
        promote_profile(storage, PAIR)
    assert (tmp_path / profile_key(PAIR)).read_bytes() == before
