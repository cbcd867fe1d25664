"""Faults written into the synthetic warehouse on demand, each recorded exactly as written."""

# Each kind reproduces one thing that went wrong in production (DOMAIN), so a test can build a
# warehouse with it and assert what the gate reports. A fault is asked for as
# `KIND[=VALUE]:TARGET[+TARGET...]`, a TARGET being a feature table or a family (all its tables).

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bqx_assets.core.catalog import Table
from bqx_assets.core.errors import WarehouseError
from bqx_assets.core.layout import KEY, KEY_TYPE, PAIR_COLUMN

FAULT_KINDS: Mapping[str, str] = MappingProxyType(
    {
        "ragged": "each table cut at its own LIMIT: it ends a random 1..VALUE % of the spine "
        "before the spine's end (default 0.5)",
        "stale": "the tables stopped updating VALUE % of the spine before its end (default 3)",
        "dupkeys": "VALUE rows written twice, timestamps included (default 10)",
        "unit": "keys in the wrong unit: microseconds written as nanoseconds (1970 dates)",
        "allnull": "every column but the key null (a whole family, when TARGET is a family)",
        "leak": "the first FLOAT64 column holds target VALUE of the table's pair "
        "(default target_bqx45_h15) under its innocent name",
        "dropcol": "column VALUE dropped (default: the table's last FLOAT64 column)",
        "retype": "column VALUE written as STRING (default: the table's last FLOAT64 column)",
        "nulls": "each column's null cells, as the training file sees them, multiplied by VALUE "
        "(default 2): the null-share drift between two builds",
    }
)
"""Fault kinds and what each writes; VALUE is the optional `=VALUE` of the request."""

DEFAULT_VALUES: Mapping[str, str] = MappingProxyType(
    {"ragged": "0.5", "stale": "3", "dupkeys": "10", "leak": "target_bqx45_h15", "nulls": "2"}
)


class FaultError(WarehouseError):
    """A fault request that cannot be written (unknown kind, table, family or column)."""


@dataclass(frozen=True)
class FaultSpec:
    """A fault as asked for: kind, targets (tables or families) and the optional value."""

    kind: str
    targets: tuple[str, ...]
    value: str | None = None

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """`KIND[=VALUE]:TARGET[+TARGET...]`, e.g. `stale=3:tri_agg_bqx_eur_usd_gbp+csi_agg_eur`."""
        head, sep, targets = text.partition(":")
        kind, _, value = head.partition("=")
        if not sep or not targets.strip("+"):
            raise FaultError(f"fault {text!r}: expected KIND[=VALUE]:TARGET[+TARGET...]")
        if kind not in FAULT_KINDS:
            raise FaultError(
                f"fault {text!r}: unknown kind {kind!r}; kinds: {', '.join(FAULT_KINDS)}"
            )
        return cls(kind, tuple(t for t in targets.split("+") if t), value or None)

    def resolve(self, tables: Mapping[str, Table]) -> tuple[str, ...]:
        """The feature tables the targets name, in catalog order (a family names all of its)."""
        chosen: set[str] = set()
        for target in self.targets:
            if target in tables:
                chosen.add(target)
                continue
            family = [name for name, t in tables.items() if t.family == target]
            if not family:
                raise FaultError(
                    f"fault {self.kind}: {target!r} is neither a feature table nor a family of "
                    "this warehouse"
                )
            chosen.update(family)
        return tuple(name for name in tables if name in chosen)


@dataclass(frozen=True)
class Fault:
    """A fault as written into the warehouse (`EmbeddedWarehouse.faults()` reads it back).

    `counts`, per table: ragged and stale: rows the table kept; dupkeys: rows written twice;
    nulls: null cells of the table left-joined onto the spine, after; other kinds: rows.
    """

    kind: str
    tables: tuple[str, ...]
    value: str | None = None
    """ragged, stale: % of the spine; dupkeys: rows; nulls: factor; leak: `targets_{pair}.{col}`;
    retype: the new type."""
    column: str | None = None
    """leak, dropcol, retype: the column changed."""
    counts: tuple[int, ...] = ()

    def to_row(self) -> tuple[str, str, str | None, str | None, str]:
        return (self.kind, json.dumps(self.tables), self.value, self.column,
                json.dumps(self.counts))  # fmt: skip

    @classmethod
    def from_row(cls, row: Sequence) -> Fault:
        kind, tables, value, column, counts = row
        return cls(kind, tuple(json.loads(tables)), value, column, tuple(json.loads(counts)))


@dataclass(frozen=True)
class FaultContext:
    """What writing a fault needs besides the table: the spine, a per-name random stream and the
    targets of a pair (for a leak)."""

    spine: np.ndarray
    rng: Callable[[str], np.random.Generator]
    targets_of: Callable[[str], pa.Table]
    leak_pair: Callable[[Table], str]


def _float_column(table: Table, value: str | None, kind: str, *, last: bool) -> str:
    if value is not None:
        if value not in {c.name for c in table.columns}:
            raise FaultError(f"fault {kind}: table {table.name} has no column {value!r}")
        return value
    floats = [c.name for c in table.columns if c.dtype == "FLOAT64" and c.role == "feature"]
    if not floats:
        raise FaultError(f"fault {kind}: table {table.name} has no FLOAT64 column")
    return floats[-1] if last else floats[0]


