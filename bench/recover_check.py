"""What the check before a merge costs when nothing is missing (`recover.check_chunks`, whose
chunks the merge then reads without looking them up again), against the merge's own look-up it
replaces (`select.require_chunks`), on fake-gcs-server; and what a recovery of one deleted chunk
costs against the refresh that made the chunks.

    uv run --frozen python bench/recover_check.py [--pair eurusd] [--rows 120] [--repeat 5]

A pair of the packaged catalog (668 tables, short) is refreshed into a bucket, then each check
is timed `--repeat` times (best of): the ratio is against `require_chunks` of the same run.
Both checks are latency-bound (two or three requests a table, `storage.concurrency` tables at
a time); fake-gcs-server answers in ~1-2 ms, a region in ~10-30 ms: the ratio carries over."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="eurusd")
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.checkpoints.manifest import stored_manifests
    from bqx_assets.core.checkpoints.recover import check_chunks, recover_chunks
    from bqx_assets.core.checkpoints.refresh import refresh_checkpoints
    from bqx_assets.core.checkpoints.select import require_chunks
    from bqx_assets.core.checkpoints.window import TrainingWindow
    from bqx_assets.core.storage.gcs import GCSStorage
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
    from emulators.gcs import run_gcs_emulator

    pair = args.pair
    catalog = Catalog.load()
    sources = [catalog.targets[pair], *catalog.tables_for(pair)]
    work = Path(tempfile.mkdtemp(prefix="bqx-recover-bench-"))
    path = work / "w.duckdb"
    create_warehouse(path, catalog, pairs=[pair], rows=args.rows).close()
    with run_gcs_emulator(work / "gcs") as emulator:
        storage = GCSStorage(emulator.create_bucket(), "checkpoints", client=emulator.client())
        wh = EmbeddedWarehouse(path)
        # Only the tables the synthetic warehouse made (it leaves some of a pair's out).
        made = set()
        for dataset in {s.dataset for s in sources}:
            names = [s.name for s in sources if s.dataset == dataset]
            made |= {(dataset, n) for n in wh.partition_states(dataset, names)}
        sources = [s for s in sources if (s.dataset, s.name) in made]
        started = time.perf_counter()
        step = refresh_checkpoints(
            wh, storage, sources, [catalog.targets[pair]], TrainingWindow(), pair, threads=2
        )
        refresh_s = time.perf_counter() - started
        wh.close()

        def best(fn: object) -> float:
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()  # type: ignore[operator]
                times.append(time.perf_counter() - t)
            return min(times)

        base = best(lambda: require_chunks(storage, sources, step.window, pair))
        check = best(lambda: check_chunks(storage, sources, step.window))
        storage.delete(sorted(stored_manifests(storage, sources[1]).manifests)[-1])
        t = time.perf_counter()
        done = recover_chunks(
            lambda: EmbeddedWarehouse(path), storage, sources, step.window, pair, threads=2
        )
        recover_s = time.perf_counter() - t
    print(f"{pair}: {len(sources)} tables, {args.rows} rows each, fake-gcs-server")
    print(f"require_chunks (baseline, the merge's own look-up): {base * 1e3:8.1f} ms  1.00x")
    print(f"check_chunks (before the merge, in its place):      {check * 1e3:8.1f} ms  "
          f"{check / base:.2f}x, {(check - base) * 1e3:+.1f} ms a build")  # fmt: skip
    print(f"refresh of every table (the checkpoint step):       {refresh_s * 1e3:8.1f} ms")
    print(
        f"recovery of one deleted chunk:                      {recover_s * 1e3:8.1f} ms  "
        f"{recover_s / refresh_s:.2f}x of the refresh, {done.chunks_extracted} chunk read"
    )


if __name__ == "__main__":
    main()
