"""Production-shaped synthetic data: rolling statistics of random walks, with production's nulls."""

# The null model reproduces DOMAIN's per-family null shares of the merged training file (12.4 %
# overall; corr 53 %, tri 24 %, cov 10 %; the other families ~2.4 %) at any row count. Nulls come
# from where real data gets them, each a share of the creation size so the shares do not drift
# with it:
# - rolling windows warm up: a column ending `_{w}` is null for its first WARMUP_SHARE * w / 2880
#   of the spine (production's windows are a few thousand minutes of 177,748; a demo of 5,000 rows
#   would otherwise be all warm-up);
# - ETF correlation tables have rows only while the ETF quotes (ETF_OPEN..ETF_CLOSE on weekdays);
# - tri sources start late, each table at its own share of the spine (TRI_LATE);
# - cov tables have no rows where either pair's cross-pair feed has an outage (COV_GAPS);
# - targets are null for their look-back at the start and their horizon at the end.

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import pyarrow as pa

from bqx_assets.core.catalog import CURRENCIES, HORIZONS, PAIRS, WINDOWS, Table, TargetsTable
from bqx_assets.core.layout import KEY, KEY_TYPE, PAIR_COLUMN

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday: the week opens at 00:00
DEFAULT_SEED = 7

WARMUP_SHARE = 0.09
"""Share of the spine a `_2880` column is null at its table's start (shorter windows in
proportion)."""
ETF_OPEN, ETF_CLOSE = 8 * 60, 20 * 60
"""Minutes of the UTC day between which ETF quotes (pre-market to close) feed the corr tables."""
TRI_LATE = (0.05, 0.39)
"""Range of the share of the spine before a tri source's first row (uniform per table)."""
COV_GAPS = 3
COV_GAP_SHARE = 0.047
"""Outages per pair's cross-pair feed, and the share of the spine they cover together."""
SHARED_OVERRUN = 10
"""Shared tables run this many minutes past the spine (extraction's window drops them)."""
TARGET_STD = 0.087
LOOKBACK_SHARE, LOOKAHEAD_SHARE = 0.002, 0.006
"""Targets: null for min(w, share * w / 2880 of the spine) rows at the start (look-back) and
min(h, share * h / 105) at the end (look-ahead); production has exactly w and h."""
_WINDOW = re.compile(r"_(\d+)$")
_STRING_LABELS = {
    "trading_session": ("asia", "london", "new_york"),
    "risk_sentiment": ("risk_off", "neutral", "risk_on"),
    "regime_label": ("range", "trend", "volatile"),
}
_LEVEL = {"mean": 0.0, "sma": 0.0, "ema": 0.0, "median": 0.0, "vwap": 0.0, "min": -2.0,
          "max": 2.0, "upper": 2.0, "lower": -2.0, "q10": -1.28, "q90": 1.28}  # fmt: skip
_SPREAD = {"std": 1.0, "range": 4.0, "atr": 1.2, "iqr": 1.35, "width": 4.0}
_SLOPE = frozenset({"slope", "roc", "macd", "signal", "hist", "obv"})


@dataclass(frozen=True)
class Series:
    """The time axis of a warehouse: where it starts, its size at creation (which fixes the null
    model) and its size now (creation plus appended minutes)."""

    start: datetime = DEFAULT_START
    plan_rows: int = 5_000
    rows: int = 5_000
    seed: int = DEFAULT_SEED

    def spine(self) -> np.ndarray:
        """The targets' keys: `rows` trading minutes from `start`."""
        return trading_minutes(self.start, self.rows)

    def grown(self, minutes: int) -> Series:
        return Series(self.start, self.plan_rows, self.rows + minutes, self.seed)


def trading_minutes(start: datetime, count: int) -> np.ndarray:
    """`count` minute keys from `start`, skipping the FX weekend (Fri 22:00 to Sun 22:00 UTC)."""
    return _trading_minutes(start.astimezone(UTC).replace(tzinfo=None), count).copy()


