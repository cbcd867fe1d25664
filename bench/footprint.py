"""Each step's footprint (peak RSS + peak local bytes) with both roots on fake-gcs-server."""

# One invocation per row count: creates the embedded warehouse for one pair (reused when it
# already has those rows), starts fake-gcs-server on 127.0.0.1 (filesystem backend: the objects
# live in the server's folder, which is not the step's), then runs shared_checkpoints,
# pair_checkpoints and training_file through Dagster, each in a fresh process so that its peak
# RSS is its own, with TMPDIR, the work folder and the caches in a private folder the step
# measures. Prints one row per step and appends them to bench/out/footprint.csv.
#
#   uv run --frozen python bench/footprint.py --rows 2000
#   uv run --frozen python bench/footprint.py --rows 16000

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = ("shared_checkpoints", "pair_checkpoints", "training_file")


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(args: argparse.Namespace) -> int:
    import dagster as dg

    from bqx_assets.core.costs import METADATA_KEYS
    from bqx_assets.core.metrics import FOOTPRINT_KEYS
    from bqx_assets.defs import assets
    from bqx_assets.defs.io_managers import TrainingFileIOManager
    from bqx_assets.defs.resources import (
        CheckpointStore,
        EmbeddedWarehouseResource,
        GateConfig,
        PipelineSettings,
    )

    local = Path(args.local)
    resources = {
        "warehouse": EmbeddedWarehouseResource(path=args.warehouse),
        "checkpoints": CheckpointStore(
            root=f"gs://{args.staging}/checkpoints", cache_dir=str(local / "cache" / "checkpoints")
        ),
        "settings": PipelineSettings(
            workdir=str(local / "work"), gate=GateConfig(min_rows=100, max_rows=10_000_000)
        ),
        "training_io_manager": TrainingFileIOManager(
            output_root=f"gs://{args.output}", cache_dir=str(local / "cache" / "output")
        ),
    }
    step = getattr(assets, args.step)
    partition = None if args.step == "shared_checkpoints" else args.pair
    result = dg.materialize(
        [step], resources=resources, partition_key=partition, raise_on_error=False
    )
    events = result.asset_materializations_for_node(args.step)
    if not events:
        print(json.dumps({"step": args.step, "error": "no materialization"}), flush=True)
        return 1
    meta = {k: v.value for k, v in events[0].metadata.items()}
    keys = [*METADATA_KEYS, *FOOTPRINT_KEYS]
    row = {"step": args.step, **{k: meta.get(k) for k in keys}}
    row["status"] = meta.get("status", "")  # the training file's: published or quarantined
    row["bytes"] = meta.get("bytes") or meta.get("megabytes")
    # ru_maxrss (step_peak_rss_bytes) survives fork+exec: Linux keeps the parent's high-water
    # mark. VmHWM is this process's own peak, so the driver below stays small and both are kept.
    row["vm_hwm_bytes"] = _vm_hwm_bytes()
    row["children_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps(row), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--pair", default="eurusd")
    parser.add_argument("--work", default=None, help="default: bench/out/footprint/<rows>")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    parser.add_argument("--staging", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--local", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return _child(args)

    from bqx_assets.core.warehouse.embedded import warehouse_params
    from emulators.gcs import run_gcs_emulator

    work = Path(args.work or REPO / "bench" / "out" / "footprint" / str(args.rows))
    work.mkdir(parents=True, exist_ok=True)
    warehouse = work / "warehouse.duckdb"
    params = warehouse_params(str(warehouse)) if warehouse.exists() else None
    if not params or int(params["rows"]) != args.rows:
        print(f"creating the warehouse: {args.rows} rows for {args.pair}", flush=True)
        warehouse.unlink(missing_ok=True)
        # In a process of its own: the steps' processes are started from this one and would
        # inherit its memory high-water mark.
        subprocess.run(
            [
                sys.executable, "-c",
                "import sys; from bqx_assets.core.catalog import Catalog; "
                "from bqx_assets.core.warehouse.embedded import create_warehouse; "
                "create_warehouse(sys.argv[1], Catalog.load(), pairs=[sys.argv[2]], "
                "rows=int(sys.argv[3])).close()",
                str(warehouse), args.pair, str(args.rows),
            ],
            check=True,
        )  # fmt: skip
    local = work / "local"
    shutil.rmtree(local, ignore_errors=True)
    (local / "tmp").mkdir(parents=True)
    shutil.rmtree(work / "emulator", ignore_errors=True)
    rows = []
    with run_gcs_emulator(work / "emulator", backend="filesystem") as emulator:
        staging, output = emulator.create_bucket(), emulator.create_bucket()
        env = {**emulator.env(), "TMPDIR": str(local / "tmp")}
        for step in STEPS:
            started = time.perf_counter()
            command = [
                sys.executable, __file__, "--rows", str(args.rows), "--pair", args.pair,
                "--step", step, "--warehouse", str(warehouse), "--staging", staging,
                "--output", output, "--local", str(local),
            ]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode:
                print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
                return done.returncode
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["rows"] = args.rows
            row["process_seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        left = [p for p in local.rglob("*") if p.is_file()]
    print(f"\nfiles left under {local}: {len(left)}")
    print(
        f"{'step':20} {'rows':>7} {'RSS MiB':>9} {'VmHWM MiB':>10} {'local MiB':>10} "
        f"{'sum MiB':>9} {'wall s':>8}"
    )
    for r in rows:
        print(
            f"{r['step']:20} {r['rows']:>7} {r['step_peak_rss_bytes'] / 2**20:>9.1f} "
            f"{r['vm_hwm_bytes'] / 2**20:>10.1f} {r['step_peak_local_bytes'] / 2**20:>10.1f} "
            f"{r['step_footprint_bytes'] / 2**20:>9.1f} {r['step_wall_seconds']:>8.1f}"
        )
    results = REPO / "bench" / "out" / "footprint.csv"
    results.parent.mkdir(parents=True, exist_ok=True)
    new = not results.exists()
    with open(results, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["when", *rows[0]], extrasaction="ignore")
        if new:
            writer.writeheader()
        for r in rows:
            writer.writerow({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), **r})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_GCE_CHECK", "True")
    sys.exit(main())
