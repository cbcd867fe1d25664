"""What the gate accepts: one dataclass, its production defaults, and what each field means."""

# Every number of the gate is a field default here. Each field also carries a `Knob`: a line
# for people, its unit and, where it differs from `--{name}`, its command-line flag. The CLI's
# flags (cli/commands/validate.py), the Dagster config (defs/resources.py: `GateConfig`) and the
# check descriptions the UI shows (descriptions.py) are generated from these fields.

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from bqx_assets.core.errors import ValidationError

if TYPE_CHECKING:
    from bqx_assets.core.warehouse.base import DateRange

Unit = Literal["rows", "share", "factor", "bytes", "names", "column", "time", "switch"]
"""share: a fraction from 0 to 1 (of cells, keys or a reference share); time: an ISO date or
time, UTC unless it says otherwise; switch: on or off."""

UNIT_TEXT: Mapping[Unit, str] = {
    "rows": "rows",
    "share": "a share, 0-1",
    "factor": "a factor, at least 1",
    "bytes": "bytes",
    "names": "names",
    "column": "column names",
    "time": "ISO date or time, UTC",
    "switch": "on or off",
}
"""Each unit as a help text writes it."""

Kind = Literal["int", "float", "bool", "per_family", "names", "time"]
"""How a field's value is written: a number, a switch, FAMILY=SHARE pairs (a mapping), a list of
names, or a time."""

PRODUCTION_NULL_SHARES: Mapping[str, float] = {"corr": 0.53, "tri": 0.24, "cov": 0.10}
"""Null share of the families that are null by construction in production (DOMAIN): ETF trading
hours, late-starting sources, cross-pair feed outages."""
PRODUCTION_OTHER_NULL_SHARE = 0.024
"""Null share of every other family in production (rolling-window warm-ups): what is left of
the 12.4% overall once corr, tri and cov are counted."""
PRODUCTION_NULL_TOLERANCE: Mapping[str, float] = {"corr": 0.30, "tri": 0.15}
"""Per-family tolerances wider than the default: corr's share depends on where the spine's ends
fall in the ETF's trading hours (80% null for a spine of one morning), one tri source alone may
start 39% of the way in."""
PRODUCTION_MIN_COVERAGE: Mapping[str, float] = {"corr": 0.10}
"""Share of the spine's keys a table of these families has at least: corr tables have rows only
while their ETF quotes (about half of the FX minutes; a fifth of a spine of one morning)."""
_KEY_START, _KEY_END = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
"""Keys outside production's possible range (the series start in the 2000s)."""


@dataclass(frozen=True)
class Knob:
    """What a threshold means to a person and to a command line."""

    help: str
    """One line: what the value bounds."""
    unit: Unit
    flag: str | None = None
    """Command-line flag when it is not `--{name}` with dashes (the names `bqx validate` had)."""
    scale: int = 1
    """The flag's value times this is the field's (`--max-footer-mb` for `max_footer_bytes`)."""
    flag_unit: str | None = None
    """The flag's unit when it is scaled."""


