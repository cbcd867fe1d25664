"""The check descriptions the Dagster UI shows take their numbers from the thresholds, so that
they cannot disagree with them; no number of the gate is written twice."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import bqx_assets
from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS, describe_checks
from bqx_assets.core.gate.thresholds import DEFAULTS, THRESHOLD_FIELDS
from bqx_assets.core.gate.validate import CHECK_NAMES

PACKAGE = Path(bqx_assets.__file__).parent


def _pct(share: float) -> str:
    return f"{share * 100:g}%"


def test_every_check_has_a_description_in_the_order_the_checks_run() -> None:
    assert tuple(CHECK_DESCRIPTIONS) == CHECK_NAMES
    assert len(CHECK_NAMES) == 9
    assert describe_checks(DEFAULTS) == CHECK_DESCRIPTIONS


def test_null_completeness_states_each_family_s_expected_share_and_own_tolerance() -> None:
    text = CHECK_DESCRIPTIONS["null_completeness"]
    for family in [*DEFAULTS.family_null_share, *DEFAULTS.family_null_tolerance]:
        expected = _pct(DEFAULTS.expected_null_share(family))
        points = f"{DEFAULTS.null_tolerance(family) * 100:g} points"
        assert f"{family} {expected} + {points}" in text
    other = f"others {_pct(DEFAULTS.feature_null_share)} + "
    assert other + f"{DEFAULTS.null_share_tolerance * 100:g} points" in text
    # The text once said "+5 points" for every family while corr was allowed 30 and tri 15.
    assert "corr 53% + 30 points" in text and "tri 24% + 15 points" in text


def test_a_changed_threshold_changes_its_description() -> None:
    changed = describe_checks(
        replace(DEFAULTS, min_rows=1, tail_tolerance_rows=9, family_min_coverage={"tri": 0.2})
    )
    assert f"(production 1-{DEFAULTS.max_rows:,})" in changed["row_count"]
    assert "misses at most 9 of the spine's last minutes" in changed["table_coverage"]
    assert f"{_pct(DEFAULTS.min_coverage)}, tri 20%;" in changed["table_coverage"]
    unchanged = {"column_count", "no_target_leakage", "profile_drift", "null_completeness"}
    assert all(changed[name] == CHECK_DESCRIPTIONS[name] for name in unchanged)


def _literals(value: float) -> set[str]:
    """How a default could be written again in code or text: distinctive forms only."""
    if isinstance(value, int) and value >= 1000:
        return {str(value), f"{value:_}", f"{value:,}"}
    if isinstance(value, float) and len(repr(value)) >= 4 and value < 1:  # 0.01, 0.024, 0.53
        return {repr(value), _pct(value)} - {"1%", "10%", "5%"}
    return set()


def test_no_number_of_the_gate_is_written_outside_the_thresholds() -> None:
    numbers: list[float] = []
    for f in THRESHOLD_FIELDS:
        if f.kind in ("int", "float"):
            numbers.append(f.default)
        elif f.kind == "per_family":
            numbers += f.default.values()
    literals = {lit for n in numbers for lit in _literals(n)}
    assert {"150_000", "0.024", "53%"} <= literals
    files = [p for p in (PACKAGE / "core" / "gate").glob("*.py") if p.name != "thresholds.py"]
    files += [PACKAGE / "cli/commands/validate.py", PACKAGE / "defs/resources.py",
              PACKAGE / "defs/checks.py"]  # fmt: skip
    found = [
        f"{path.relative_to(PACKAGE)}: {lit}"
        for path in files
        for lit in literals
        if re.search(rf"(?<![\w.]){re.escape(lit)}(?![\w])", path.read_text())
    ]
    assert found == []
