"""The gate on clean builds whose spines end at every hour of the day: pass/fail per check.

For each size (minutes of the spine) and each hour of the UTC day, a clean synthetic warehouse
of one pair is created whose spine's last minute falls in that hour, the pair's checkpoints are
refreshed, its file merged, gate-checked and published, as `training_file` does (the core, no
Dagster). Prints a line per build with any failed check and its reason, writes a CSV row per
build as it finishes, and ends with a table: per check, the builds that passed and failed at
each size. A clean build should pass every check whatever hour its data ends (issue 29).

    uv run --frozen python bench/gate_hours.py --rows 1500,3000,5000,12000
    uv run --frozen python bench/gate_hours.py --catalog mini --rows 1500 --hours 0,7,21
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from bqx_assets.core.build import build_training_file
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_checkpoints
from bqx_assets.core.checkpoints.window import TrainingWindow
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.publish import publish_training_file
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse.embedded import (
    DEFAULT_START,
    EmbeddedWarehouse,
    create_warehouse,
)
from bqx_assets.core.warehouse.synthetic import trading_minutes

DEFAULT_OUT = Path(__file__).with_name("out") / "gate_hours"
PAIR = "eurusd"
GATE = Thresholds(min_rows=100)
"""The local deployment's gate: production's thresholds, rows bounded for demo sizes."""
FIELDS = ("rows", "hour", "start", "last_key", "failed", "failures", "published", "seconds")
MINI_TABLES = (
    "agg", "div_bqx", "base_bqx", "base_idx", "lag_{p}_45", "regime_{p}_45",
    "corr_etf_idx_{p}_spy", "tmp",
)  # fmt: skip
"""The mini catalog of the tests (every family and scope) for `--catalog mini`: these pair
tables, then a cov, tri, mkt, var and csi table."""


def start_for(rows: int, hour: int) -> datetime:
    """The first start, on the hour from DEFAULT_START (a Monday) on, whose spine of `rows`
    trading minutes ends in `hour` (UTC)."""
    for offset in range(14 * 24):
        start = DEFAULT_START + timedelta(hours=offset)
        last = trading_minutes(start, rows)[-1].astype("datetime64[m]").astype("int64")
        if (int(last) % 1440) // 60 == hour:
            return start
    raise ValueError(f"no spine of {rows} minutes ends at {hour}:00 within two weeks")


def mini_catalog(full: Catalog) -> Catalog:
    keep = [t.format(p=PAIR) if "{p}" in t else f"{t}_{PAIR}" for t in MINI_TABLES]
    keep += ["cov_agg_eurusd_gbpusd", "tri_agg_bqx_eur_usd_gbp", "mkt_sentiment"]
    keep += ["var_agg_bqx_usd", "csi_agg_eur"]
    subset = full.subset([PAIR])
    tables = {name: t for name, t in subset.tables.items() if name in keep}
    return Catalog(
        subset.project, subset.features_dataset, subset.targets_dataset, subset.pairs, tables,
        subset.targets, subset.excluded,
    )  # fmt: skip


def build(root: Path, catalog: Catalog, rows: int, hour: int) -> dict[str, object]:
    """One clean build whose spine ends at `hour`; its row of the results."""
    started = time.perf_counter()
    start = start_for(rows, hour)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    create_warehouse(root / "w.duckdb", catalog, pairs=[PAIR], rows=rows, start=start).close()
    checkpoints = LocalStorage(root / "ckpt", durable=False)
    targets = catalog.targets[PAIR]
    warehouse = EmbeddedWarehouse(root / "w.duckdb")
    try:
        refresh_checkpoints(
            warehouse, checkpoints, [*catalog.tables_for(PAIR), targets], [targets],
            TrainingWindow(), f"pair {PAIR}", workdir=root / "work",
        )  # fmt: skip
    finally:
        warehouse.close()
    output = LocalStorage(root / "out")
    built = build_training_file(checkpoints, output, catalog, PAIR, TrainingWindow(), GATE)
    result = publish_training_file(output, built.training_file)
    report = built.report
    last = trading_minutes(start, rows)[-1]
    return {
        "rows": rows,
        "hour": hour,
        "start": start.isoformat(),
        "last_key": str(last),
        "failed": ",".join(report.failed),
        "failures": "; ".join(
            f"{o.name}: {o.metadata['summary']}" for o in report.outcomes if not o.passed
        ),
        "published": result.published,
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(records: Sequence[dict[str, object]], sizes: Sequence[int]) -> str:
    """Per check, `passed/failed` builds at each size, as a markdown table."""
    lines = [
        "| check | " + " | ".join(f"{n:,} rows" for n in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for check in (*CHECK_NAMES, "all nine"):
        cells = []
        for n in sizes:
            done = [r for r in records if r["rows"] == n]
            if check == "all nine":
                failed = sum(bool(r["failed"]) for r in done)
            else:
                failed = sum(check in str(r["failed"]).split(",") for r in done)
            cells.append(f"{len(done) - failed} pass / {failed} fail")
        lines.append(f"| {check} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1500,3000,5000,12000", help="spine sizes, minutes")
    parser.add_argument("--hours", default=",".join(map(str, range(24))), help="UTC hours")
    parser.add_argument("--catalog", choices=("full", "mini"), default="full")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    full = Catalog.load()
    catalog = full.subset([PAIR]) if args.catalog == "full" else mini_catalog(full)
    sizes = [int(n) for n in args.rows.split(",")]
    hours = [int(h) for h in args.hours.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.csv"
    with open(results, "w", newline="") as f:
        csv.DictWriter(f, fieldnames=FIELDS).writeheader()
    print(
        f"{PAIR}, {len(catalog.tables_for(PAIR))} tables ({args.catalog} catalog), sizes {sizes},"
        f" hours {hours}",
        flush=True,
    )
    records: list[dict[str, object]] = []
    begun = time.perf_counter()
    for rows in sizes:
        for hour in hours:
            row = build(args.out / "work", catalog, rows, hour)
            records.append(row)
            with open(results, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
            verdict = f"FAILED {row['failed']}" if row["failed"] else "passed"
            print(
                f"  {rows:>6,} rows ending {row['last_key']}: {verdict} in {row['seconds']} s"
                + (f"\n    {row['failures']}" if row["failed"] else ""),
                flush=True,
            )
    shutil.rmtree(args.out / "work", ignore_errors=True)
    failed = sum(bool(r["failed"]) for r in records)
    print(
        f"\n{len(records)} builds, {failed} with a failed check, in "
        f"{time.perf_counter() - begun:.0f} s; results: {results}\n"
    )
    print(table(records, sizes))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
