"""`bqx warehouse create|append`: build the synthetic embedded warehouse, or add minutes to it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bqx_assets.core.layout import EMBEDDED_WAREHOUSE_PATH as DEFAULT_PATH

if TYPE_CHECKING:
    from bqx_assets.core.catalog import Catalog


@dataclass(frozen=True)
class ExistingWarehouse:
    """What an embedded warehouse file holds, read without changing it."""

    path: str
    rows: int
    pairs: tuple[str, ...]
    faults: tuple[str, ...]
    catalog: Catalog

    def describe(self) -> str:
        faults = f", faults {', '.join(self.faults)}" if self.faults else ""
        return f"{self.rows:,} rows, pairs {','.join(self.pairs)}{faults}"


def existing_warehouse(path: Path | str) -> ExistingWarehouse | None:
    """The embedded warehouse at `path`, opened read-only; None when there is no file; an error
    naming `path` when there is something that is not an embedded warehouse (a command that
    writes refuses to replace it)."""
    import duckdb

    from bqx_assets.core.errors import BqxError, WarehouseError
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

    if not Path(path).exists():
        return None
    not_one = f"{path} exists and is not an embedded warehouse"
    if not Path(path).is_file():
        raise WarehouseError(f"{not_one} ({'a folder' if Path(path).is_dir() else 'not a file'})")
    try:
        wh = EmbeddedWarehouse(path)
    except BqxError as exc:
        reason = exc.__cause__ or exc
        if "Conflicting lock" in str(reason):
            in_use = f"warehouse {path} is in use by another process"
            raise WarehouseError(f"{in_use}: {reason}") from exc
        raise WarehouseError(f"{not_one} ({reason})") from exc
    try:
        params = wh.params()
        return ExistingWarehouse(
            str(path),
            int(params["rows"]),
            tuple(params["pairs"].split(",")),
            tuple(f.kind + ":" + "+".join(f.tables) for f in wh.faults()),
            wh.catalog(),
        )
    except (duckdb.Error, KeyError, ValueError) as exc:
        raise WarehouseError(f"{not_one} ({type(exc).__name__}: {exc})") from exc
    finally:
        wh.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    from bqx_assets.core.warehouse.faults import FAULT_KINDS

    parser = subparsers.add_parser("warehouse", help="manage the embedded (DuckDB) warehouse")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    kinds = "; ".join(f"{k}: {v}" for k, v in FAULT_KINDS.items())
    create = sub.add_parser(
        "create",
        help="create the synthetic production-shaped warehouse",
        description="Writes a new warehouse at --path; a warehouse already there is kept (the "
        "command stops and says so) unless --replace is given, and a file that is not an "
        "embedded warehouse is never replaced. The file appears only once complete: a failed "
        "or interrupted creation leaves --path as it was. Fault kinds (--fault "
        f"KIND[=VALUE]:TARGET[+TARGET...], TARGET a feature table or a family): {kinds}.",
    )
    create.add_argument("--rows", type=int, required=True, help="minutes (rows) per pair")
    create.add_argument("--pairs", default="eurusd", help="comma-separated pairs (or 'all')")
    create.add_argument(
        "--path", default=DEFAULT_PATH, help=f"DuckDB file (default {DEFAULT_PATH})"
    )
    create.add_argument(
        "--replace",
        action="store_true",
        help="replace the embedded warehouse already at --path (its data is lost)",
    )
    create.add_argument("--seed", type=int, default=7)
    create.add_argument(
        "--start",
        default=None,
        help="first minute, ISO 8601 in UTC (default 2024-01-01T00:00, a Monday); a warehouse "
        "of a few hundred minutes needs one inside ETF hours (08:00-20:00) for corr tables to "
        "have rows",
    )
    create.add_argument("--catalog", default=None, help="catalog file (default: packaged)")
    create.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[=VALUE]:TARGET[+TARGET...]",
        help="write a fault into the warehouse and record it (repeatable)",
    )
    create.set_defaults(handler=_create)
    append = sub.add_parser(
        "append",
        help="add the next N trading minutes to every table (tables with a fault stay as they are)",
        description="Grows the embedded warehouse at --path in place; a path with no warehouse "
        "is refused (nothing is created).",
    )
    append.add_argument("--minutes", type=int, required=True)
    append.add_argument(
        "--path", default=DEFAULT_PATH, help=f"DuckDB file (default {DEFAULT_PATH})"
    )
    append.set_defaults(handler=_append)


def _create(args: argparse.Namespace) -> int:
    from bqx_assets.cli.output import emit
    from bqx_assets.core.catalog import Catalog
    from bqx_assets.core.errors import WarehouseError
    from bqx_assets.core.metrics import Stopwatch, peak_rss_bytes
    from bqx_assets.core.warehouse.embedded import create_warehouse

    catalog = Catalog.load(args.catalog)
    pairs = list(catalog.pairs) if args.pairs == "all" else args.pairs.split(",")
    there = existing_warehouse(args.path)
    if there is not None and not args.replace:
        raise WarehouseError(
            f"warehouse {args.path} already exists ({there.describe()}): not replaced; add "
            f"--replace to replace it, or grow it with `bqx warehouse append --minutes N --path "
            f"{args.path}`"
        )
    if there is not None:
        print(f"warehouse {args.path}: replacing the warehouse there ({there.describe()})")
    clock = Stopwatch()
    wh = create_warehouse(
        args.path, catalog, pairs=pairs, rows=args.rows, seed=args.seed, faults=args.fault,
        progress=print, **_start(args.start),
    )  # fmt: skip
    faults = [f.kind + ":" + "+".join(f.tables) for f in wh.faults()]
    wh.close()
    tables = len({t.name for p in pairs for t in catalog.tables_for(p)}) + len(pairs)
    print(f"warehouse {args.path}: {tables} tables, {args.rows} rows per pair, "
          f"{clock.seconds:.1f} s, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")  # fmt: skip
    emit({"path": args.path, "pairs": pairs, "rows": args.rows, "tables": tables,
          "faults": faults, "replaced": there is not None, "seconds": round(clock.seconds, 2),
          "peak_rss_bytes": peak_rss_bytes()})  # fmt: skip
    return 0


def _append(args: argparse.Namespace) -> int:
    from bqx_assets.cli.output import emit
    from bqx_assets.core.errors import WarehouseError
    from bqx_assets.core.metrics import Stopwatch
    from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse

    clock = Stopwatch()
    # Opened to write, DuckDB would make an empty file at a path with none.
    if existing_warehouse(args.path) is None:
        raise WarehouseError(
            f"embedded warehouse {args.path} does not exist: create it with `bqx warehouse "
            f"create --rows N --path {args.path}`"
        )
    wh = EmbeddedWarehouse(args.path, read_only=False)
    try:
        added = wh.append(args.minutes, progress=print)
        rows = int(wh.params()["rows"])
    finally:
        wh.close()
    changed = sum(1 for n in added.values() if n)
    print(f"warehouse {args.path}: {changed} tables grew, {sum(added.values())} rows added, "
          f"spine now {rows} rows, {clock.seconds:.1f} s")  # fmt: skip
    emit({"path": args.path, "minutes": args.minutes, "tables_changed": changed,
          "rows_added": sum(added.values()), "rows": rows,
          "seconds": round(clock.seconds, 2)})  # fmt: skip
    return 0


def _start(text: str | None) -> dict[str, datetime]:
    from bqx_assets.core.errors import WarehouseError

    if text is None:
        return {}
    try:
        start = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WarehouseError(f"--start {text!r} is not an ISO 8601 date and time") from exc
    return {"start": start.replace(tzinfo=start.tzinfo or UTC)}
