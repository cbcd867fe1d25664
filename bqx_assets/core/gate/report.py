"""What the gate expects of a file, and what it reports: each check's outcome and the families."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.gate.profile import Profile
from bqx_assets.core.layout import KEY


@dataclass(frozen=True)
class Expectation:
    """What the pair's training file must contain, from the catalog and the spine."""

    pair: str
    spine_rows: int
    columns: tuple[str, ...]
    targets: tuple[str, ...]
    family_of: Mapping[str, str]
    table_family: Mapping[str, str] = field(default_factory=dict)
    """Family of each feature table (coverage records name tables)."""

    @classmethod
    def for_pair(cls, catalog: Catalog, pair: str, spine_rows: int) -> Expectation:
        features = catalog.feature_columns(pair)
        return cls(
            pair=pair,
            spine_rows=spine_rows,
            columns=catalog.training_columns(pair),
            targets=catalog.targets[catalog.check_pair(pair)].targets,
            family_of={f.name: f.family for f in features},
            table_family={t.name: t.family for t in catalog.tables_for(pair)},
        )

    def features(self, names: Sequence[str]) -> list[int]:
        """Indexes of the feature columns among `names`: everything but the key and the
        targets, as consumers see it."""
        targets = set(self.targets)
        return [j for j, c in enumerate(names) if c != KEY and c not in targets]


@dataclass(frozen=True)
class Listing:
    """Offending (or summarised) items of a check as a small table for people: a header and
    rows of text or whole numbers (numbers with a unit are text: "53.80%")."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str | int, ...], ...]
    total: int
    """Rows before the cap: `rows` holds the first few of them."""

    @classmethod
    def of(
        cls, columns: Sequence[str], rows: Sequence[Sequence[str | int]], limit: int | None = None
    ) -> Listing:
        kept = rows if limit is None else rows[:limit]
        return cls(tuple(columns), tuple(tuple(r) for r in kept), len(rows))

    def markdown(self) -> str:
        def cell(value: str | int) -> str:
            text = f"{value:,}" if isinstance(value, int) else str(value)
            return text.replace("|", "\\|").replace("\n", " ")

        numeric = [
            bool(self.rows) and all(isinstance(r[i], int) for r in self.rows)
            for i in range(len(self.columns))
        ]
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows),
        ]
        if self.total > len(self.rows):
            lines.append(f"\n{len(self.rows)} of {self.total:,} shown")
        return "\n".join(lines)

    def to_json(self) -> list[dict[str, str | int]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


MetadataValue = str | int | float | bool | None | list[str] | Listing
"""What a check's metadata holds: numbers and text, lists of names, and listings; no nested
mappings, so that every value has a plain rendering in the UI."""


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one gate check and its metadata for people: `summary` (one line with the
    thresholds it applied), `actual` and `threshold` (one float each, so that the UI can plot
    them across builds), a few readable numbers and texts, and listings of what offends."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, MetadataValue]

    def plain_metadata(self) -> dict[str, Any]:
        """The metadata as plain JSON (listings as lists of rows)."""
        return {k: v.to_json() if isinstance(v, Listing) else v for k, v in self.metadata.items()}


@dataclass(frozen=True)
class FamilyNulls:
    """Columns and null share of one feature family in a training file."""

    family: str
    columns: int
    null_share: float
    all_null_columns: int
    threshold: float
    """The share allowed: `expected` + `tolerance`."""
    expected: float | None = None
    tolerance: float | None = None

    @property
    def allowed(self) -> str:
        """The share allowed as people read it, with what it is made of where known."""
        if self.expected is None or self.tolerance is None:
            return f"{self.threshold:.1%}"
        return f"{self.threshold:.1%} ({self.expected:.1%} + {self.tolerance * 100:g} points)"

    @property
    def passed(self) -> bool:
        return self.all_null_columns == 0 and self.null_share <= self.threshold


@dataclass(frozen=True)
class ValidationReport:
    """Every gate check of one training file, with the cost of checking it."""

    pair: str
    path: str
    rows: int
    columns: int
    outcomes: tuple[CheckOutcome, ...]
    seconds: float
    peak_rss_bytes: int
    families: tuple[FamilyNulls, ...] = ()
    profile: Profile | None = None
    """The file's profile (footer statistics and coverage): stored when the file is published,
    the reference of the pair's next build."""
    row_groups: int = 0
    """The footer holds columns x row groups chunk entries: what validation time and memory
    grow with (about 1 KiB and 2-4 us each with pyarrow)."""

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if not o.passed)

    def outcome(self, name: str) -> CheckOutcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def family_table_markdown(self) -> str:
        """Per family: columns, null share (split into nulls the merge made and nulls the
        sources had), the newest day's null share, all-null columns, threshold and verdict."""
        return family_listing(self.families, self.profile).markdown()

    def to_dict(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "path": self.path,
            "passed": self.passed,
            "rows": self.rows,
            "columns": self.columns,
            "row_groups": self.row_groups,
            "failed": list(self.failed),
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "checks": {
                o.name: {"passed": o.passed, "metadata": o.plain_metadata()} for o in self.outcomes
            },
            **self._keys(),
        }

    def _keys(self) -> dict[str, str | None]:
        """The spine's first and last key (ISO, UTC), from the merge's coverage record."""
        coverage = self.profile.coverage if self.profile is not None else None
        if coverage is None:
            return {"first_key": None, "last_key": None}
        return {"first_key": iso(coverage.first_key), "last_key": iso(coverage.last_key)}

    def summary(self) -> str:
        """A readable report: one line per check, the reasons of failures, the family table."""
        verdict = "PASSED" if self.passed else f"FAILED ({', '.join(self.failed)})"
        lines = [
            f"{self.path}: pair {self.pair}, {self.rows:,} rows x {self.columns:,} columns "
            f"in {self.row_groups} row groups: "
            f"{verdict} in {self.seconds:.2f} s, peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB",
        ]
        for o in self.outcomes:
            lines.append(f"  [{'pass' if o.passed else 'FAIL'}] {o.name}: {o.metadata['summary']}")
        if self.families:
            lines += ["", self.family_table_markdown()]
        return "\n".join(lines)


