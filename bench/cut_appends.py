"""Runs that read while the warehouse is appended: the file of the cut, no false failure.

A synthetic warehouse of one pair is made once; then, `--runs` times, the pair's checkpoint step
refreshes the same checkpoint root (incrementally, as production does) while the warehouse is
appended: after a random number of the step's table reads, every table gets 1 to
`--max-minutes` new minutes (in the run's process, between reads: the only way a DuckDB file
is written while a process reads it). The pair's file is then built, gate-checked and published
as `training_file` does (the core, no Dagster), and compared with a from-scratch build (a fresh
checkpoint root) of a copy of the warehouse taken before the run: the warehouse as it was at
the run's cut. The baseline, in the same run: the same appends with every read as of its own
moment (as before runs had a cut), on its own copy.

Prints a line per run and a summary: runs whose file equals the cut's from-scratch build, false
failures (a step error or a failed check on a clean warehouse) with and without the cut, and
seconds per incremental run as a ratio of a from-scratch build's.

    uv run --frozen python bench/cut_appends.py --runs 10 --rows 3000 --catalog mini
    uv run --frozen python bench/cut_appends.py --runs 10 --rows 12000 --catalog full
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the emulators

from gate_hours import GATE, PAIR, mini_catalog

from bqx_assets.core.build import build_training_file
from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.refresh import refresh_checkpoints
from bqx_assets.core.checkpoints.window import TrainingWindow
from bqx_assets.core.errors import BqxError
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import publish_training_file
from bqx_assets.core.storage import LocalStorage
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse, create_warehouse
from emulators.upstream import AppendingWarehouse

DEFAULT_OUT = Path(__file__).with_name("out") / "cut_appends"


@dataclass
class Outcome:
    error: str = ""
    failed: tuple[str, ...] = ()
    published: bool = False
    seconds: float = 0.0

    @property
    def false_failure(self) -> bool:
        return bool(self.error or self.failed)


def pair_build(
    root: Path, catalog: Catalog, wh: EmbeddedWarehouse, threads: int
) -> tuple[Outcome, Path]:
    """The pair's checkpoint step into `root/ckpt`, its file built and published to `root/out`."""
    started = time.perf_counter()
    checkpoints = LocalStorage(root / "ckpt", durable=False)
    targets = catalog.targets[PAIR]
    out = Outcome()
    try:
        refresh_checkpoints(
            wh, checkpoints, [targets, *catalog.tables_for(PAIR)], [targets], TrainingWindow(),
            f"pair {PAIR}", workdir=root / "work", threads=threads,
        )  # fmt: skip
        output = LocalStorage(root / "out")
        built = build_training_file(checkpoints, output, catalog, PAIR, TrainingWindow(), GATE)
        out.published = publish_training_file(output, built.training_file).published
        out.failed = built.report.failed
    except BqxError as exc:
        out.error = str(exc).splitlines()[0][:160]
    out.seconds = time.perf_counter() - started
    return out, root / "out" / training_file_key(PAIR)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=3000, help="minutes at creation")
    parser.add_argument("--max-minutes", type=int, default=120, help="most minutes an append adds")
    parser.add_argument("--catalog", choices=("full", "mini"), default="mini")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="the step's table threads (with more, a table read on another thread while the "
        "append writes sees the file as before the append's commit: the baseline then misses "
        "some of the races it shows on one)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without a cut")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    full = Catalog.load()
    catalog = full.subset([PAIR]) if args.catalog == "full" else mini_catalog(full)
    tables = len(catalog.tables_for(PAIR)) + 1
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    base = args.out / "base.duckdb"
    create_warehouse(base, catalog, pairs=[PAIR], rows=args.rows).close()
    print(f"{PAIR}: {tables} tables ({args.catalog} catalog), {args.rows:,} minutes, "
          f"{args.runs} runs, threads {args.threads}", flush=True)  # fmt: skip
    modes = [True] if args.no_baseline else [True, False]
    results: dict[bool, list[Outcome]] = {m: [] for m in modes}
    equal, scratch_seconds = 0, []
    during = dict.fromkeys(modes, 0)
    for as_of_cut in modes:
        path = args.out / f"w-{'cut' if as_of_cut else 'nocut'}.duckdb"
        shutil.copyfile(base, path)
        rng = random.Random(args.seed)
        root = args.out / ("cut" if as_of_cut else "nocut")
        for run in range(1, args.runs + 1):
            after, minutes = rng.randint(1, tables), rng.randint(1, args.max_minutes)
            at_cut = args.out / "at_cut.duckdb"
            shutil.copyfile(path, at_cut)  # the warehouse as the run's cut will see it
            wh = AppendingWarehouse(path, as_of_cut=as_of_cut)
            try:
                wh.arm(after, minutes)
                outcome, file = pair_build(root, catalog, wh, args.threads)
                if not wh.fired:  # the step read fewer tables: the append comes after it
                    wh.append(minutes)
            finally:
                wh.close()
            results[as_of_cut].append(outcome)
            during[as_of_cut] += wh.fired
            when = f"after read {after}" if wh.fired else f"after the step ({len(wh.reads)} reads)"
            line = f"  {'cut' if as_of_cut else 'no cut'} run {run}: +{minutes} min {when}: "
            if as_of_cut:
                scratch = args.out / "scratch"
                shutil.rmtree(scratch, ignore_errors=True)
                reference = EmbeddedWarehouse(at_cut)
                try:
                    done, expected = pair_build(scratch, catalog, reference, args.threads)
                finally:
                    reference.close()
                scratch_seconds.append(done.seconds)
                same = (
                    outcome.published
                    and done.published
                    and pq.read_table(file).equals(pq.read_table(expected))
                )
                equal += same
                line += "file of the cut" if same else "DIFFERS from the cut's from-scratch build"
            line += f"; {outcome.error or ('failed ' + ','.join(outcome.failed) if outcome.failed else 'published')}"  # noqa: E501
            print(line + f" ({outcome.seconds:.1f} s)", flush=True)
    cut = results[True]
    false_cut = sum(o.false_failure for o in cut)
    mean = sum(o.seconds for o in cut) / len(cut)
    scratch_mean = sum(scratch_seconds) / len(scratch_seconds)
    print(f"\nwith the cut: {equal}/{len(cut)} files equal to the cut's from-scratch build, "
          f"{false_cut} false failures ({during[True]} runs appended to mid-step)")  # fmt: skip
    if False in results:
        false_base = sum(o.false_failure for o in results[False])
        print(f"baseline (each read as of its own moment): {false_base}/{len(cut)} false "
              f"failures ({during[False]} runs appended to mid-step)")  # fmt: skip
    print(f"seconds per incremental run {mean:.1f}, per from-scratch build {scratch_mean:.1f}: "
          f"ratio {mean / scratch_mean:.2f}")  # fmt: skip
    return 0 if equal == len(cut) and false_cut == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