@lru_cache(maxsize=8)
def _trading_minutes(start: datetime, count: int) -> np.ndarray:
    start_us = np.datetime64(start, "us")
    out = np.empty(0, dtype="datetime64[us]")
    span = count
    while len(out) < count:
        minutes = start_us + np.arange(span * 2, dtype="int64").astype("timedelta64[m]")
        days = minutes.astype("datetime64[D]")
        weekday = (days.astype("int64") - 4) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        hour = (minutes - days).astype("timedelta64[h]").astype("int64")
        closed = ((weekday == 4) & (hour >= 22)) | (weekday == 5) | ((weekday == 6) & (hour < 22))
        out = minutes[~closed]
        span *= 2
    out = out[:count]
    out.flags.writeable = False
    return out


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A stream of its own per name: a table's data does not depend on what else was built."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def window_of(column: str) -> int | None:
    """The rolling window a column name ends in (`agg_mean_45` -> 45), or None."""
    match = _WINDOW.search(column)
    if match and int(match.group(1)) in WINDOWS:
        return int(match.group(1))
    return None


def warmup_rows(window: int | None, plan_rows: int) -> int:
    """Rows a column of this window is null at its table's start."""
    return 0 if window is None else round(plan_rows * WARMUP_SHARE * window / max(WINDOWS))


def pairs_in(name: str) -> list[str]:
    return [t for t in name.split("_") if t in PAIRS]


