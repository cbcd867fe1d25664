"""The preflight: the warehouse's metadata against the catalog before a run reads it, each defect
one line naming the dataset, table or column, and what a full build and a refresh will read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bqx_assets.core.catalog import TARGETS_FAMILY, Catalog, Table, TargetsTable
from bqx_assets.core.checkpoints.window import chunk_ranges
from bqx_assets.core.costs import Prices, estimate
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY, KEY_DTYPE
from bqx_assets.core.warehouse import DateRange, Warehouse
from bqx_assets.core.warehouse.metadata import DAY, TableFacts, WarehouseFacts, embedded_facts

STREAMING_DOC = "https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#streamingbuffer"


@dataclass(frozen=True)
class Defect:
    """One thing a run would fail on (or read wrongly), as one line."""

    subject: str
    """`dataset d`, `table d.t`, `credentials`."""
    problem: str
    family: str | None = None
    """The catalog family of the table (`targets` for a targets table); None: every table."""

    def __str__(self) -> str:
        return f"{self.subject}: {self.problem}"


@dataclass(frozen=True)
class Reads:
    """Bytes a build reads through the Storage Read API, and their list price."""

    bytes: int
    usd: float

    def to_dict(self) -> dict[str, float | int]:
        return {"bytes": self.bytes, "usd": round(self.usd, 6)}


@dataclass(frozen=True)
class Preflight:
    """The defects found, the location runs use, and what builds will read."""

    warehouse: str
    location: str | None
    """Where runs send their jobs: the configured location, or the datasets' own."""
    tables: int
    """Catalog tables checked."""
    defects: tuple[Defect, ...]
    full_build: Reads
    """Every catalog table read whole once (shared tables once for all pairs)."""
    refresh: Reads
    """Each table's newest day read again (a daily refresh after one day was appended)."""
    pairs: Mapping[str, Reads] = field(default_factory=dict)
    """A full build of one pair alone: its tables, the shared ones and its targets."""

    @property
    def ok(self) -> bool:
        return not self.defects

    def lines(self) -> list[str]:
        """One line per defect, then the reads."""
        out = [str(d) for d in self.defects]
        where = self.location or "no location (local)"
        out.append(
            f"{self.tables} tables on {self.warehouse} ({where}): {len(self.defects)} defects"
        )
        out.append(_reads_line("full build", self.full_build))
        out.append(_reads_line("refresh of one new day", self.refresh))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "warehouse": self.warehouse,
            "location": self.location,
            "tables": self.tables,
            "defects": [str(d) for d in self.defects],
            "full_build": self.full_build.to_dict(),
            "refresh": self.refresh.to_dict(),
            "pairs": {p: r.to_dict() for p, r in self.pairs.items()},
        }


def _reads_line(what: str, reads: Reads) -> str:
    return f"{what}: reads {reads.bytes / 2**30:,.2f} GiB, ${reads.usd:,.2f} at list price"


Source = Table | TargetsTable


def sources(catalog: Catalog) -> list[Source]:
    """Every table of the catalog once: the feature tables, then the targets tables."""
    return [*catalog.tables.values(), *catalog.targets.values()]


def family_of(source: Source) -> str:
    return source.family if isinstance(source, Table) else TARGETS_FAMILY


def warehouse_facts(wh: Warehouse, catalog: Catalog) -> WarehouseFacts:
    """What the warehouse's metadata says about the catalog's tables (BigQuery's API, or the
    embedded warehouse's information schema)."""
    from bqx_assets.core.warehouse.bigquery import BigQueryWarehouse

    tables = [(s.dataset, s.name) for s in sources(catalog)]
    if isinstance(wh, BigQueryWarehouse):
        from bqx_assets.core.warehouse.bigquery.metadata import bigquery_facts

        return bigquery_facts(wh, tables)
    return embedded_facts(wh, tables)


def preflight(wh: Warehouse, catalog: Catalog, *, prices: Prices | None = None) -> Preflight:
    """Check the warehouse against the catalog from metadata alone (nothing is read from the
    tables) and estimate what builds will read from the tables' sizes."""
    facts = warehouse_facts(wh, catalog)
    defects = missing_datasets(catalog, facts) + location_defects(facts)
    all_sources = sources(catalog)
    clean: list[Source] = []
    for source in all_sources:
        if source.dataset not in facts.datasets:
            continue
        found = table_defects(source, facts.tables.get((source.dataset, source.name)))
        defects += found
        if not found:
            clean.append(source)
    defects += [
        Defect("credentials", f"cannot create {a.what} ({a.on}): {a.refused}")
        for a in facts.access
        if a.refused
    ]
    # Tables of a dataset elsewhere are not looked up again (any job there is "not found").
    elsewhere = {d.subject.removeprefix("dataset ") for d in defects}
    newest, refused = _newest_day_bytes(wh, facts, [s for s in clean if s.dataset not in elsewhere])
    defects += refused

    def reads(chosen: Sequence[Source], sizes: Mapping[tuple[str, str], int]) -> Reads:
        count = sum(sizes.get((s.dataset, s.name), 0) for s in chosen)
        return Reads(count, estimate(0.0, count, prices)[1])

    sizes = {key: f.bytes for key, f in facts.tables.items()}
    return Preflight(
        warehouse=wh.name,
        location=_location(facts),
        tables=len(all_sources),
        defects=tuple(defects),
        full_build=reads(all_sources, sizes),
        refresh=reads(clean, newest),
        pairs={
            p: reads([*catalog.tables_for(p), catalog.targets[p]], sizes) for p in catalog.pairs
        },
    )


