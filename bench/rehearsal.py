"""The production instance rehearsed at a chosen size: a backfill's wall time, each run's wall
time and peak memory, the crashes' figures, and `bqx costs` for the pairs."""

# Runs the rehearsal (bqx_assets_tests/e2e/test_production.py: deploy/dagster.prod.yaml over a
# PostgreSQL server of its own on 127.0.0.1, fake-gcs-server for the checkpoint and output roots
# and the compute-log bucket, the real webserver and daemon, each run its own process in a memory
# cgroup of the job's size) with --pairs and --rows in place of CI's 3 pairs, then prints the
# figures it recorded (test-artifacts/rehearsal-figures.json) and appends one row per run to
# bench/out/rehearsal.csv. Needs scripts/install_postgres.sh. The whole 28 pairs:
#
#   uv run --frozen python bench/rehearsal.py --pairs all --rows 300
#   uv run --frozen python bench/rehearsal.py --pairs all --rows 300 --backfill-only
#
# --bigquery runs the production warehouse path instead (test_production_bigquery.py: two pairs
# of a cut catalog read from the BigQuery emulator by the production resources) and prints its
# figures.

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "test-artifacts" / "rehearsal-figures.json"
TEST = "bqx_assets_tests/e2e/test_production.py"
BIGQUERY_FIGURES = REPO / "test-artifacts" / "rehearsal-bigquery-figures.json"
BIGQUERY_TEST = "bqx_assets_tests/e2e/test_production_bigquery.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", default="all", help="comma-separated pairs, or 'all' (28)")
    parser.add_argument("--rows", type=int, default=300, help="minutes (rows) per pair")
    parser.add_argument(
        "--backfill-only",
        action="store_true",
        help="leave out the crash, memory and source-change runs",
    )
    parser.add_argument(
        "--bigquery",
        action="store_true",
        help="the runs read the BigQuery emulator (two pairs, a cut catalog; --pairs and --rows"
        " do not apply)",
    )
    args = parser.parse_args(argv)
    if args.bigquery:
        return _bigquery()

    FIGURES.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", TEST, "-m", "slow", "-q", "-p", "no:cacheprovider",
               "-s"]  # fmt: skip
    if args.backfill_only:
        command += [
            "-k",
            "not killed and not memory_limit and not daemon and not postgres and not source",
        ]
    env = {**os.environ, "BQX_REHEARSAL_PAIRS": args.pairs, "BQX_REHEARSAL_ROWS": str(args.rows)}
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, check=False)
    total = time.monotonic() - started
    if not FIGURES.exists():
        print(f"no figures: the rehearsal failed before the backfill ended ({done.returncode})")
        return done.returncode or 1
    figures = json.loads(FIGURES.read_text())
    runs = figures.get("runs", [])
    print(f"\n{'pair':8} {'wall s':>8} {'cgroup MiB':>11} {'step RSS MiB':>13} {'local MiB':>10}")
    for row in runs:
        print(
            f"{row['pair']:8} {row['seconds']:>8.1f} "
            f"{row.get('cgroup_peak_mib', float('nan')):>11.1f} "
            f"{row.get('step_peak_rss_mib', float('nan')):>13.1f} "
            f"{row.get('step_peak_local_mib', float('nan')):>10.1f}"
        )
    costs = figures.pop("costs_report", "")
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=2, default=str))
    print(costs)
    print(f"rehearsal: {total:.0f} s in all, pytest exit {done.returncode}")
    out = REPO / "bench" / "out" / "rehearsal.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    fields = ["when", "pairs", "rows", "backfill_seconds", "pair", "seconds", "cgroup_peak_mib",
              "step_peak_rss_mib", "step_peak_local_mib", "step_footprint_mib"]  # fmt: skip
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        when = time.strftime("%Y-%m-%dT%H:%M:%S")
        for row in runs:
            writer.writerow(
                {"when": when, "pairs": len(runs), "rows": args.rows,
                 "backfill_seconds": figures.get("backfill_seconds"), **row}
            )  # fmt: skip
    return done.returncode


def _bigquery() -> int:
    BIGQUERY_FIGURES.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", BIGQUERY_TEST, "-m", "slow", "-q",
               "-p", "no:cacheprovider"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, check=False)
    if not BIGQUERY_FIGURES.exists():
        print(f"no figures: the rehearsal failed before the backfill ended ({done.returncode})")
        return done.returncode or 1
    print(BIGQUERY_FIGURES.read_text())
    print(f"rehearsal: {time.monotonic() - started:.0f} s in all, pytest exit {done.returncode}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