# -- the underlying price and its rolling statistics -------------------------------------------
class _Walk:
    """A minute price path over the extended spine and its rolling means and stds, by window."""

    def __init__(self, seed: int, name: str, length: int) -> None:
        # One draw of `length` normals: a longer series has the same prefix (appends continue it).
        steps = rng_for(seed, f"walk/{name}").standard_normal(length) * 1e-4
        self.length = length
        self.steps = steps
        self.price = 1.0 + np.cumsum(steps)
        self._c1 = np.concatenate([[0.0], np.cumsum(self.price - 1.0)])
        self._c2 = np.concatenate([[0.0], np.cumsum((self.price - 1.0) ** 2)])
        self._ups = np.concatenate([[0], np.cumsum(steps > 0)])
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _bounds(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        hi = np.arange(1, self.length + 1)
        lo = np.maximum(hi - w, 0)
        return lo, hi

    def mean(self, w: int) -> np.ndarray:
        key = ("mean", w)
        if key not in self._cache:
            lo, hi = self._bounds(w)
            self._cache[key] = 1.0 + (self._c1[hi] - self._c1[lo]) / (hi - lo)
        return self._cache[key]

    def std(self, w: int) -> np.ndarray:
        key = ("std", w)
        if key not in self._cache:
            lo, hi = self._bounds(w)
            count = hi - lo
            m = (self._c1[hi] - self._c1[lo]) / count
            var = (self._c2[hi] - self._c2[lo]) / count - m * m
            self._cache[key] = np.sqrt(np.maximum(var, 0.0)) + 1e-5 * np.sqrt(w)
        return self._cache[key]

    def slope(self, w: int) -> np.ndarray:
        key = ("slope", w)
        if key not in self._cache:
            m = self.mean(w)
            lag = max(1, w // 4)
            out = np.empty_like(m)
            out[lag:] = (m[lag:] - m[:-lag]) / lag
            out[:lag] = out[lag] if len(m) > lag else 0.0
            self._cache[key] = out
        return self._cache[key]

    def zscore(self, w: int) -> np.ndarray:
        key = ("z", w)
        if key not in self._cache:
            self._cache[key] = (self.price - self.mean(w)) / self.std(w)
        return self._cache[key]

    def ups(self, w: int) -> np.ndarray:
        """Up-minutes in the window: a slowly varying count."""
        lo, hi = self._bounds(w)
        return (self._ups[hi] - self._ups[lo]).astype(np.int64)


def _round_significant(values: np.ndarray, digits: int = 5) -> np.ndarray:
    # Like warehouse data rounded to a few significant decimals. The scale comes from the first
    # rows only, so a series grown by an append rounds its old rows the same way.
    head = np.abs(values[:256])
    top = float(head.max()) if len(head) else 0.0
    if not np.isfinite(top) or top == 0.0:
        return values
    quantum = 10.0 ** (np.floor(np.log10(top)) - (digits - 1))
    return np.round(values / quantum) * quantum


def _float_values(
    walk: _Walk, stat: str, w: int, rng: np.random.Generator, take: np.ndarray
) -> np.ndarray:
    scale = float(np.exp(rng.normal(0.0, 0.5)))
    if stat in _LEVEL:
        base = walk.mean(w)[take] + _LEVEL[stat] * walk.std(w)[take]
        return _round_significant(base * scale + rng.normal(0.0, 0.1))
    if stat in _SPREAD:
        return _round_significant(walk.std(w)[take] * _SPREAD[stat] * scale)
    if stat in _SLOPE:
        return _round_significant(walk.slope(w)[take] * 1e3 * scale)
    z = walk.zscore(w)[take]
    if stat == "rsi":
        return _round_significant(np.clip(50.0 + 15.0 * z, 0.0, 100.0))
    if stat == "pctb":
        return _round_significant(0.5 + 0.25 * z)
    if stat == "zscore":
        return _round_significant(z)
    # skew, kurt, entropy, hurst, acf, adx, corr, ... bounded oscillators of the price's z-score
    return _round_significant(np.tanh(0.5 * z) * scale + rng.normal(0.0, 0.5))


def _string_values(name: str, table: str, walk: _Walk, keys: np.ndarray, take: np.ndarray):
    labels = _STRING_LABELS.get(name)
    n = len(take)
    if labels is not None:
        if name == "trading_session":
            hour = (keys - keys.astype("datetime64[D]")).astype("timedelta64[h]").astype(np.int64)
            codes = np.digitize(hour, [7, 13])
        else:
            w = 360 if name == "regime_label" else 1440
            codes = np.digitize(walk.zscore(w)[take], [-0.7, 0.7])
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(labels)).cast(
            pa.string()
        )
    pairs = pairs_in(table) or ["xxxxxx"]
    currencies = [t for t in table.split("_") if t in CURRENCIES]
    if name in ("pair1", "fx_pair"):
        constant = pairs[0]
    elif name == "pair2":
        constant = pairs[-1]
    elif name.startswith("currency"):
        index = int(name.removeprefix("currency") or 1) - 1
        constant = currencies[index] if index < len(currencies) else ""
    else:  # base_curr / quote_curr of a pair table
        constant = pairs[0][:3] if name == "base_curr" else pairs[0][3:]
    return pa.array([constant], pa.string()).take(np.zeros(n, dtype=np.int64))


# -- which keys a table holds ------------------------------------------------------------------
def _feed_gaps(seed: int, pair: str, plan_rows: int) -> list[tuple[int, int]]:
    """Outages of a pair's cross-pair feed, as [start, end) positions on the spine."""
    rng = rng_for(seed, f"feed/{pair}")
    lengths = np.maximum(1, np.round(rng.uniform(0.5, 1.5, COV_GAPS) / COV_GAPS * COV_GAP_SHARE
                                     * plan_rows)).astype(np.int64)  # fmt: skip
    starts = (rng.uniform(0.05, 0.95, COV_GAPS) * plan_rows).astype(np.int64)
    return [(int(s), int(min(s + n, plan_rows))) for s, n in zip(starts, lengths, strict=True)]


def table_positions(table: Table, series: Series, keys: np.ndarray) -> np.ndarray:
    """Positions on the extended spine (`keys`, spine + SHARED_OVERRUN) of the table's rows."""
    total = series.rows
    if table.scope == "shared":
        first = 0
        if table.family == "tri":
            late = rng_for(series.seed, f"late/{table.name}").uniform(*TRI_LATE)
            first = round(late * series.plan_rows)
        return np.arange(first, total + SHARED_OVERRUN)
    if table.scope == "corr":
        minute = keys[:total].astype("datetime64[m]").astype(np.int64)
        of_day = minute % 1440
        weekday = (minute // 1440 - 4) % 7
        return np.flatnonzero((weekday < 5) & (of_day >= ETF_OPEN) & (of_day < ETF_CLOSE))
    if table.scope == "cov":
        keep = np.ones(total, dtype=bool)
        for pair in pairs_in(table.name):
            for lo, hi in _feed_gaps(series.seed, pair, series.plan_rows):
                keep[lo:hi] = False
        return np.flatnonzero(keep)
    return np.arange(total)


def _underlying(table: Table) -> str:
    # A pair's own tables are statistics of the pair's price; others of a series of their own.
    return table.pairs[0] if table.scope in ("pair", "corr") else table.name


def feature_table_data(table: Table, series: Series) -> pa.Table:
    """Deterministic rows of a feature table: key, catalog columns in order, then `pair` (pair
    tables only)."""
    keys_all = trading_minutes(series.start, series.rows + SHARED_OVERRUN)
    take = table_positions(table, series, keys_all)
    keys = keys_all[take]
    walk = _Walk(series.seed, _underlying(table), len(keys_all))
    rng = rng_for(series.seed, table.name)
    n = len(take)
    arrays: dict[str, pa.Array] = {KEY: pa.array(keys, type=KEY_TYPE)}
    for column in table.columns:
        w = window_of(column.name)
        mask = None
        head = min(n, warmup_rows(w, series.plan_rows))
        if head and column.dtype != "STRING":
            mask = np.zeros(n, dtype=bool)
            mask[:head] = True
        tokens = column.name.split("_")
        stat = tokens[1] if len(tokens) > 2 else tokens[-1]
        if column.dtype == "FLOAT64":
            values = _float_values(walk, stat, w or 45, rng, take)
            arrays[column.name] = pa.array(values, pa.float64(), mask=mask)
        elif column.dtype == "INT64":
            if w is None:  # codes: the regime the z-score is in
                codes = np.digitize(walk.zscore(360)[take], [-1.0, 1.0]).astype(np.int64)
            else:
                codes = walk.ups(w)[take]
            arrays[column.name] = pa.array(codes, pa.int64(), mask=mask)
        elif column.dtype == "BOOL":
            flags = walk.zscore(w or 45)[take] > 0
            arrays[column.name] = pa.array(flags, pa.bool_(), mask=mask)
        else:
            arrays[column.name] = _string_values(column.name, table.name, walk, keys, take)
    if table.scope == "pair":
        arrays[PAIR_COLUMN] = _string_values("pair1", table.pairs[0], walk, keys, take).cast(
            pa.string()
        )
    return pa.table(arrays)


def targets_table_data(targets: TargetsTable, series: Series) -> pa.Table:
    """Targets over the spine: `bqx_{w}` oscillators and `target_bqx{w}_h{h}`, their value `h`
    minutes ahead (std ~0.087), null for the look-back at the start and the horizon at the end."""
    n = series.rows
    walk = _Walk(series.seed, targets.pair, n + max(HORIZONS))
    arrays: dict[str, pa.Array] = {KEY: pa.array(series.spine(), type=KEY_TYPE)}
    plan = series.plan_rows
    for column in targets.columns:
        name = column.name
        mask = np.zeros(n, dtype=bool)
        if name.startswith("target_bqx"):
            w_text, h_text = name.removeprefix("target_bqx").split("_h")
            w, h = int(w_text), int(h_text)
        else:
            w, h = window_of(name) or max(WINDOWS), 0
        z = walk.zscore(w)[: n + h]
        values = np.tanh(0.5 * z[h : h + n]) * (TARGET_STD / 0.42)
        head = min(w, int(np.ceil(plan * LOOKBACK_SHARE * w / max(WINDOWS))))
        mask[:head] = True
        if h:
            mask[n - min(h, int(np.ceil(plan * LOOKAHEAD_SHARE * h / max(HORIZONS)))) :] = True
        arrays[name] = pa.array(_round_significant(values), pa.float64(), mask=mask)
    arrays[PAIR_COLUMN] = pa.array([targets.pair], pa.string()).take(np.zeros(n, dtype=np.int64))
    return pa.table(arrays)


def merged_null_counts(table: Table, series: Series) -> dict[str, int]:
    """Null cells per column of the table once left-joined onto the spine (as in the training
    file), from the null model alone: what `feature_table_data` produces, without producing it."""
    keys_all = trading_minutes(series.start, series.rows + SHARED_OVERRUN)
    held = int(np.count_nonzero(table_positions(table, series, keys_all) < series.rows))
    out = {}
    for column in table.columns:
        head = 0 if column.dtype == "STRING" else warmup_rows(window_of(column.name),
                                                             series.plan_rows)  # fmt: skip
        out[column.name] = series.rows - held + min(head, held)
    return out