def _knob(default: Any, unit: Unit, help: str, **more: Any) -> Any:
    """A field with its production default and its `Knob`; a mapping is copied per instance."""
    meta = {"knob": Knob(help, unit, **more)}
    if isinstance(default, Mapping):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Thresholds:
    """What the gate accepts; the defaults are the production values."""

    min_rows: int = _knob(150_000, "rows", "fewest rows a training file may have")
    max_rows: int = _knob(200_000, "rows", "most rows a training file may have")
    target_null_share: float = _knob(0.01, "share", "largest null share of each target")
    feature_null_share: float = _knob(
        PRODUCTION_OTHER_NULL_SHARE,
        "share",
        "expected null share of a family not given in family_null_share",
    )
    """Null cells / cells of the family."""
    family_null_share: Mapping[str, float] = _knob(
        PRODUCTION_NULL_SHARES,
        "share",
        "expected null share per family; given, it replaces the defaults",
    )
    null_share_tolerance: float = _knob(
        0.05,
        "share",
        "a family may be this much (absolute) more null than expected",
        flag="--null-tolerance",
    )
    family_null_tolerance: Mapping[str, float] = _knob(
        PRODUCTION_NULL_TOLERANCE,
        "share",
        "per-family overrides of null_share_tolerance; given, they replace the defaults",
    )
    require_coverage: bool = _knob(
        True, "switch", "fail when the file has no coverage record (not written by the merge)"
    )
    min_coverage: float = _knob(
        0.5, "share", "share of the spine's keys every feature table covers at least"
    )
    """Tri sources start late: up to 39% of the spine."""
    family_min_coverage: Mapping[str, float] = _knob(
        PRODUCTION_MIN_COVERAGE,
        "share",
        "per-family overrides of min_coverage; given, they replace the defaults",
    )
    tail_tolerance_rows: int = _knob(
        2, "rows", "last spine minutes a table may miss that it had on the previous trading day"
    )
    """A table with trading hours is not expected to have rows after they close."""
    newest_null_tolerance: float = _knob(
        0.10,
        "share",
        "allowed excess null share of the newest day over the same minutes of the previous "
        "trading day, per family",
    )
    """Of the values the tables have (absolute)."""
    drift_family_null_share: float = _knob(
        0.005,
        "share",
        "a family's null share may move this much from the last profile (or drift_relative of it)",
    )
    drift_column_null_share: float = _knob(
        0.01,
        "share",
        "a column's null share may move this much from the last profile (or drift_relative of it)",
    )
    drift_relative: float = _knob(
        0.25, "share", "relative part of the drift tolerances, of the last profile's share"
    )
    """A null share that doubles always moves too far, while one more day of data moves
    production's shares by about 1% of themselves."""
    drift_range_factor: float = _knob(
        10.0,
        "factor",
        "a column's magnitude may grow or shrink by this factor from the last profile",
    )
    """The magnitude is the larger of |min| and |max|. A unit change (x1000, a percentage for a
    share) moves it by orders of magnitude, while a day more of a rolling statistic moved it by
    at most 2.7x on the demo warehouses (and a short series' range, which is no scale, by 12x)."""
    leak_allow: tuple[str, ...] = _knob(
        (), "column", "feature column that looks like a target but is not", flag="--allow-leak"
    )
    # A `_knob` is a `dataclasses.field`, which ruff knows for immutable types only.
    key_start: datetime = _knob(_KEY_START, "time", "earliest allowed key")  # noqa: RUF009
    """A unit bug that turns keys into 1970 dates falls outside [key_start, key_end); a run
    holds keys to its training window where that is bounded (`within`)."""
    key_end: datetime = _knob(_KEY_END, "time", "keys must be before this")  # noqa: RUF009
    value_leak: bool = _knob(
        True, "switch", "also flag float features equal to a target row by row (a copied target)"
    )
    """Nominated by equal footer min/max in one row group, then compared on its values."""
    max_footer_bytes: int = _knob(
        128 * 2**20,
        "bytes",
        "refuse files whose parquet footer is larger (memory ~7.5x this)",
        flag="--max-footer-mb",
        scale=2**20,
        flag_unit="MiB",
    )
    """Refused before parsing: pyarrow holds ~7.5 bytes per footer byte (a 106 MB footer, 17,031
    columns x 44 row groups, parses to ~800 MB), so this keeps validation under 1 GiB. The first
    team's layout, 347 row groups, has a ~820 MB footer (6 GB parsed)."""
    max_names: int = _knob(20, "names", "offending names listed per list in check metadata")
    """Counts are always full."""

    def __post_init__(self) -> None:
        problems = [p for f in THRESHOLD_FIELDS for p in f.problems(getattr(self, f.name))]
        if self.min_rows > self.max_rows:
            problems.append(f"min_rows {self.min_rows:,} > max_rows {self.max_rows:,}")
        if self.key_start >= self.key_end:
            problems.append(f"key_start {self.key_start} is not before key_end {self.key_end}")
        if problems:
            raise ValidationError(f"gate thresholds: {'; '.join(problems)}")

    @property
    def key_range(self) -> tuple[datetime, datetime]:
        return self.key_start, self.key_end

    def within(self, window: DateRange) -> Thresholds:
        """These thresholds with keys held to `window` (a run's training window) where it is
        bounded."""
        return replace(
            self, key_start=window.start or self.key_start, key_end=window.end or self.key_end
        )

    def expected_null_share(self, family: str) -> float:
        return self.family_null_share.get(family, self.feature_null_share)

    def null_tolerance(self, family: str) -> float:
        return self.family_null_tolerance.get(family, self.null_share_tolerance)

    def null_threshold(self, family: str) -> float:
        return self.expected_null_share(family) + self.null_tolerance(family)

    def coverage_floor(self, family: str) -> float:
        return self.family_min_coverage.get(family, self.min_coverage)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values (mappings as dicts, names as lists, times as ISO
        text): what a config holds and `from_dict` reads back."""
        return {f.name: f.plain(getattr(self, f.name)) for f in THRESHOLD_FIELDS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Thresholds:
        """Thresholds from plain values (as `as_dict` writes them); missing fields keep their
        defaults, an unknown name or a value of the wrong shape is an error naming it."""
        by_name = {f.name: f for f in THRESHOLD_FIELDS}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ValidationError(
                f"gate thresholds: unknown {', '.join(unknown)}; known: {', '.join(by_name)}"
            )
        return cls(**{name: by_name[name].value(v) for name, v in values.items()})


@dataclass(frozen=True)
class ThresholdField:
    """One field of `Thresholds`: its name, default, how its values are written, its knob."""

    name: str
    default: Any
    kind: Kind
    knob: Knob

    @property
    def flag(self) -> str:
        return self.knob.flag or f"--{self.name.replace('_', '-')}"

    def plain(self, value: Any) -> Any:
        """The value as plain JSON."""
        if self.kind == "per_family":
            return dict(value)
        if self.kind == "names":
            return list(value)
        if self.kind == "time":
            return value.isoformat()
        return value

    def value(self, plain: Any) -> Any:
        """The field's value from a plain one (or from the field's own type)."""
        try:
            if self.kind == "per_family":
                return {str(k): float(v) for k, v in dict(plain).items()}
            if self.kind == "names":
                if isinstance(plain, str):
                    raise TypeError("a list of names, not one string")
                return tuple(str(v) for v in plain)
            if self.kind == "time":
                return parse_time(plain) if isinstance(plain, str) else _utc(plain)
            if self.kind == "bool":
                if not isinstance(plain, bool):
                    raise TypeError(f"true or false, not {plain!r}")
                return plain
            if isinstance(plain, bool):
                raise TypeError(f"a number, not {plain!r}")
            if self.kind == "float":
                return float(plain)
            number = plain if isinstance(plain, int) else float(plain)
            if number != int(number):
                raise TypeError(f"a whole number, not {plain!r}")
            return int(number)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValidationError(f"gate thresholds: {self.name}: {exc}") from None

    def problems(self, value: Any) -> list[str]:
        """Why the value is out of its unit's range (none when it is in)."""
        numbers = value.values() if self.kind == "per_family" else [value]
        if self.kind not in ("int", "float", "per_family"):
            return []
        out = []
        for v in numbers:
            if v < 0 or (self.knob.unit == "share" and v > 1):
                bounds = "from 0 to 1" if self.knob.unit == "share" else "at least 0"
                out.append(f"{self.name} {v!r} is not {bounds}")
            elif self.knob.unit == "factor" and v < 1:
                out.append(f"{self.name} {v!r} is not at least 1")
        return out

    def parse_pair(self, text: str) -> tuple[str, float]:
        """One `FAMILY=SHARE` item of a per-family field."""
        family, sep, share = text.partition("=")
        try:
            value = float(share)
        except ValueError:
            sep = ""
        if not sep or not family:
            raise ValidationError(f"{self.flag} {text!r}: expected FAMILY=SHARE")
        return family, value


def parse_time(text: str) -> datetime:
    """An ISO date or time; UTC unless it names its zone."""
    return _utc(datetime.fromisoformat(text))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _kind(default: Any) -> Kind:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, Mapping):
        return "per_family"
    if isinstance(default, tuple):
        return "names"
    if isinstance(default, datetime):
        return "time"
    raise TypeError(f"a threshold of type {type(default).__name__}")


def _fields() -> tuple[ThresholdField, ...]:
    out = []
    for f in dataclasses.fields(Thresholds):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        out.append(ThresholdField(f.name, default, _kind(default), f.metadata["knob"]))
    return tuple(out)


THRESHOLD_FIELDS: tuple[ThresholdField, ...] = _fields()
"""Every field of `Thresholds` in declaration order: what the CLI and the config derive from."""
DEFAULTS = Thresholds()
"""Production's thresholds."""
