"""The merge reading checkpoints from GCS (fake-gcs-server) by ranged reads vs from local files."""

# One invocation: generates the checkpoints once (bench/generate.py), starts fake-gcs-server on
# 127.0.0.1 (filesystem backend, so gigabytes of objects do not sit in the emulator's memory),
# uploads them, then runs each variant in a fresh process and prints one row per variant:
#
#   local       local checkpoints          -> local output file (today's local-root path)
#   gcs         checkpoints read in place  -> local output file (the read side alone)
#   gcs-stream  checkpoints read in place  -> output streamed to a temporary object, verified
#                                             (the whole gs:// path of the training_file step)
#
# `--latency-ms` adds that delay to every ranged read in the gcs variants, to see how far the
# prefetch hides a real network's latency (fake-gcs-server answers in ~1-2 ms).
# Results are appended as CSV rows to bench/out/merge_gcs.csv.

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("local", "gcs", "gcs-stream")
PREFIX = "ckpt"


def _io_counters() -> dict[str, int]:
    """This process's read syscalls and bytes read (Linux /proc/self/io)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"syscr": int(fields["syscr"]), "rchar": int(fields["rchar"])}


def _child(args: argparse.Namespace) -> int:
    """Run one variant in this process and print its figures as one JSON line."""
    import pyarrow.parquet as pq

    from bqx_assets.core.merge import InputChunk, InputTable, merge_checkpoints
    from bqx_assets.core.merge.plan import IO_THREADS
    from bqx_assets.core.metrics import peak_rss_bytes
    from bqx_assets.core.storage import LocalStorage, StoredFile
    from bqx_assets.core.storage import gcs_file as gcs_module
    from bqx_assets.core.storage.gcs import GCSStorage

    data = Path(args.dir)
    files = sorted((data / "features").glob("*.parquet"))
    spine_path = data / "targets.parquet"
    spine_columns = [n for n in pq.read_schema(spine_path).names if n.startswith("target_")]
    out = Path(args.work) / f"{args.variant}.parquet"
    out.unlink(missing_ok=True)
    if args.latency_ms:
        plain = gcs_module.GCSFile.read_range

        def slow(self: gcs_module.GCSFile, start: int, stop: int) -> bytes:
            time.sleep(args.latency_ms / 1000)
            return plain(self, start, stop)

        gcs_module.GCSFile.read_range = slow  # type: ignore[method-assign]
    before = _io_counters()
    started = time.perf_counter()
    storage = None
    metadata_requests = 0
    columns = tuple((c, c) for c in spine_columns)
    if args.variant == "local":
        spine = InputTable.of_files("targets", spine_path, columns=columns)
        tables = [InputTable.of_files(f.stem, f) for f in files]
    else:
        storage = GCSStorage(args.bucket, PREFIX)
        infos = {b.name: b for b in storage.client.list_blobs(args.bucket, prefix=f"{PREFIX}/")}
        metadata_requests += 1

        def stored(key: str) -> StoredFile:
            blob = infos[f"{PREFIX}/{key}"]
            # One stat per object, as the asset checks each against its manifest.
            return storage.open_file(key, size=int(blob.size), crc32c=blob.crc32c)

        spine = InputTable("targets", (InputChunk(stored("targets.parquet")),), columns)
        tables = [InputTable(f.stem, (InputChunk(stored(f"features/{f.name}")),)) for f in files]
        metadata_requests += 1 + len(files)
    if args.variant == "gcs-stream":
        assert storage is not None
        report = merge_checkpoints(spine, tables, storage.stage("training.parquet"))
        seconds = time.perf_counter() - started
        storage.discard(report.staged)
    else:
        root = LocalStorage(out.parent, durable=False)
        report = merge_checkpoints(spine, tables, root.stage(out.name))
        root.publish_staged(report.staged, out.name)
        seconds = time.perf_counter() - started
    after = _io_counters()
    own = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "variant": args.variant,
        "tables": len(files),
        "rows": report.rows,
        "columns": report.columns,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(own.ru_utime + own.ru_stime, 2),
        "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
        "output_bytes": report.bytes_written,
        "latency_ms": args.latency_ms if args.variant != "local" else 0,
        "ranged_reads": storage.reads.requests if storage else 0,
        "metadata_requests": metadata_requests,
        "bytes_read": storage.reads.bytes if storage else after["rchar"] - before["rchar"],
        "read_syscalls": after["syscr"] - before["syscr"],
        "local_output_bytes": out.stat().st_size if out.exists() else 0,
        "io_threads": IO_THREADS,
    }
    out.unlink(missing_ok=True)
    print(json.dumps(result), flush=True)
    return 0


def _upload(directory: Path, bucket: str) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from bqx_assets.core.storage.gcs import GCSStorage

    storage = GCSStorage(bucket, PREFIX)
    files = [directory / "targets.parquet", *sorted((directory / "features").glob("*.parquet"))]

    def put(path: Path) -> int:
        key = path.relative_to(directory).as_posix()
        return storage.put_file(path, key).size

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(put, files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=668, help="files in all, targets included")
    parser.add_argument("--rows", type=int, default=16_000)
    parser.add_argument("--dir", default=None, help="default: bench/out/<tables>x<rows>")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    # internal: one variant in a child process
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory = Path(args.dir or REPO / "bench" / "out" / f"{args.tables}x{args.rows}")
    args.dir = str(directory)
    if args.variant:
        return _child(args)

    from bench.generate import generate
    from emulators.gcs import run_gcs_emulator

    if not (directory / "targets.parquet").exists():
        print(f"generating {args.tables} x {args.rows} in {directory}", flush=True)
        generate(directory, args.tables, args.rows, workers=2)
    work = REPO / "bench" / "out" / "merge_gcs"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    with run_gcs_emulator(work / "emulator", backend="filesystem") as emulator:
        bucket = emulator.create_bucket()
        started = time.perf_counter()
        uploaded = _upload_in_env(directory, bucket, emulator.env())
        print(f"uploaded {uploaded / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")
        for variant in args.variants.split(","):
            command = [
                sys.executable, __file__, "--variant", variant, "--bucket", bucket,
                "--work", str(work), "--dir", str(directory), "--latency-ms", str(args.latency_ms),
            ]  # fmt: skip
            done = subprocess.run(
                command, env=emulator.env(), capture_output=True, text=True, check=False
            )
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = list(rows[0])
    print(" ".join(f"{h:>14}" for h in header))
    for row in rows:
        print(" ".join(f"{row[h]!s:>14}" for h in header))
    results = REPO / "bench" / "out" / "merge_gcs.csv"
    new = not results.exists()
    with open(results, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["when", *header])
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), **row})
    return 0


def _upload_in_env(directory: Path, bucket: str, env: dict[str, str]) -> int:
    """Upload with the emulator's environment in this process (the client reads it)."""
    saved = {k: os.environ.get(k) for k in env if k.startswith(("STORAGE_", "NO_GCE"))}
    os.environ.update({k: env[k] for k in saved})
    try:
        return _upload(directory, bucket)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


if __name__ == "__main__":
    sys.exit(main())