FAMILY_COLUMNS = (
    "family",
    "columns",
    "null share (all nulls)",
    "no row for the key (merge-made)",
    "null in the source's rows",
    "newest day (all nulls)",
    "all-null columns",
    "allowed (expected + tolerance)",
    "ok",
)
"""The families table; its header says which nulls each column counts (shares of the family's
cells in the whole file, or in the newest day's rows)."""


def family_listing(families: Sequence[FamilyNulls], profile: Profile | None) -> Listing:
    """Per family: columns, null share (split into nulls the merge made and nulls the sources
    had), the newest day's null share, all-null columns, the share allowed and the verdict."""
    profiles = {f.family: f for f in profile.families} if profile else {}
    rows: list[tuple[str | int, ...]] = []
    for f in families:
        p = profiles.get(f.family)
        newest = f"{p.newest_null_share:.2%}" if p and p.newest_null_share is not None else "-"
        rows.append(
            (
                f.family,
                f.columns,
                f"{f.null_share:.2%}",
                f"{p.merge_null_share:.2%}" if p else "-",
                f"{p.source_null_share:.2%}" if p else "-",
                newest,
                f.all_null_columns,
                f.allowed,
                "yes" if f.passed else "NO",
            )
        )
    return Listing.of(FAMILY_COLUMNS, rows)


def cap(names: Sequence[str], limit: int) -> list[str]:
    """At most `limit` names of a list in check metadata (its count is given beside it)."""
    return list(names[:limit])


def share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def iso(us: int) -> str:
    """A key (microseconds since the epoch) as people read it in metadata."""
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat()
