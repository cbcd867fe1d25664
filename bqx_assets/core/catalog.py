"""The catalog: pairs, their feature tables (family, scope, columns, dtypes) and targets tables."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

from bqx_assets.core.errors import CatalogError
from bqx_assets.core.layout import (
    ARROW_TYPES,
    KEY,
    PAIR_COLUMN,
    PREFIX_SEPARATOR,
    SHARED_OWNER,
)

log = logging.getLogger(__name__)

CURRENCIES: tuple[str, ...] = ("eur", "usd", "gbp", "jpy", "chf", "aud", "cad", "nzd")
PAIRS: tuple[str, ...] = (
    "eurusd", "gbpusd", "usdjpy", "usdchf", "audusd", "usdcad", "nzdusd", "eurgbp", "eurjpy",
    "eurchf", "euraud", "eurcad", "eurnzd", "gbpjpy", "gbpchf", "gbpaud", "gbpcad", "gbpnzd",
    "audjpy", "audchf", "audcad", "audnzd", "nzdjpy", "nzdchf", "nzdcad", "cadjpy", "cadchf",
    "chfjpy",
)  # fmt: skip
WINDOWS: tuple[int, ...] = (45, 90, 180, 360, 720, 1440, 2880)
HORIZONS: tuple[int, ...] = (15, 30, 45, 60, 75, 90, 105)
TARGET_COLUMNS: tuple[str, ...] = tuple(f"target_bqx{w}_h{h}" for w in WINDOWS for h in HORIZONS)

TARGETS_FAMILY = "targets"
"""The family a pair's targets table stands in when tables are counted by family."""
FAMILY_ORDER: tuple[str, ...] = (
    "agg", "align", "der", "div", "mom", "mrt", "reg", "rev", "vol", "base", "ext", "cyc", "tmp",
    "lag", "regime", "corr", "cov", "tri", "mkt", "var", "csi",
)  # fmt: skip
SHARED_PREFIXES: tuple[str, ...] = ("tri_", "mkt_", "var_", "csi_")
"""Tables with these prefixes are used by every pair (DOMAIN: the 411 shared tables)."""

DTYPES = frozenset(ARROW_TYPES)
"""BigQuery column types the catalog accepts: those with an Arrow type in the checkpoints."""
Scope = Literal["pair", "cov", "corr", "shared"]
Role = Literal["feature", "leak"]

_LEAK = re.compile(r"^target_")
_DEFAULT_PATH = Path(__file__).with_name("catalog.json")

