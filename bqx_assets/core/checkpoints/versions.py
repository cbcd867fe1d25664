"""Data versions of warehouse tables from their day partitions: what changes when a chunk would."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

from bqx_assets.core.catalog import TARGETS_FAMILY, Catalog
from bqx_assets.core.checkpoints.window import (
    ALL_TIME,
    TableWindow,
    TrainingWindow,
    chunk_ranges,
    in_window,
    resolve_window,
)
from bqx_assets.core.warehouse import DateRange, PartitionState, Warehouse


def partitions_version(
    states: dict[str, Sequence[PartitionState]],
    expected: int,
    window: DateRange | TableWindow = ALL_TIME,
) -> str:
    """A data version of a set of tables from their day partitions inside `window`: it changes
    when a day a checkpoint would be made from changes (rows or last-modified time), not when a
    day outside the window does; "missing-N-..." while N of the `expected` tables are absent.
    With a `TableWindow`, the days are those its chunks would hold (a rolling window's first
    month chunk holds days before the window, and its chunks that end before it none)."""

    def counted(days: Sequence[PartitionState]) -> Iterator[PartitionState]:
        if isinstance(window, DateRange):
            yield from (p for p in days if in_window(p.day, window))
            return
        ranges = chunk_ranges([p.day for p in days], window.window, window.grain, window.after)
        yield from (p for p in days if any(r.holds(p.day) for r in ranges))

    text = "\n".join(
        sorted(
            f"{table}:{p.day.isoformat()}:{p.rows}:{p.last_modified}"
            for table, days in states.items()
            for p in counted(days)
        )
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return digest if len(states) == expected else f"missing-{expected - len(states)}-{digest}"


def family_versions(
    warehouse: Warehouse,
    catalog: Catalog,
    pair: str | None,
    families: Sequence[str],
    window: TrainingWindow,
) -> dict[str, tuple[str, int]]:
    """Per family: the data version of its tables and how many it has, for the pair's own
    tables (and its targets table, family `targets`) or, with `pair` None, the shared ones:
    from their day partitions inside the training window, resolved as a checkpoint step would
    (a rolling one from the targets tables' days), one look-up per dataset."""
    pool = catalog.tables_for(pair) if pair else catalog.shared_tables()
    names = {f: [t.name for t in pool if t.family == f] for f in families if f != TARGETS_FAMILY}
    datasets = {n: catalog.features_dataset for ns in names.values() for n in ns}
    if pair and TARGETS_FAMILY in families:
        names[TARGETS_FAMILY] = [catalog.targets[pair].name]
        datasets[catalog.targets[pair].name] = catalog.targets_dataset
    spines = [catalog.targets[pair]] if pair else [catalog.targets[p] for p in catalog.pairs]
    resolved = resolve_window(warehouse, spines, window)
    found: dict[str, tuple[PartitionState, ...]] = {}
    for dataset in sorted(set(datasets.values())):
        tables = sorted(n for n, d in datasets.items() if d == dataset)
        found.update(warehouse.partition_states(dataset, tables))
    out = {}
    for family in families:
        mine = {n: found[n] for n in names[family] if n in found}
        chunks = resolved.for_table(spine=family == TARGETS_FAMILY)
        out[family] = (partitions_version(mine, len(names[family]), chunks), len(names[family]))
    return out