def _location(facts: WarehouseFacts) -> str | None:
    if facts.location:
        return facts.location
    found = sorted({loc for loc in facts.datasets.values() if loc})
    return found[0] if len(found) == 1 else None


def location_defects(facts: WarehouseFacts) -> list[Defect]:
    """A dataset that is missing, or elsewhere than the configured location (BigQuery then
    answers "not found" to a job sent to the configured one,
    https://cloud.google.com/bigquery/docs/locations#specify_locations); with none configured,
    datasets in different locations (one job cannot read both)."""
    out: list[Defect] = []
    for dataset, where in sorted(facts.datasets.items()):
        if where and facts.location and where.lower() != facts.location.lower():
            out.append(
                Defect(
                    f"dataset {dataset}",
                    f"is in {where}, not in the configured location {facts.location}: "
                    f"jobs sent to {facts.location} would not find its tables",
                )
            )
    if not facts.location and len({w.lower() for w in facts.datasets.values() if w}) > 1:
        where = ", ".join(f"{d} in {w}" for d, w in sorted(facts.datasets.items()))
        out.append(Defect("datasets", f"are in different locations ({where})"))
    return out


def missing_datasets(catalog: Catalog, facts: WarehouseFacts) -> list[Defect]:
    wanted = sorted({s.dataset for s in sources(catalog)})
    return [Defect(f"dataset {d}", "does not exist") for d in wanted if d not in facts.datasets]


def table_defects(source: Source, facts: TableFacts | None) -> list[Defect]:
    """What keeps a run from reading `source` as the catalog describes it."""
    subject, family = f"table {source.dataset}.{source.name}", family_of(source)
    if facts is None:
        return [Defect(subject, "does not exist", family)]
    problems: list[str] = []
    if facts.kind != "TABLE":
        problems.append(f"is a {facts.kind}, not a TABLE")
    if facts.partitioning is None:
        problems.append(f"is not partitioned; a refresh needs it partitioned by {DAY} on {KEY}")
    elif facts.partitioning != (DAY, KEY):
        kind, on = facts.partitioning
        problems.append(
            f"is partitioned by {kind} on {on or 'ingestion time'}, not by {DAY} on {KEY}"
        )
    key_type = facts.columns.get(KEY)
    if key_type is None:
        problems.append(f"has no column {KEY}")
    elif key_type != KEY_DTYPE:
        problems.append(f"column {KEY} is {key_type}, not {KEY_DTYPE}")
    for column in source.columns:
        found = facts.columns.get(column.name)
        if found is None:
            problems.append(f"column {column.name} is missing (the catalog has {column.dtype})")
        elif found != column.dtype:
            problems.append(f"column {column.name} is {found}, the catalog has {column.dtype}")
    if facts.streaming_rows:
        # Rows in the buffer are in no day partition yet (`__UNPARTITIONED__`): no day-by-day
        # read or export sees them (STREAMING_DOC).
        problems.append(
            f"has about {facts.streaming_rows:,} rows in the streaming buffer, in no day "
            "partition yet: a run now would leave them out"
        )
    return [Defect(subject, p, family) for p in problems]


def _newest_day_bytes(
    wh: Warehouse, facts: WarehouseFacts, clean: Sequence[Source]
) -> tuple[dict[tuple[str, str], int], list[Defect]]:
    """Per clean table, the bytes of its newest chunk (its newest day: the chunks of the newest
    month are days), from its day partitions' rows (the same metadata look-up a refresh makes);
    a dataset whose look-up fails is a defect."""
    out: dict[tuple[str, str], int] = {}
    defects: list[Defect] = []
    for dataset in sorted({s.dataset for s in clean}):
        names = [s.name for s in clean if s.dataset == dataset]
        try:
            states = wh.partition_states(dataset, names)
        except WarehouseError as exc:
            defects.append(Defect(f"dataset {dataset}", f"the partitions look-up failed: {exc}"))
            continue
        for name, why in sorted(states.errors.items()):
            family = next(family_of(s) for s in clean if s.name == name)
            defects.append(Defect(f"table {dataset}.{name}", why, family))
        for name, days in states.items():
            table = facts.tables[(dataset, name)]
            if not days or not table.rows:
                continue
            newest = chunk_ranges([d.day for d in days], DateRange())[-1]
            rows = sum(d.rows for d in days if newest.holds(d.day))
            out[(dataset, name)] = table.bytes * rows // max(table.rows, 1)
    return out, defects
