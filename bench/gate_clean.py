"""False failures of the gate on clean production-shaped warehouses: every check of every build.

For each seed, a clean synthetic warehouse of the full catalog (667 tables a pair) is built for
the chosen pairs, the shared tables are checkpointed once, and each pair is materialized as its
job does (checkpoints, merge, the nine gate checks, publish with its profile). For the first
seed (or those given) the warehouse then grows by a day at production's scale and each pair is
built again, judged against the profile its first build published (the drift a daily refresh
sees). Prints one line per build with any failed check and its reason; writes a CSV row per
build as it finishes, so an interrupted run keeps what it measured.

The 28-pair backfill of issue #12, three seeds, the day-later rebuild for the first:

    uv run --frozen python bench/gate_clean.py --pairs all --seeds 7,11,13 --rows 2880 \
        --out /work/measure/gate28/run

`table_coverage` and `newest_rows` judge each newest minute against the same minute of the
previous trading day, so a clean file passes whatever hour its spine ends and however short it
is (`bench/gate_hours.py` shows it at 1,500 to 12,000 rows for each hour of the day).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from bqx_assets.defs.assets import pair_checkpoints, shared_checkpoints, training_file
from bqx_assets.defs.frame_io import FrameIOManagerFactory
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import (
    CheckpointStore,
    EmbeddedWarehouseResource,
    GateConfig,
    PipelineSettings,
)

DEFAULT_OUT = Path(__file__).with_name("out") / "gate_clean"
DAY = 1440
PRODUCTION_ROWS = 177_748
"""Rows of production's training file (DOMAIN: eurusd). The synthetic null model is production's
scaled to the creation size (warm-ups, late starts and outages are shares of it), so a day of
production is DAY / PRODUCTION_ROWS of the series (0.8 %): a demo of 2,880 rows grown by 1,440
minutes grows by 50 %, which moves every warm-up-driven null share by a third, a drift the gate
rightly fails (`drift_relative`) and no daily refresh of production produces."""
FIELDS = ("seed", "stage", "pair", "checks", "failed", "failures", "published", "seconds")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Dagster's console logger at warnings: 112 builds of debug events would bury the results."""


def _resources(root: Path, warehouse: Path) -> dict[str, object]:
    return {
        "warehouse": EmbeddedWarehouseResource(path=str(warehouse)),
        "checkpoints": CheckpointStore(root=str(root / "ckpt"), cache_dir=str(root / "cache")),
        # The local deployment's gate: production defaults, rows bounded for the demo size.
        "settings": PipelineSettings(workdir=str(root / "work"), gate=GateConfig(min_rows=100)),
        "training_io_manager": TrainingFileIOManager(output_root=str(root / "out")),
        "frame_io_manager": FrameIOManagerFactory(base_dir=str(root / "frames")),
    }


def _build(
    root: Path, warehouse: Path, pairs: list[str], record: Callable[[dict[str, object]], None]
) -> None:
    resources = _resources(root, warehouse)
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    shared = dg.materialize(
        [shared_checkpoints], resources=resources, instance=instance, run_config=QUIET
    )
    assert shared.success
    print(f"  shared checkpoints in {time.perf_counter() - started:.0f} s", flush=True)
    for pair in pairs:
        started = time.perf_counter()
        result = dg.materialize(
            [pair_checkpoints, training_file],
            partition_key=pair,
            resources=resources,
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
        )
        evaluations = result.get_asset_check_evaluations()
        failed = {e.check_name: e.description for e in evaluations if not e.passed}
        seconds = round(time.perf_counter() - started, 1)
        record(
            {
                "pair": pair,
                "checks": len(evaluations),
                "failed": len(failed),
                "failures": "; ".join(f"{k}: {v}" for k, v in failed.items()),
                "published": (root / "out" / f"training_{pair}.parquet").exists(),
                "seconds": seconds,
            }
        )
        print(
            f"  {pair}: {len(evaluations)} checks, {len(failed)} failed, {seconds:.0f} s"
            + ("" if result.success else " (run failed)")
            + "".join(f"\n    {k}: {v}" for k, v in failed.items()),
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rows", type=int, default=5_000, help="minutes (demo size: 5,000)")
    parser.add_argument("--seeds", default="7,11,13", help="warehouse seeds, comma-separated")
    parser.add_argument(
        "--pairs", default="eurusd,usdjpy,gbpchf", help="comma-separated pairs, or `all` (28)"
    )
    parser.add_argument(
        "--rebuild-seeds",
        default=None,
        help="seeds whose warehouse grows by a day and is built again (default: the first)",
    )
    parser.add_argument(
        "--append",
        type=int,
        default=None,
        help="minutes the day later adds (default: a production day scaled to --rows)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each seed's files")
    args = parser.parse_args()
    catalog = Catalog.load()
    pairs = list(catalog.pairs) if args.pairs == "all" else args.pairs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    rebuild = (
        {seeds[0]}
        if args.rebuild_seeds is None
        else {int(s) for s in args.rebuild_seeds.split(",") if s}
    )
    append = args.append or max(1, round(args.rows * DAY / PRODUCTION_ROWS))
    print(
        f"{len(pairs)} pairs, {args.rows} rows, seeds {seeds}, a day later (+{append} minutes) "
        f"for seeds {sorted(rebuild)}",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, object]] = []
    results = args.out / "results.csv"
    with open(results, "w", newline="") as f:
        csv.DictWriter(f, fieldnames=FIELDS).writeheader()
    begun = time.perf_counter()
    for seed in seeds:
        root = args.out / f"seed{seed}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        warehouse = root / "warehouse.duckdb"
        started = time.perf_counter()
        create_warehouse(warehouse, catalog, pairs=pairs, rows=args.rows, seed=seed).close()
        print(f"seed {seed}: warehouse in {time.perf_counter() - started:.0f} s", flush=True)
        stages = [("first build", 0)] + ([("a day later", append)] if seed in rebuild else [])
        for stage, minutes in stages:
            if minutes:
                started = time.perf_counter()
                wh = EmbeddedWarehouse(warehouse, read_only=False)
                wh.append(minutes)
                wh.close()
                print(f"seed {seed}: +{minutes} minutes in {time.perf_counter() - started:.0f} s")
            print(f"seed {seed}, {stage}:", flush=True)

            def record(row: dict[str, object], seed: int = seed, stage: str = stage) -> None:
                records.append({"seed": seed, "stage": stage, **row})
                with open(results, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=FIELDS).writerow(records[-1])

            _build(root, warehouse, pairs, record)
        done = [r for r in records if r["seed"] == seed]
        print(
            f"seed {seed}: {len(done)} builds, {sum(int(r['checks']) for r in done)} check "
            f"evaluations, {sum(int(r['failed']) for r in done)} failed",
            flush=True,
        )
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    evaluations = sum(int(r["checks"]) for r in records)  # type: ignore[call-overload]
    failures = sum(int(r["failed"]) for r in records)  # type: ignore[call-overload]
    failed_builds = sum(int(r["failed"]) > 0 for r in records)  # type: ignore[call-overload]
    seconds = [float(r["seconds"]) for r in records]  # type: ignore[arg-type]
    print(
        f"\n{len(records)} builds, {evaluations} check evaluations, {failures} false failures "
        f"in {failed_builds} builds (quarantined; the pair's published file stays the last one "
        f"that passed); {time.perf_counter() - begun:.0f} s in all, a build "
        f"{sum(seconds) / max(len(seconds), 1):.0f} s on average ({min(seconds, default=0):.0f}"
        f"-{max(seconds, default=0):.0f} s)"
    )
    print(f"results: {results}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