# -- names ------------------------------------------------------------------------------------
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""A name the catalog accepts for a pair, dataset, table or column: an unquoted GoogleSQL
identifier (letters, digits and underscores, not starting with a digit:
https://cloud.google.com/bigquery/docs/reference/standard-sql/lexical#identifiers). Every such
name is a valid dataset name (https://cloud.google.com/bigquery/docs/datasets#dataset-naming),
table name (https://cloud.google.com/bigquery/docs/tables#table_naming) and column name
(https://cloud.google.com/bigquery/docs/schemas#column_names), a subset of each; and, with no
`.`, `/`, `\\` or space, a safe folder and object name, since chunks are stored under
`{pair}/{table}/` (`layout.chunk_folder`) and a catalog file is user input."""
PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{0,28}[a-z0-9]|[a-z]")
"""The characters of a Google Cloud project ID: lowercase letters, digits and hyphens, starting
with a letter, not ending with a hyphen, at most 30
(https://cloud.google.com/resource-manager/docs/creating-managing-projects#before_you_begin;
the rule's minimum of 6 is left to Google, which refuses a shorter ID itself)."""
NAME_BYTES: Mapping[str, int] = MappingProxyType(
    {"dataset": 1024, "table": 255, "pair": 255, "family": 255, "column": 300}
)
"""Longest name of each kind, in bytes: BigQuery's limits (datasets 1,024 characters, columns
300), and 255 for the names that are folders of the checkpoint root (a table's chunks, a pair's
tables: NAME_MAX on Linux), below BigQuery's 1,024 for tables."""
RESERVED_COLUMN_PREFIXES: tuple[str, ...] = (
    "_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLIDENTIFIER",
)  # fmt: skip
"""Column-name prefixes BigQuery reserves, in any case
(https://cloud.google.com/bigquery/docs/schemas#column_names)."""
SCOPES: tuple[str, ...] = get_args(Scope)


@dataclass(frozen=True, slots=True)
class Column:
    """One extracted column of a warehouse table (BigQuery type name)."""

    name: str
    dtype: str

    @property
    def role(self) -> Role:
        """`leak` for a column that carries a target into a feature table (DOMAIN: base_bqx)."""
        return "leak" if _LEAK.match(self.name) else "feature"


@dataclass(frozen=True, slots=True)
class Table:
    """A feature table in the warehouse and the pairs whose training files use it."""

    name: str
    dataset: str
    family: str
    scope: Scope
    pairs: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def owner(self) -> str:
        """Checkpoint folder: the pair for a pair's own tables, `shared` for shared and cov tables
        (used by several pairs, so extracted once)."""
        return self.pairs[0] if self.scope in ("pair", "corr") else SHARED_OWNER

    def stem(self, pair: str) -> str:
        """The table name with its `_{pair}` token removed (the first team's prefix rule)."""
        tokens = self.name.split("_")
        if pair in tokens:
            tokens.remove(pair)
        return "_".join(tokens)


@dataclass(frozen=True, slots=True)
class TargetsTable:
    """`targets_{pair}`: the spine of the pair's training file and its 49 targets."""

    name: str
    dataset: str
    pair: str
    columns: tuple[Column, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.name.startswith("target_"))


@dataclass(frozen=True, slots=True)
class FeatureColumn:
    """A column of the training file and where it came from."""

    name: str
    table: Table
    column: Column

    @property
    def family(self) -> str:
        return self.table.family


def feature_name(stem: str, column: str) -> str:
    """Training-file name of a feature: `{table stem}__{column}`; split on `__` to reverse it."""
    return f"{stem}{PREFIX_SEPARATOR}{column}"


@dataclass(frozen=True)
class Catalog:
    """Every pair's feature tables and targets table, in catalog order."""

    project: str
    features_dataset: str
    targets_dataset: str
    pairs: tuple[str, ...]
    tables: Mapping[str, Table]
    targets: Mapping[str, TargetsTable]
    excluded: Mapping[str, str] = field(default_factory=dict)
    """Warehouse tables left out of the catalog, with the reason."""

    def __post_init__(self) -> None:
        _check_names(self)
        unknown = sorted({p for t in self.tables.values() for p in t.pairs} - set(self.pairs))
        if unknown:
            raise CatalogError(f"catalog tables name pairs that are not in the catalog: {unknown}")
        missing = [p for p in self.pairs if p not in self.targets]
        if missing:
            raise CatalogError(f"catalog has no targets table for pairs {missing}")

    # -- lookups ---------------------------------------------------------------------------
    def check_pair(self, pair: str) -> str:
        if pair not in self.pairs:
            raise CatalogError(f"unknown pair {pair!r}; the catalog has {', '.join(self.pairs)}")
        return pair

    @cached_property
    def _by_pair(self) -> dict[str, tuple[Table, ...]]:
        by_pair: dict[str, list[Table]] = {p: [] for p in self.pairs}
        for table in self.tables.values():
            for pair in table.pairs:
                by_pair[pair].append(table)
        return {p: tuple(ts) for p, ts in by_pair.items()}

    def tables_for(self, pair: str) -> tuple[Table, ...]:
        """The pair's feature tables in catalog order (shared tables are the same objects)."""
        return self._by_pair[self.check_pair(pair)]

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise CatalogError(f"table {name!r} is not in the catalog") from None

    def shared_tables(self) -> tuple[Table, ...]:
        """Tables used by every pair: extracted once per refresh."""
        return tuple(t for t in self.tables.values() if t.scope == "shared")

    def families(self) -> tuple[str, ...]:
        present = {t.family for t in self.tables.values()}
        return tuple(f for f in FAMILY_ORDER if f in present) + tuple(
            sorted(present - set(FAMILY_ORDER))
        )

    def feature_columns(
        self, pair: str, *, include_leaks: bool = False
    ) -> tuple[FeatureColumn, ...]:
        """The pair's training-file features in order; `target_*` columns of feature tables are
        leaks (DOMAIN: base_bqx) and left out unless asked for."""
        out: list[FeatureColumn] = []
        seen: dict[str, tuple[str, str]] = {}
        for table in self.tables_for(pair):
            stem = table.stem(pair)
            for column in table.columns:
                if column.role == "leak" and not include_leaks:
                    continue
                name = feature_name(stem, column.name)
                if name in seen:
                    first = seen[name]
                    raise CatalogError(
                        f"pair {pair}: feature name {name!r} comes from both "
                        f"{first[0]}.{first[1]} and {table.name}.{column.name}"
                    )
                seen[name] = (table.name, column.name)
                out.append(FeatureColumn(name, table, column))
        return tuple(out)

    def leak_columns(self, pair: str) -> tuple[FeatureColumn, ...]:
        """Columns of the pair's feature tables kept out of the training file as target leakage."""
        features = {f.name for f in self.feature_columns(pair)}
        return tuple(
            f for f in self.feature_columns(pair, include_leaks=True) if f.name not in features
        )

    def training_columns(self, pair: str) -> tuple[str, ...]:
        """Every column of the pair's training file, in order: key, targets, features."""
        targets = self.targets[self.check_pair(pair)].targets
        return (KEY, *targets, *(f.name for f in self.feature_columns(pair)))

    def source_of(self, pair: str, name: str) -> tuple[str, str]:
        """Reverse of the prefix rule: (table, column) of a training-file feature column."""
        stem, sep, column = name.partition(PREFIX_SEPARATOR)
        if not sep:
            raise CatalogError(f"{name!r} is not a feature name of the form <table stem>__<column>")
        for table in self.tables_for(pair):
            if table.stem(pair) == stem and any(c.name == column for c in table.columns):
                return table.name, column
        raise CatalogError(
            f"pair {pair}: no catalog table has stem {stem!r} with column {column!r}"
        )

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        schemas: dict[tuple[tuple[str, str], ...], int] = {}

        def schema_id(columns: Sequence[Column]) -> int:
            key = tuple((c.name, c.dtype) for c in columns)
            return schemas.setdefault(key, len(schemas))

        tables = [
            {
                "name": t.name,
                "family": t.family,
                "scope": t.scope,
                "pairs": list(t.pairs),
                "schema": schema_id(t.columns),
            }
            for t in self.tables.values()
        ]
        targets = {
            p: {"name": t.name, "schema": schema_id(t.columns)} for p, t in self.targets.items()
        }
        return {
            "format": 1,
            "project": self.project,
            "features_dataset": self.features_dataset,
            "targets_dataset": self.targets_dataset,
            "pairs": list(self.pairs),
            "schemas": [[list(c) for c in s] for s in schemas],
            "tables": tables,
            "targets": targets,
            "excluded": dict(sorted(self.excluded.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Catalog:
        try:
            schemas = [tuple(Column(n, d) for n, d in s) for s in data["schemas"]]
            tables = {
                t["name"]: Table(
                    name=t["name"],
                    dataset=data["features_dataset"],
                    family=t["family"],
                    scope=t["scope"],
                    pairs=tuple(t["pairs"]),
                    columns=schemas[t["schema"]],
                )
                for t in data["tables"]
            }
            targets = {
                p: TargetsTable(t["name"], data["targets_dataset"], p, schemas[t["schema"]])
                for p, t in data["targets"].items()
            }
            return cls(
                project=data["project"],
                features_dataset=data["features_dataset"],
                targets_dataset=data["targets_dataset"],
                pairs=tuple(data["pairs"]),
                tables=tables,
                targets=targets,
                excluded=dict(data.get("excluded", {})),
            )
        except (KeyError, IndexError, TypeError) as exc:
            raise CatalogError(f"malformed catalog data: {exc!r}") from exc

    def dump(self, path: Path | str) -> Path:
        """Write the catalog as JSON, one schema or table per line (diffable, deterministic)."""
        path = Path(path)
        data = self.to_dict()
        lines = ["{"]
        for i, (key, value) in enumerate(data.items()):
            comma = "," if i < len(data) - 1 else ""
            if isinstance(value, list) and key in ("schemas", "tables"):
                items = [json.dumps(v, separators=(",", ":")) for v in value]
                body = ",\n    ".join(items)
                lines.append(f'  "{key}": [\n    {body}\n  ]{comma}')
            else:
                lines.append(f'  "{key}": {json.dumps(value)}{comma}')
        lines.append("}")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str | None = None) -> Catalog:
        """Load a catalog file (default: the checked-in production catalog)."""
        path = Path(path) if path else _DEFAULT_PATH
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CatalogError(f"catalog file {path} does not exist") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise CatalogError(f"catalog file {path} is unreadable: {exc}") from exc

    def subset(self, pairs: Iterable[str]) -> Catalog:
        """The catalog restricted to some pairs (tables used by none of them are dropped)."""
        keep = tuple(p for p in self.pairs if p in set(pairs))
        tables = {}
        for name, t in self.tables.items():
            used = tuple(p for p in t.pairs if p in keep)
            if used:
                tables[name] = t if used == t.pairs else _replace_pairs(t, used)
        return Catalog(
            self.project,
            self.features_dataset,
            self.targets_dataset,
            keep,
            tables,
            {p: self.targets[p] for p in keep},
            dict(self.excluded),
        )


_RULE = "not letters, digits and underscores starting with a letter or underscore"
_SHOWN_FAULTS = 10


def _name_fault(kind: str, name: object) -> str | None:
    """Why `name` cannot be the name of a `kind` (a key of NAME_BYTES), or None."""
    if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
        return _RULE
    if len(name.encode()) > NAME_BYTES[kind]:
        return f"longer than {NAME_BYTES[kind]} bytes"
    return None


def _column_faults(columns: Sequence[Column], owner: str) -> Iterator[str]:
    seen: dict[str, str] = {}
    for column in columns:
        what = f"column {column.name!r} of {owner}"
        if why := _name_fault("column", column.name):
            yield f"{what}: {why}"
            continue
        upper = column.name.upper()
        if upper.startswith(RESERVED_COLUMN_PREFIXES):
            yield f"{what}: BigQuery reserves the prefixes {', '.join(RESERVED_COLUMN_PREFIXES)}"
        if upper in seen:
            # Column names are case-insensitive: no two may differ only by case.
            yield f"{what}: the same name as column {seen[upper]!r}"
        seen.setdefault(upper, column.name)
        if column.dtype not in DTYPES:
            yield f"{what}: type {column.dtype!r} is not one of {', '.join(sorted(DTYPES))}"


def _name_faults(catalog: Catalog) -> Iterator[str]:
    """Each entry of the catalog that BigQuery or a storage path cannot take, named."""
    if not isinstance(catalog.project, str) or not PROJECT_ID.fullmatch(catalog.project):
        yield (
            f"project {catalog.project!r}: not a project ID (up to 30 lowercase letters, digits "
            "or hyphens, starting with a letter, not ending with a hyphen)"
        )
    # Each dataset once, named where it is first found.
    datasets = {
        catalog.features_dataset: "features dataset",
        catalog.targets_dataset: "targets dataset",
    }
    for t in [*catalog.tables.values(), *catalog.targets.values()]:
        datasets.setdefault(t.dataset, f"dataset of table {t.name!r}")
    for name, what in datasets.items():
        if why := _name_fault("dataset", name):
            yield f"{what} {name!r}: {why}"
    for pair in catalog.pairs:
        if why := _name_fault("pair", pair):
            yield f"pair {pair!r}: {why}"
        elif pair == SHARED_OWNER:
            yield f"pair {pair!r}: the name of the checkpoints' folder of shared tables"
    schemas: dict[int, str] = {}
    for table in catalog.tables.values():
        what = f"table {table.name!r}"
        if why := _name_fault("table", table.name):
            yield f"{what}: {why}"
            continue
        if PREFIX_SEPARATOR in table.name:
            # Training-file columns are `{stem}__{column}`, split at the first separator.
            yield f"{what}: holds {PREFIX_SEPARATOR!r}, which separates a table from its columns"
        if why := _name_fault("family", table.family):
            yield f"family {table.family!r} of {what}: {why}"
        if table.scope not in SCOPES:
            yield f"scope {table.scope!r} of {what}: not one of {', '.join(SCOPES)}"
        schemas.setdefault(id(table.columns), what)
    for pair, target in catalog.targets.items():
        what = f"targets table {target.name!r} of pair {pair!r}"
        if why := _name_fault("table", target.name):
            yield f"{what}: {why}"
        schemas.setdefault(id(target.columns), what)
    # Tables share their column tuples (one per schema of the catalog file): each checked once.
    columns = {
        id(t.columns): t.columns for t in [*catalog.tables.values(), *catalog.targets.values()]
    }
    for ident, owner in schemas.items():
        yield from _column_faults(columns[ident], owner)


def _check_names(catalog: Catalog) -> None:
    """Refuses a catalog with a name BigQuery or a storage path cannot take, naming each entry
    (up to ten). The names of the warehouse tables the catalog leaves out (`excluded`) are not
    checked: nothing reads them or stores anything under them."""
    faults = list(_name_faults(catalog))
    if faults:
        more = len(faults) - _SHOWN_FAULTS
        raise CatalogError(
            "catalog entries that are not safe BigQuery names: "
            + "; ".join(faults[:_SHOWN_FAULTS])
            + (f"; and {more} more" if more > 0 else "")
        )


def _replace_pairs(table: Table, pairs: tuple[str, ...]) -> Table:
    return Table(table.name, table.dataset, table.family, table.scope, pairs, table.columns)


# -- refresh from INFORMATION_SCHEMA ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SchemaRow:
    """One row of `INFORMATION_SCHEMA.COLUMNS`."""

    dataset: str
    table: str
    column: str
    ordinal: int
    dtype: str


def _pairs_in(name: str, pairs: Sequence[str]) -> tuple[str, ...]:
    tokens = name.split("_")
    return tuple(p for p in pairs if p in tokens)


def _scope(name: str, family: str) -> Scope | None:
    # Scope comes from the name alone (against every known pair), so a catalog refreshed for a
    # subset of pairs gives a table the same scope as the full catalog does.
    in_name = _pairs_in(name, PAIRS)
    if not in_name:
        return "shared" if name.startswith(SHARED_PREFIXES) else None
    if len(in_name) == 2:
        return "cov"
    return "corr" if family == "corr" else "pair"


def catalog_from_schema(
    rows: Iterable[SchemaRow],
    *,
    project: str,
    features_dataset: str,
    targets_dataset: str,
    pairs: Sequence[str] = PAIRS,
) -> Catalog:
    """Build the catalog from a warehouse's `INFORMATION_SCHEMA.COLUMNS` rows.

    Per pair: every feature table whose name contains the pair as a token, and every table starting
    with `tri_`, `mkt_`, `var_` or `csi_` (not ending `_summary`). Tables without `interval_time`
    are not feature tables: they are left out and logged with the reason.
    """
    by_table: dict[tuple[str, str], list[SchemaRow]] = {}
    for row in rows:
        by_table.setdefault((row.dataset, row.table), []).append(row)

    excluded: dict[str, str] = {}
    tables: list[Table] = []
    targets: dict[str, TargetsTable] = {}
    for (dataset, name), cols in sorted(by_table.items()):
        cols.sort(key=lambda r: r.ordinal)
        names = [c.column for c in cols]
        if dataset == targets_dataset:
            pair = name.removeprefix("targets_")
            if name.startswith("targets_") and pair in pairs:
                if KEY not in names:
                    raise CatalogError(f"targets table {dataset}.{name} has no {KEY} column")
                columns = tuple(
                    Column(c.column, c.dtype) for c in cols if c.column not in (KEY, PAIR_COLUMN)
                )
                targets[pair] = TargetsTable(name, dataset, pair, columns)
            continue
        if dataset != features_dataset:
            continue
        family = name.split("_")[0]
        in_name = _pairs_in(name, pairs)
        scope = _scope(name, family)
        if scope is None:
            excluded[name] = "used by no pair (no pair in its name and no shared prefix)"
        elif scope != "shared" and not in_name:
            excluded[name] = "belongs to pairs outside this catalog"
        elif name.endswith("_summary"):
            excluded[name] = "summary table (not a per-minute feature table)"
        elif KEY not in names:
            excluded[name] = f"no {KEY} column"
        else:
            columns = []
            for c in cols:
                if c.column in (KEY, PAIR_COLUMN):
                    continue
                if c.dtype not in DTYPES:
                    raise CatalogError(
                        f"{dataset}.{name}.{c.column} has unsupported type {c.dtype}"
                    )
                columns.append(Column(c.column, c.dtype))
            used_by = in_name if scope != "shared" else tuple(pairs)
            tables.append(Table(name, dataset, family, scope, used_by, tuple(columns)))
            continue
        log.info("catalog: leaving out %s.%s: %s", dataset, name, excluded[name])

    order = {f: i for i, f in enumerate(FAMILY_ORDER)}
    tables.sort(
        key=lambda t: (order.get(t.family, len(order)), t.family)
    )  # stable: keeps name order
    missing = [p for p in pairs if p not in targets]
    if missing:
        raise CatalogError(f"{targets_dataset} has no targets table for pairs {missing}")
    return Catalog(
        project=project,
        features_dataset=features_dataset,
        targets_dataset=targets_dataset,
        pairs=tuple(pairs),
        tables={t.name: t for t in tables},
        targets=targets,
        excluded=excluded,
    )
