"""On the realistic synthetic data, in one run: extraction from the embedded warehouse against
DuckDB's own `COPY ... TO parquet` of the same tables, then the naive Polars join vs the
decode+encode floor vs `merge_checkpoints`, each in a fresh process.

    uv run python bench/run_merge_bench.py --tables 668 --rows 44437
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
GIB = 1024**3


def measure(name: str, command: list[str], cap_bytes: int, logs: Path) -> dict:
    """Run `command` in a fresh process; wall time, and peak RSS from the kernel (wait4). A
    watchdog kills it when its RSS passes `cap_bytes`, so that a shape that cannot fit is
    reported as such instead of taking the machine down."""
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT)
    killed = threading.Event()
    finished = threading.Event()
    seen = [0]

    def watch() -> None:
        proc = psutil.Process(child.pid)
        while not finished.is_set():
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                return
            seen[0] = max(seen[0], rss)
            if rss > cap_bytes:
                killed.set()
                child.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    finished.set()
    watcher.join(1)
    code = os.waitstatus_to_exitcode(status)
    peak = max(usage.ru_maxrss * 1024, seen[0])  # Linux reports KiB
    cpu = usage.ru_utime + usage.ru_stime
    result: dict = {
        "name": name,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "rc": code,
        "peak_rss_bytes": peak,
    }
    lines = [line for line in out_path.read_text().splitlines() if line.startswith("{")]
    errors = err_path.read_text().strip().splitlines()
    if killed.is_set():
        result["status"] = f"did not fit: killed at {seen[0] / GIB:.1f} GiB RSS"
        result["status"] += f" (cap {cap_bytes / GIB:.0f} GiB)"
    elif code != 0 or not lines:
        result["status"] = f"failed (exit {code}): {errors[-1] if errors else ''}"
    else:
        report = json.loads(lines[-1])
        result["status"] = "ok"
        result["report"] = report
        if "columns" in report:
            result["rows"], result["columns"] = report["rows"], report["columns"]
    return result


def warm(folder: Path) -> None:
    """Read every input once so the runs compare from the same (warm) page cache; inputs larger
    than half the memory cannot stay cached, so every run reads them from disk."""
    files = sorted(folder.rglob("*.parquet"))
    if sum(p.stat().st_size for p in files) > psutil.virtual_memory().total / 2:
        print("inputs larger than half the memory: not warming the page cache")
        return
    for path in files:
        with open(path, "rb") as f:
            while f.read(16 * 1024 * 1024):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=668, help="files in all, targets included")
    parser.add_argument("--rows", type=int, default=44_000)
    parser.add_argument("--dir", type=Path, help="data folder (default bench/out/<tables>x<rows>)")
    parser.add_argument("--cap-gib", type=float, default=14.0, help="RSS at which a run is killed")
    parser.add_argument("--only", nargs="*", choices=["naive", "floor", "ours"])
    parser.add_argument("--keep", action="store_true", help="keep ours.parquet to inspect it")
    parser.add_argument(
        "--no-extract", action="store_true", help="skip the extraction against COPY comparison"
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    data = args.dir or BENCH / "out" / f"{args.tables}x{args.rows}"
    python = sys.executable
    sys.path.insert(0, str(BENCH))
    from generate import DATA_VERSION

    shape_file = data / "shape.json"
    if not shape_file.exists() or json.loads(shape_file.read_text()).get("data") != DATA_VERSION:
        subprocess.run(
            [python, str(BENCH / "generate.py"), "--tables", str(args.tables), "--rows",
             str(args.rows), "--dir", str(data)],
            check=True,
        )  # fmt: skip
    shape = json.loads((data / "shape.json").read_text())
    print(f"data {data}: {json.dumps(shape)}", flush=True)
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.1f} GiB",
        flush=True,
    )
    cap = int(args.cap_gib * GIB)
    results = {}
    if not args.no_extract:
        command = [
            python, str(BENCH / "extract_throughput.py"), "--rows", str(args.rows),
            "--tables", str(args.tables), "--warehouse", str(data / "warehouse.duckdb"),
        ]  # fmt: skip
        results["extraction"] = r = measure("extraction", command, cap, data)
        report = r.get("report", {})
        print(
            f"extraction wall {r['wall_s']:7.1f} s (warehouse build included)  peak RSS "
            f"{r['peak_rss_bytes'] / GIB:6.2f} GiB  {r['status']}: ours "
            f"{report.get('extraction_mb_per_s')} MB/s, DuckDB COPY "
            f"{report.get('native_export_mb_per_s')} MB/s (ratio {report.get('ratio')}) on "
            f"{report.get('logical_mb')} MB of {report.get('tables')} tables"
        )
    warm(data)
    runs = {
        "naive": [python, str(BENCH / "naive.py"), "--dir", str(data),
                  "--out", str(data / "naive.parquet")],
        "floor": [python, str(BENCH / "floor.py"), "--dir", str(data),
                  "--out", str(data / "floor.parquet")],
        "ours": [python, "-m", "bqx_assets.cli", "merge",
                 "--targets", str(data / "targets.parquet"), "--features", str(data / "features"),
                 "--out", str(data / "ours.parquet")],
    }  # fmt: skip
    for name, command in runs.items():
        if args.only and name not in args.only:
            continue
        results[name] = r = measure(name, command, cap, data)
        rss = r["peak_rss_bytes"] / GIB
        print(
            f"{name:6s} wall {r['wall_s']:7.1f} s  cpu {r['cpu_s']:7.1f} s  "
            f"peak RSS {rss:6.2f} GiB  {r['status']}"
        )
        if not (args.keep and name == "ours"):
            (data / f"{name}.parquet").unlink(missing_ok=True)
    ours = results.get("ours")
    for base in ("naive", "floor"):
        other = results.get(base)
        if ours and other and ours["status"] == "ok" and other["status"] == "ok":
            wall = ours["wall_s"] / other["wall_s"]
            cpu = ours["cpu_s"] / other["cpu_s"]
            print(f"ours/{base}: {wall:.2f}x wall, {cpu:.2f}x cpu")
        elif ours and other:
            print(f"ours/{base}: n/a ({base} {other['status']})")
    (data / "bench.json").write_text(json.dumps({"shape": shape, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
