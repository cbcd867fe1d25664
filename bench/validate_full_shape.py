"""Time `bqx validate` on a full-shape training file (177,748 rows x 17,031 columns): every gate
check, the profile and the drift against a published profile."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.layout import KEY
from bqx_assets.core.merge.coverage import COVERAGE_KEY, Coverage, TableCoverage, newest_day_start

ROWS = 177_748
ROW_GROUP_ROWS = 4096
PAIR = "eurusd"
DEFAULT_OUT = Path(__file__).with_name("out") / f"training_{PAIR}_full_shape.parquet"
_POOL = 64  # distinct value arrays per row group: generation stays cheap, chunks still differ
_ARROW = {"FLOAT64": pa.float64(), "INT64": pa.int64(), "BOOL": pa.bool_(), "STRING": pa.string()}


def _keys(rows: int) -> np.ndarray:
    """Minute timestamps from 2023-01-02 with weekend gaps, as int64 microseconds."""
    start = np.datetime64("2023-01-02T00:00", "m")
    minutes = start + np.arange(rows * 2, dtype="timedelta64[m]")
    weekday = (minutes.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 0 = Monday
    return minutes[weekday < 5][:rows].astype("datetime64[us]").astype(np.int64)


def _window(name: str) -> int:
    """Look-back window of a feature from its name suffix: its first rows are null."""
    tail = name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() and int(tail) <= 2880 else 0


def coverage_record(catalog: Catalog, keys: np.ndarray, windows: dict[str, int]) -> Coverage:
    """The record the merge writes for this file: every table covers every spine key; its
    columns are null for their look-back window (`windows`, by output name)."""
    newest_from = newest_day_start(keys)
    newest_rows = len(keys) - int(np.searchsorted(keys, newest_from))
    by_table: dict[str, list[str]] = {}
    for f in catalog.feature_columns(PAIR):
        by_table.setdefault(f.table.name, []).append(f.name)
    tables = []
    first = 1 + len(catalog.targets[PAIR].targets)
    for table, names in by_table.items():
        tables.append(
            TableCoverage(
                table,
                first,
                len(names),
                len(keys),
                len(keys),
                int(keys[0]),
                int(keys[-1]),
                newest_rows,
                0,
                0,
                0,
                tuple(windows[n] for n in names),
                (0,) * len(names),
            )
        )
        first += len(names)
    return Coverage(len(keys), int(keys[0]), int(keys[-1]), newest_from, newest_rows, tuple(tables))


def generate(path: Path, rows: int, row_group_rows: int, *, reuse: bool = False) -> None:
    """Write the file row group by row group. `reuse` writes the feature values of one row group
    again wherever no lead or tail nulls apply (keys still differ): the same footer and file
    shape in a fraction of the time, for layouts with hundreds of row groups."""
    catalog = Catalog.load()
    targets = catalog.targets[PAIR].targets
    features = catalog.feature_columns(PAIR)
    fields = [pa.field(KEY, pa.timestamp("us", tz="UTC"), nullable=False)]
    fields += [pa.field(t, pa.float64()) for t in targets]
    fields += [pa.field(f.name, _ARROW[f.column.dtype]) for f in features]
    windows = [0] * len(targets) + [_window(f.name) for f in features]
    keys = _keys(rows)
    record = coverage_record(catalog, keys, {f.name: min(_window(f.name), rows) for f in features})
    # The footer's key-value metadata carries the coverage record, as the merge writes it.
    schema = pa.schema(fields, metadata={COVERAGE_KEY: record.encode()})
    rng = np.random.default_rng(5)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    reusable: list[pa.Array] | None = None
    with pq.ParquetWriter(tmp, schema, compression="zstd", write_statistics=True) as writer:
        for offset in range(0, rows, row_group_rows):
            n = min(row_group_rows, rows - offset)
            key_array = pa.array(keys[offset : offset + n], pa.timestamp("us", tz="UTC"))
            plain = offset >= max(windows) and offset + n <= rows - 105 and n == row_group_rows
            if reuse and plain and reusable is not None:
                table = pa.Table.from_arrays([key_array, *reusable], schema=schema)
                writer.write_table(table, row_group_size=n)
                if offset // n % 32 == 0:
                    print(f"  row group at {offset:>7}: {time.perf_counter() - started:7.1f} s")
                continue
            # Rounded like warehouse output (std ~0.087): dictionary pages keep the file near the
            # production size (9.27 GB) instead of 20 GB of incompressible doubles.
            pool = [np.round(rng.normal(0, 0.087, n), 4 if k % 4 == 0 else 3) for k in range(_POOL)]
            ints = [rng.integers(0, 50, n) for _ in range(_POOL)]
            # Targets get values of their own: a feature sharing a target's values is a leak.
            own = [rng.normal(0, 0.087, n) for _ in targets]
            cache: dict[tuple[str, int, int], pa.Array] = {}
            arrays: list[pa.Array] = [key_array]
            for i, field in enumerate(fields[1:]):
                k = i % _POOL
                lead = max(0, min(n, windows[i] - offset))
                # Targets are null at the end of the series (look-ahead); features at the start.
                tail = max(0, min(n, offset + n - (rows - 105))) if i < len(targets) else 0
                key = (str(field.type), i if i < len(targets) else -1 - k, lead * 10_000 + tail)
                if key not in cache:
                    mask = np.zeros(n, dtype=bool)
                    mask[:lead] = True
                    if tail:
                        mask[n - tail :] = True
                    if i < len(targets):
                        values = own[i]
                    elif pa.types.is_floating(field.type):
                        values = pool[k]
                    elif pa.types.is_integer(field.type):
                        values = ints[k]
                    elif pa.types.is_boolean(field.type):
                        values = ints[k] % 2 == 0
                    else:
                        values = np.full(n, PAIR, dtype=object)
                    cache[key] = pa.array(
                        values, type=field.type, mask=mask if mask.any() else None
                    )
                arrays.append(cache[key])
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=n)
            if plain:
                reusable = arrays[1:]
            print(f"  row group at {offset:>7}: {time.perf_counter() - started:7.1f} s", flush=True)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument(
        "--reuse-row-group",
        action="store_true",
        help="repeat one row group's feature values (fast; same footer) for many row groups",
    )
    parser.add_argument("--no-run", action="store_true", help="only build the file")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    if args.regenerate or not args.out.exists():
        print(f"building {args.out} ({args.rows} rows, row groups of {args.row_group_rows})")
        generate(args.out, args.rows, args.row_group_rows, reuse=args.reuse_row_group)
    meta = pq.read_metadata(args.out)
    size = args.out.stat().st_size
    print(
        f"file: {args.out}: {meta.num_rows} rows x {meta.num_columns} columns, "
        f"{meta.num_row_groups} row groups, {size / 1e9:.2f} GB, "
        f"footer {meta.serialized_size / 1e6:.1f} MB"
    )
    if args.no_run:
        return 0
    bqx = Path(sys.executable).with_name("bqx")
    profile = args.out.with_name(args.out.stem + ".profile.parquet")
    base = [str(bqx), "validate", str(args.out), "--pair", PAIR, "--spine-rows", str(args.rows)]
    # First build (no history): writes the profile; then a build judged against that profile.
    runs = [
        ("first build", [*base, "--profile-out", str(profile)]),
        ("against history", [*base, "--profile-history", str(profile)]),
    ]
    proc = None
    for label, command in runs:
        print("command:", " ".join(command))
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU time of the command: what wall time would be on an idle core (a shared
            # machine stretches wall time, not CPU time).
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{label}: exit {proc.returncode}: {seconds:.2f} s wall, {cpu:.2f} s CPU "
                f"(validation {result['seconds']:.2f} s wall), peak RSS of the command "
                f"{result['peak_rss_bytes'] / 2**20:.0f} MiB, failed {result['failed']}"
            )
    # RUSAGE_CHILDREN is the peak over every waited-for child: the largest validate process.
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"peak RSS over the runs (getrusage children): {peak / 2**20:.0f} MiB")
    print(f"profile: {profile} ({profile.stat().st_size / 1e3:.0f} kB)")
    if proc is not None:
        print(proc.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
