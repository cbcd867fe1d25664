"""Thresholds defined once: the dataclass's fields give the defaults, a line, a unit and a flag
each (the `bqx validate` flags are tested in cli/test_validate.py, the Dagster config in
defs/test_resources.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest

from bqx_assets.core.errors import ValidationError
from bqx_assets.core.gate.thresholds import (
    DEFAULTS,
    THRESHOLD_FIELDS,
    UNIT_TEXT,
    Thresholds,
)
from bqx_assets.core.warehouse import DateRange
from bqx_assets_tests.core.gate import handmade


# -- the dataclass ---------------------------------------------------------------------------
def test_every_threshold_has_a_line_a_unit_and_one_flag() -> None:
    assert [f.name for f in THRESHOLD_FIELDS] == [f.name for f in dataclasses.fields(Thresholds)]
    for f in THRESHOLD_FIELDS:
        assert f.knob.help and "\n" not in f.knob.help and f.knob.unit in UNIT_TEXT, f.name
    flags = [f.flag for f in THRESHOLD_FIELDS]
    assert len(set(flags)) == len(flags)
    assert all(getattr(handmade.OTHER, f.name) != f.default for f in THRESHOLD_FIELDS)


def test_defaults_are_production_s_and_round_trip_as_plain_values() -> None:
    assert Thresholds() == DEFAULTS
    assert DEFAULTS.family_null_share is not Thresholds().family_null_share  # copied
    for th in (DEFAULTS, handmade.OTHER):
        assert Thresholds.from_dict(th.as_dict()) == th
    assert Thresholds.from_dict({}) == DEFAULTS
    assert DEFAULTS.key_range == (DEFAULTS.key_start, DEFAULTS.key_end)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_row": 5}, "unknown min_row; known: min_rows, max_rows"),
        ({"min_rows": "many"}, "min_rows: could not convert string to float: 'many'"),
        ({"min_rows": 2.5}, "min_rows: a whole number, not 2.5"),
        ({"value_leak": "yes"}, "value_leak: true or false, not 'yes'"),
        ({"max_rows": True}, "max_rows: a number, not True"),
        ({"leak_allow": "a__target_1"}, "leak_allow: a list of names, not one string"),
        ({"family_null_share": {"corr": "half"}}, "family_null_share: could not convert"),
        ({"key_start": "yesterday"}, "key_start: Invalid isoformat string"),
    ],
)
def test_a_value_of_the_wrong_shape_is_refused_by_name(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=f"gate thresholds: {message}"):
        Thresholds.from_dict(values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_rows": 300, "max_rows": 200}, "min_rows 300 > max_rows 200"),
        ({"target_null_share": 1.5}, "target_null_share 1.5 is not from 0 to 1"),
        ({"family_null_share": {"corr": -0.1}}, "family_null_share -0.1 is not from 0 to 1"),
        ({"tail_tolerance_rows": -1}, "tail_tolerance_rows -1 is not at least 0"),
        ({"drift_range_factor": 0.5}, "drift_range_factor 0.5 is not at least 1"),
        ({"key_end": datetime(1999, 1, 1, tzinfo=UTC)}, "key_start .* is not before key_end"),
    ],
)
def test_thresholds_out_of_their_range_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=f"gate thresholds: {message}"):
        Thresholds(**change)


def test_within_holds_keys_to_a_window_where_it_is_bounded() -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    assert DEFAULTS.within(DateRange(start, None)).key_range == (start, DEFAULTS.key_end)
    assert DEFAULTS.within(DateRange()) == DEFAULTS
