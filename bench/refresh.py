"""Refresh by date partition against a from-scratch build, on the embedded warehouse, in one run.

One pair (its 667 feature tables and its targets table): build its chunked checkpoints and
training file from scratch, append one trading day (1,440 minutes) to the warehouse, refresh
(only chunks whose days changed or are new are read), merge again copying the unchanged row
groups from the first file (as the training_file asset copies them from the published one);
then build the same window from scratch into another root and check that both training files
are equal column by column and byte for byte. Prints one JSON line (also appended to
bench/out/refresh/results.jsonl): bytes read, tables and chunks extracted, wall and CPU times of
the refresh vs the full build (the naive refresh: everything again), and the floor of any merge
that writes a new file, a plain copy of the training file, measured in the same run.

    uv run --frozen python bench/refresh.py --rows 5000
    uv run --frozen python bench/refresh.py --rows 44437
    uv run --frozen python bench/refresh.py --rows 177748 --no-scratch   # production length

The refresh runs with a new storage object, as a new run's process would: every reused chunk is
verified against its manifest's size and CRC32C (on GCS the object's metadata; on a local root
the checksum recorded with the file, bound to its size and mtime: see docs/ARCHITECTURE.md).
`--no-scratch` leaves out the from-scratch rebuild after the append and the equality check (at
production length both files and both chunk sets need ~40 GB of disk; equality is checked at the
smaller sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import ChunkedCheckpoint, refresh_tables
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.window import ALL_TIME, CHUNK_GRAINS, DEFAULT_GRAIN, ChunkGrain
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.merge import merge_checkpoints, pair_inputs
from bqx_assets.core.metrics import peak_rss_bytes
from bqx_assets.core.storage import LocalStorage, Storage, StoredFile, file_crc32c, open_storage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse, warehouse_params

DAY_MINUTES = 1440
COMPARE_COLUMNS = 128
"""Columns compared at a time: bounds the comparison's memory (512 at 44K rows took the
benchmark process to 2.3 GiB; the builds and merges before it peak at 1.1 GiB)."""


def _build(
    wh: EmbeddedWarehouse,
    catalog: Catalog,
    pair: str,
    storage: LocalStorage,
    out: tuple[LocalStorage, str],
    *,
    grain: ChunkGrain,
    threads: int,
    work: Path,
    merge: bool = True,
    previous: StoredFile | None = None,
) -> tuple[list[ChunkedCheckpoint], float, float, float, dict[str, float]]:
    """Refresh the pair's chunks, then merge into `out` (a local root and a key), copying
    unchanged row groups from `previous`: (checkpoints, extraction s, merge s, extraction CPU s,
    the merge's figures)."""
    targets = catalog.targets[pair]
    sources: list[Source] = [targets, *catalog.tables_for(pair)]
    started, cpu = time.perf_counter(), time.process_time()
    done = refresh_tables(wh, sources, storage, grain=grain, threads=threads, workdir=work)
    extracted = time.perf_counter() - started
    # CPU seconds of this process: steadier than wall time on a machine shared with other jobs.
    cpu = time.process_time() - cpu
    print(f"extraction: {extracted:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    if not merge:
        return done, extracted, 0.0, cpu, {}
    started, merge_cpu = time.perf_counter(), time.process_time()
    inputs = pair_inputs(storage, catalog, pair, ALL_TIME)
    root, key = out
    report = merge_checkpoints(inputs.spine, inputs.tables, root.stage(key), previous=previous)
    root.publish_staged(report.staged, key)
    merged = time.perf_counter() - started
    figures = {
        "merge_cpu_s": round(time.process_time() - merge_cpu, 1),
        "row_groups": report.row_groups,
        "row_groups_reused": report.row_groups_reused,
        "bytes_reused": report.bytes_reused,
    }
    print(f"merge: {merged:.1f} s wall; {figures}", flush=True)
    return done, extracted, merged, cpu, figures


def _gcs_merge(
    storage: LocalStorage, catalog: Catalog, pair: str, root: Storage, refresh: bool
) -> dict[str, float | int]:
    """The pair's merge streamed to a gs:// output root and published there, as the
    training_file step does (a refresh copies from the published object): its wall time, and
    the bytes it read of the previous object and sent."""
    key = training_file_key(pair)
    previous = root.find_file(key) if refresh else None
    before = root.reads.bytes
    started = time.perf_counter()
    inputs = pair_inputs(storage, catalog, pair, ALL_TIME)
    upload = root.stage(key)
    report = merge_checkpoints(inputs.spine, inputs.tables, upload, previous=previous)
    published = root.publish_staged(report.staged, key)
    root.discard(report.staged)
    seconds = time.perf_counter() - started
    figures = {
        "merge_s": round(seconds, 2),
        "row_groups_reused": report.row_groups_reused,
        "bytes_sent": getattr(upload, "sent", -1),
        # The previous object's row groups read (a copy that could not be composed) and the
        # staged object's footer and keys read back to verify it.
        "bytes_read_back": root.reads.bytes - before,
        "crc32c": published.crc32c,
    }
    print(f"gcs {'refresh' if refresh else 'full'} merge: {figures}", flush=True)
    return figures


def _summary(done: Sequence[ChunkedCheckpoint]) -> dict[str, int]:
    return {
        "bytes_read": sum(c.bytes_read for c in done),
        "tables_extracted": sum(1 for c in done if c.count("extracted")),
        "chunks_extracted": sum(c.count("extracted") for c in done),
        "chunks_reused": sum(c.count("reused") for c in done),
        "chunks_compacted": sum(c.count("compacted") for c in done),
        "chunk_files": sum(len(c.chunks) for c in done),
        "checkpoint_bytes": sum(c.bytes for c in done),
    }


def _same_file(a: Path, b: Path) -> bool:
    """Equal column by column (names, types, values, nulls), a slice of columns at a time."""
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if fa.schema_arrow.names != fb.schema_arrow.names:
        return False
    names = fa.schema_arrow.names
    for i in range(0, len(names), COMPARE_COLUMNS):
        cols = names[i : i + COMPARE_COLUMNS]
        ta: pa.Table = fa.read(columns=cols)
        tb: pa.Table = fb.read(columns=cols)
        if not all(ta.column(c).equals(tb.column(c)) for c in cols):
            return False
    return True


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while block := fa.read(1 << 24):
            if block != fb.read(1 << 24):
                return False
    return True


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts; "unknown" elsewhere): on
    XFS or btrfs a copy of unchanged row groups shares extents, on ext4 it writes them."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="minutes before the append")
    parser.add_argument("--pair", default="eurusd")
    parser.add_argument("--grain", choices=CHUNK_GRAINS, default=DEFAULT_GRAIN)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--append", type=int, default=DAY_MINUTES, help="minutes appended")
    parser.add_argument("--out", default="bench/out/refresh")
    parser.add_argument(
        "--no-scratch", action="store_true", help="skip the from-scratch rebuild and equality"
    )
    parser.add_argument(
        "--no-merge", action="store_true", help="extraction only (implies --no-scratch)"
    )
    parser.add_argument(
        "--gcs-output",
        action="store_true",
        help="also merge into a gs:// output root on fake-gcs-server (127.0.0.1), full build "
        "and refresh, as production's training_file step does",
    )
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        gcs_root = _gcs_root(stack, Path(args.out)) if args.gcs_output else None
        _run(args, gcs_root)


def _gcs_root(stack: contextlib.ExitStack, out: Path) -> Storage:
    """A gs:// root in a bucket of fake-gcs-server on 127.0.0.1 (objects on disk, not in its
    memory), stopped when the benchmark ends."""
    from emulators.gcs import run_gcs_emulator

    emulator = stack.enter_context(
        run_gcs_emulator(Path(stack.enter_context(tempfile.TemporaryDirectory(dir=out))),
                         backend="filesystem")
    )  # fmt: skip
    os.environ.update({"STORAGE_EMULATOR_HOST": emulator.endpoint, "NO_GCE_CHECK": "True"})
    return open_storage(f"gs://{emulator.create_bucket()}/output")


def _run(args: argparse.Namespace, gcs_root: Storage | None) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.load()
    base = out / f"warehouse-{args.pair}-{args.rows}.duckdb"
    params = warehouse_params(base)
    if not params or int(params["rows"]) != args.rows or args.pair not in params["pairs"]:
        print(f"creating {base} ({args.rows} rows)", flush=True)
        create_warehouse(base, catalog, pairs=[args.pair], rows=args.rows).close()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_path = Path(tmp)
        path = tmp_path / "warehouse.duckdb"
        shutil.copyfile(base, path)
        # Builds read through a read-only connection, as the assets' steps do (its own DuckDB
        # memory cap); the append opens the file for writing in between.
        wh = EmbeddedWarehouse(path)
        work = tmp_path / "work"
        kept = LocalStorage(tmp_path / "kept", durable=False)
        scratch = LocalStorage(tmp_path / "scratch", durable=False)
        kw = {"grain": args.grain, "threads": args.threads, "work": work,
              "merge": not args.no_merge}  # fmt: skip

        print("full build", flush=True)
        # Merged into a local output root and published there, as the training_file step does:
        # its checksum is recorded with it, so the refresh copies its unchanged row groups
        # unread.
        output = LocalStorage(tmp_path / "output", durable=False)
        key = training_file_key(args.pair)
        full, full_extract, full_merge, full_cpu, full_fig = _build(
            wh, catalog, args.pair, kept, (output, key), **kw
        )
        copy_floor = None
        if not args.no_merge:
            # The floor of any merge that writes a new file: copying the full build's file.
            started = time.perf_counter()
            shutil.copyfile(output.root / key, tmp_path / "copy.parquet")
            copy_floor = time.perf_counter() - started
            (tmp_path / "copy.parquet").unlink()
            print(f"copy of the training file (floor): {copy_floor:.1f} s", flush=True)
        gcs_full = gcs_refresh = None
        if gcs_root is not None and not args.no_merge:
            gcs_full = _gcs_merge(kept, catalog, args.pair, gcs_root, refresh=False)
        print(f"append {args.append} minutes", flush=True)
        started = time.perf_counter()
        wh.close()
        writer = EmbeddedWarehouse(path, read_only=False)
        writer.append(args.append)
        writer.close()
        wh = EmbeddedWarehouse(path)
        print(f"appended in {time.perf_counter() - started:.1f} s", flush=True)
        previous = output.find_file(key)
        full_file = output.root / key
        full_size = full_file.stat().st_size if full_file.exists() else None
        print("refresh", flush=True)
        # A new storage object: nothing verified by the full build is remembered. The merge
        # copies the row groups whose inputs did not change from the full build's file, as the
        # training_file asset does from the published one.
        kept = LocalStorage(tmp_path / "kept", durable=False)
        local = LocalStorage(tmp_path, durable=False)
        refreshed, refresh_extract, refresh_merge, refresh_cpu, refresh_fig = _build(
            wh, catalog, args.pair, kept, (local, "refreshed.parquet"), **kw,
            previous=previous,
        )  # fmt: skip
        full_file.unlink(missing_ok=True)  # disk: at production length a training file is 9.5 GB
        if gcs_root is not None and not args.no_merge:
            gcs_refresh = _gcs_merge(kept, catalog, args.pair, gcs_root, refresh=True)
            gcs_refresh["same_as_local"] = gcs_refresh.pop("crc32c") == file_crc32c(
                tmp_path / "refreshed.parquet"
            )
            if gcs_full is not None:
                gcs_full.pop("crc32c", None)
        f, r = _summary(full), _summary(refreshed)
        print(
            json.dumps({"full": {**f, "extract_s": round(full_extract, 2),
                                 "merge_s": round(full_merge, 2)},
                        "refresh": {**r, "extract_s": round(refresh_extract, 2),
                                    "merge_s": round(refresh_merge, 2)}}),
            flush=True,
        )  # fmt: skip
        refreshed_file = tmp_path / "refreshed.parquet"
        refreshed_size = refreshed_file.stat().st_size if refreshed_file.exists() else None
        rows = args.rows + args.append
        again, again_extract, again_merge, equal, identical = [], 0.0, 0.0, None, None
        before_compare = None
        if not (args.no_scratch or args.no_merge):
            print("from scratch after the append (for equality)", flush=True)
            again, again_extract, again_merge, _, _ = _build(
                wh, catalog, args.pair, scratch, (local, "scratch.parquet"), **kw
            )
            before_compare = peak_rss_bytes()
            equal = _same_file(tmp_path / "refreshed.parquet", tmp_path / "scratch.parquet")
            identical = _same_bytes(tmp_path / "refreshed.parquet", tmp_path / "scratch.parquet")
        wh.close()

    result = {
        "rows": args.rows,
        "appended_minutes": args.append,
        "rows_after": rows,
        "pair": args.pair,
        "grain": args.grain,
        "threads": args.threads,
        "tables": len(full),
        "full": {
            **f,
            "extract_s": round(full_extract, 2),
            "merge_s": round(full_merge, 2),
            **full_fig,
        },
        "refresh": {
            **r,
            "extract_s": round(refresh_extract, 2),
            "merge_s": round(refresh_merge, 2),
            **refresh_fig,
        },
        "merge_copy_floor_s": round(copy_floor, 2) if copy_floor is not None else None,
        "merge_from_scratch_after_append_s": round(again_merge, 2) if again else None,
        "training_file_bytes": {"full": full_size, "refreshed": refreshed_size},
        "scratch_after_append": (
            {**_summary(again), "extract_s": round(again_extract, 2)} if again else None
        ),
        "bytes_ratio": round(r["bytes_read"] / max(1, f["bytes_read"]), 4),
        "bytes_ratio_vs_scratch_after": (
            round(r["bytes_read"] / max(1, _summary(again)["bytes_read"]), 4) if again else None
        ),
        "new_rows_floor": round(args.append / (args.rows + args.append), 4),
        "extract_time_ratio": round(refresh_extract / max(1e-9, full_extract), 4),
        "extract_cpu_s": {"full": round(full_cpu, 1), "refresh": round(refresh_cpu, 1)},
        "extract_cpu_ratio": round(refresh_cpu / max(1e-9, full_cpu), 4),
        "end_to_end_time_ratio": None
        if args.no_merge
        else round((refresh_extract + refresh_merge) / max(1e-9, full_extract + full_merge), 4),
        "merge_time_ratio": None
        if args.no_merge
        else round(refresh_merge / max(1e-9, full_merge), 4),
        "files_equal": equal,
        "files_identical": identical,
        "peak_rss_bytes": peak_rss_bytes(),
        # The pipeline's steps (builds and merges) alone: the column-by-column comparison of
        # the two files is the benchmark's own check.
        "peak_rss_before_compare_bytes": before_compare,
        "filesystem": _filesystem(out),
        "gcs_output": {"full": gcs_full, "refresh": gcs_refresh} if gcs_refresh else None,
        "previous_vouched": bool(getattr(previous, "vouched", False)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
    }
    line = json.dumps(result)
    with open(out / "results.jsonl", "a") as f_out:
        f_out.write(line + "\n")
    print(line)
    print(
        f"refresh read {r['bytes_read']:,} of the full build's {f['bytes_read']:,} bytes "
        f"({result['bytes_ratio']:.2%}; new rows are {result['new_rows_floor']:.2%} of the "
        f"table); {r['tables_extracted']} tables / {r['chunks_extracted']} chunks extracted, "
        f"{r['chunks_reused']} reused, {r['chunks_compacted']} compacted; extraction "
        f"{refresh_extract:.1f} s vs {full_extract:.1f} s ({result['extract_time_ratio']:.1%}), "
        f"with the merge {refresh_extract + refresh_merge:.1f} s vs "
        f"{full_extract + full_merge:.1f} s (merge {refresh_merge:.1f} s vs {full_merge:.1f} s, "
        f"copy floor {copy_floor or 0:.1f} s; {refresh_fig.get('row_groups_reused', 0)} of "
        f"{refresh_fig.get('row_groups', 0)} row groups copied); files equal: {equal}, "
        f"identical: {identical}"
    )
    if equal is False:
        raise SystemExit("the refreshed training file differs from the from-scratch one")


if __name__ == "__main__":
    main()
