"""`bqx lifecycle`: the buckets' lifecycle rules, checked and applied (fake-gcs-server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bqx_assets.cli import main
from bqx_assets.cli.commands import lifecycle
from bqx_assets.core.errors import StorageError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("name", ["gcs-lifecycle-staging.json", "gcs-lifecycle-output.json"])
def test_lifecycle_files_are_valid(name: str) -> None:
    rules = lifecycle.load_rules(DEPLOY / name)
    assert rules and all({"action", "condition"} <= set(rule) for rule in rules)


def test_staging_lifecycle_deletes_checkpoints_after_7_days() -> None:
    rules = lifecycle.load_rules(DEPLOY / "gcs-lifecycle-staging.json")
    deletes = [r["condition"] for r in rules if r["action"]["type"] == "Delete"]
    assert {"age": 7, "matchesPrefix": ["checkpoints/"]} in deletes


def test_output_lifecycle_never_deletes_live_training_files() -> None:
    rules = lifecycle.load_rules(DEPLOY / "gcs-lifecycle-output.json")
    for rule in (r for r in rules if r["action"]["type"] == "Delete"):
        condition = rule["condition"]
        # Every delete is limited to noncurrent versions, temporary uploads or quarantine.
        assert (
            condition.get("isLive") is False
            or condition.get("matchesSuffix") == [".tmp"]
            or condition.get("matchesPrefix") == ["quarantine/"]
        ), rule


def test_lifecycle_dry_run_prints_rules(capsys: pytest.CaptureFixture[str]) -> None:
    rules_file = DEPLOY / "gcs-lifecycle-staging.json"
    assert (
        main(["lifecycle", "apply", "--bucket", "b", "--rules", str(rules_file), "--dry-run"]) == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bucket"] == "b" and result["applied"] is False
    assert result["rules"] == lifecycle.load_rules(rules_file)


@pytest.mark.emulator
def test_lifecycle_apply_reaches_the_bucket(
    gcs_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rules_file = DEPLOY / "gcs-lifecycle-staging.json"
    assert main(["lifecycle", "apply", "--bucket", gcs_bucket, "--rules", str(rules_file)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["applied"] is True and result["bucket"] == gcs_bucket
    # fake-gcs-server accepts the bucket PATCH but does not store lifecycle rules, so what the
    # bucket holds afterwards cannot be checked here; the rules sent are checked above.


def test_lifecycle_rejects_a_bad_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text('{"rule": [{"action": {"type": "Delete"}}]}')
    with pytest.raises(StorageError, match=r"rules\.json"):
        lifecycle.load_rules(bad)
