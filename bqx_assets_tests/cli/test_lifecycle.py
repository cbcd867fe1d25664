"""`bqx lifecycle`: the buckets' lifecycle rules, checked, applied, and judged against a bucket's
objects (fake-gcs-server). The rules themselves are judged in core/storage/test_lifecycle.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bqx_assets.cli import main
from bqx_assets.core.storage.lifecycle import load_lifecycle

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
STAGING = DEPLOY / "gcs-lifecycle-staging.json"


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["gcs-lifecycle-staging.json", "gcs-lifecycle-output.json"])
def test_lifecycle_files_are_valid(name: str) -> None:
    lifecycle = load_lifecycle(DEPLOY / name)
    assert lifecycle.records == json.loads((DEPLOY / name).read_text())["rule"]


def test_staging_lifecycle_deletes_no_live_checkpoint() -> None:
    # Replaces the 7-day rule on `checkpoints/`: a refresh reuses closed-month chunks for as long
    # as their days do not change, so no rule may delete a live object there by its age.
    for rule in load_lifecycle(STAGING).rules:
        condition = rule.condition
        assert (
            condition.is_live is False
            or condition.matches_suffix == (".tmp",)
            or condition.matches_prefix == ("exports/",)
        ), rule.record


def test_output_lifecycle_never_deletes_live_training_files() -> None:
    for rule in load_lifecycle(DEPLOY / "gcs-lifecycle-output.json").rules:
        if rule.action != "Delete":
            continue
        condition = rule.condition
        # Every delete is limited to noncurrent versions, temporary uploads or quarantine.
        assert (
            condition.is_live is False
            or condition.matches_suffix == (".tmp",)
            or condition.matches_prefix == ("quarantine/",)
        ), rule.record


@pytest.mark.emulator
def test_lifecycle_dry_run_prints_what_the_rules_would_delete(
    gcs_emulator: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from emulators.gcs import GCSEmulator

    assert isinstance(gcs_emulator, GCSEmulator)
    bucket = gcs_emulator.create_bucket(versioning=True)
    blobs = gcs_emulator.client().bucket(bucket)
    chunk = "checkpoints/eurusd/t/2024-01-01_2024-01-31.parquet"
    blobs.blob(chunk).upload_from_string(b"old")
    blobs.blob(chunk).upload_from_string(b"new")  # the old generation is noncurrent now
    blobs.blob("checkpoints/eurusd/t/.2024-02-01_2024-02-01.parquet.ab.tmp").upload_from_string(
        b"x"
    )
    blobs.blob("exports/bqx.t/0123/0.parquet").upload_from_string(b"x")
    argv = ["lifecycle", "apply", "--bucket", bucket, "--rules", str(STAGING), "--dry-run"]

    assert main(argv) == 0  # now: nothing is a day old
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["applied"] is False and result["objects"] == 4
    assert result["would_delete"] == [] and "would delete 0" in out

    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    assert main([*argv, "--at", later]) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    found = {d["rule"]: d for d in result["would_delete"]}
    assert set(found) == {0, 1, 2}
    assert found[2]["names"] == [chunk] and (found[2]["live"], found[2]["noncurrent"]) == (0, 1)
    assert found[1]["names"] == ["exports/bqx.t/0123/0.parquet"]
    assert "would delete 3" in out
    # The live chunk stays at any age.
    never = (datetime.now(UTC) + timedelta(days=3650)).isoformat()
    assert main([*argv, "--at", never, "--prefix", "checkpoints/eurusd/t/2024"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["objects"] == 2
    assert [d["noncurrent"] for d in result["would_delete"]] == [1]
    assert all(d["live"] == 0 for d in result["would_delete"])


@pytest.mark.emulator
def test_lifecycle_apply_reaches_the_bucket(
    gcs_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["lifecycle", "apply", "--bucket", gcs_bucket, "--rules", str(STAGING)]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["applied"] is True and result["bucket"] == gcs_bucket
    assert result["rules"] == load_lifecycle(STAGING).records
    # fake-gcs-server accepts the bucket PATCH but does not store lifecycle rules, so what the
    # bucket holds afterwards cannot be checked here; the rules sent are checked above.


def test_at_and_prefix_go_with_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lifecycle", "apply", "--bucket", "b", "--rules", str(STAGING), "--prefix", "x/"]
    assert main(argv) == 1
    assert "--at and --prefix judge a bucket's objects: they go with --dry-run" in (
        capsys.readouterr().err
    )


def test_a_bad_at_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["lifecycle", "apply", "--bucket", "b", "--rules", str(STAGING), "--dry-run",
              "--at", "next week"])  # fmt: skip
    assert "'next week' is not an ISO date or time" in capsys.readouterr().err


def test_lifecycle_rejects_a_bad_rules_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rules.json"
    bad.write_text('{"rule": [{"action": {"type": "Delete"}}]}')
    assert main(["lifecycle", "apply", "--bucket", "b", "--rules", str(bad), "--dry-run"]) == 1
    assert f"{bad}: rule 0 has no condition" in capsys.readouterr().err