def _number(spec: FaultSpec) -> float:
    text = spec.value or DEFAULT_VALUES[spec.kind]
    try:
        number = float(text)
    except ValueError:
        raise FaultError(f"fault {spec.kind}: value {text!r} is not a number") from None
    if number <= 0:
        raise FaultError(f"fault {spec.kind}: value {text!r} must be positive")
    return number


def _keep_before(data: pa.Table, cutoff: np.datetime64) -> pa.Table:
    keys = data.column(KEY).cast(pa.int64()).to_numpy()
    return data.slice(
        0, int(np.searchsorted(keys, cutoff.astype("datetime64[us]").astype(np.int64)))
    )


def _spine_nulls(data: pa.Table, name: str, spine: np.ndarray) -> tuple[np.ndarray, int]:
    """(validity of the column on rows whose key is on the spine, null cells on the spine)."""
    keys = data.column(KEY).cast(pa.int64()).to_numpy()
    on_spine = np.isin(keys, spine.astype(np.int64))
    column = data.column(name)
    valid = ~column.is_null().to_numpy(zero_copy_only=False) & on_spine
    return valid, len(spine) - int(np.count_nonzero(valid))


def apply_fault(
    spec: FaultSpec, table: Table, data: pa.Table, ctx: FaultContext
) -> tuple[pa.Table, Fault]:
    """`data` (one table's rows) with the fault written in, and the record of what was written."""
    n = len(ctx.spine)
    kind, value, column = spec.kind, spec.value, None
    rows = data.num_rows
    if kind in ("ragged", "stale"):
        share = _number(spec) / 100
        cut = max(1, round(share * n))
        if kind == "ragged":
            cut = int(ctx.rng(f"fault/ragged/{table.name}").integers(1, cut + 1))
        data = _keep_before(data, ctx.spine[max(0, n - cut)])
        value, count = f"{_number(spec):g}", data.num_rows
    elif kind == "dupkeys":
        repeat = int(_number(spec))
        if repeat > rows:
            raise FaultError(f"fault dupkeys: table {table.name} has {rows} rows, not {repeat}")
        picks = np.sort(ctx.rng(f"fault/dupkeys/{table.name}").choice(rows, repeat, replace=False))
        merged = pa.concat_tables([data, data.take(picks)])
        data = merged.take(pc.sort_indices(merged, [(KEY, "ascending")]))
        value, count = str(repeat), repeat
    elif kind == "unit":
        wrong = pc.divide(data.column(KEY).cast(pa.int64()), 1000).cast(KEY_TYPE)
        data = data.set_column(data.schema.get_field_index(KEY), KEY, wrong)
        count = rows
    elif kind == "allnull":
        for i, field in enumerate(data.schema):
            if field.name not in (KEY, PAIR_COLUMN):
                data = data.set_column(i, field, pa.nulls(rows, field.type))
        count = rows
    elif kind == "leak":
        column = _float_column(table, None, kind, last=False)
        target = value or DEFAULT_VALUES["leak"]
        pair = ctx.leak_pair(table)
        targets = ctx.targets_of(pair)
        if target not in targets.schema.names:
            raise FaultError(f"fault leak: targets_{pair} has no column {target!r}")
        where = pc.index_in(data.column(KEY), value_set=targets.column(KEY))
        leaked = targets.column(target).take(where)
        data = data.set_column(data.schema.get_field_index(column), column, leaked)
        value, count = f"targets_{pair}.{target}", rows
    elif kind in ("dropcol", "retype"):
        column = _float_column(table, value, kind, last=True)
        index = data.schema.get_field_index(column)
        if kind == "dropcol":
            data, value = data.remove_column(index), None
        else:
            data = data.set_column(index, column, pc.cast(data.column(column), pa.string()))
            value = "STRING"
        count = rows
    else:  # nulls
        factor = _number(spec)
        after = 0
        for i, field in enumerate(data.schema):
            if field.name in (KEY, PAIR_COLUMN):
                continue
            valid, nulls = _spine_nulls(data, field.name, ctx.spine)
            extra = min(round(nulls * (factor - 1)), int(np.count_nonzero(valid)))
            if extra:
                mask = data.column(i).is_null().to_numpy(zero_copy_only=False)
                mask[np.flatnonzero(valid)[:extra]] = True
                values = data.column(i).combine_chunks()
                data = data.set_column(i, field, pc.if_else(pa.array(mask), None, values))
            after += nulls + extra
        value, count = f"{factor:g}", after
    return data, Fault(kind, (table.name,), value, column, (count,))


def merge_records(records: Iterable[Fault]) -> Fault:
    """One record for a fault written table by table."""
    records = list(records)
    first = records[0]
    return Fault(
        first.kind,
        tuple(t for r in records for t in r.tables),
        first.value,
        first.column,
        tuple(c for r in records for c in r.counts),
    )
