"""Build bqx_assets/core/catalog.json from the production facts in DOMAIN.md.

The checked-in catalog is data. This script is how its first version was made: it writes the
INFORMATION_SCHEMA rows that the production warehouse has and runs them through the same refresh
code (`catalog_from_schema`) that `bqx catalog refresh` uses, so the file matches what a refresh
of a warehouse of this shape produces.

    uv run python scripts/build_catalog.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bqx_assets.core.catalog import (
    CURRENCIES,
    PAIRS,
    TARGET_COLUMNS,
    WINDOWS,
    SchemaRow,
    catalog_from_schema,
)
from bqx_assets.core.layout import KEY, PAIR_COLUMN

PROJECT = "bqx-ml"
FEATURES = "bqx_ml_v3_features_v2"
TARGETS = "bqx_ml_v3_analytics_v2"
ETFS = ("ewa", "ewg", "ewj", "ewu", "gld", "spy", "uup", "vix")
STATS = (
    "mean", "std", "min", "max", "range", "slope", "zscore", "skew", "kurt", "ema", "sma", "roc",
    "rsi", "macd", "signal", "hist", "upper", "lower", "width", "pctb", "atr", "adx", "obv", "vwap",
    "median", "iqr", "q10", "q90", "entropy", "hurst", "acf1", "acf5", "pacf1", "trend", "resid",
    "season", "r2", "beta", "alpha", "tstat",
)  # fmt: skip
# Per-column dtypes other than FLOAT64, by name, for the columns DOMAIN lists.
STRING_COLUMNS = {"pair1", "pair2", "base_curr", "quote_curr", "currency1", "currency2",
                  "currency3", "fx_pair", "trading_session", "risk_sentiment"}  # fmt: skip


def columns(family: str, n: int, extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    """`n` columns named `{family}_{stat}_{window}`; `extra` (name, type) columns come first."""
    out = list(extra)
    names = (f"{family}_{s}_{w}" for s in STATS for w in WINDOWS)
    for i, name in enumerate(names):
        if len(out) == n:
            break
        # Every 11th column is a count or a flag: INT64, as in production.
        out.append((name, "INT64" if i % 11 == 10 else "FLOAT64"))
    if len(out) != n:
        raise ValueError(f"cannot make {n} columns for {family}")
    return out


def rows_for(dataset: str, table: str, cols: list[tuple[str, str]], *, key: bool = True,
             pair: bool = False) -> list[SchemaRow]:  # fmt: skip
    head = [(KEY, "TIMESTAMP")] if key else []
    tail = [(PAIR_COLUMN, "STRING")] if pair else []
    return [
        SchemaRow(dataset, table, name, i + 1, dtype)
        for i, (name, dtype) in enumerate(head + cols + tail)
    ]


def pair_tables(p: str) -> list[SchemaRow]:
    rows: list[SchemaRow] = []
    sizes = {"agg": 64, "align": 42, "der": 15, "div": 6, "mom": 43, "mrt": 10, "reg": 232,
             "rev": 10, "vol": 31}  # fmt: skip
    for fam, n in sizes.items():
        extra = (("div_short_leading", "BOOL"),) if fam == "div" else ()
        for variant in ("", "_bqx", "_idx"):
            name = f"{fam}{variant}_{p}"
            rows += rows_for(FEATURES, name, columns(fam, n, extra), pair=True)
    base_bqx = [(f"base_bqx_{w}", "FLOAT64") for w in WINDOWS] + [
        (f"target_{w}", "FLOAT64") for w in WINDOWS
    ]
    rows += rows_for(FEATURES, f"base_bqx_{p}", base_bqx, pair=True)
    rows += rows_for(FEATURES, f"base_idx_{p}",
                     columns("base", 5, (("base_curr", "STRING"), ("quote_curr", "STRING"))),
                     pair=True)  # fmt: skip
    rows += rows_for(FEATURES, f"ext_bqx_{p}", columns("ext", 16), pair=True)
    rows += rows_for(FEATURES, f"cyc_bqx_{p}", columns("cyc", 4), pair=True)
    rows += rows_for(FEATURES, f"tmp_{p}", columns("tmp", 23, (("trading_session", "STRING"),)),
                     pair=True)  # fmt: skip
    lag = [(f"lag_{p}_45", 11), (f"lag_{p}_90", 11)]
    lag += [(f"lag_bqx_{p}_{s}", 10) for s in ("45", "90", "w45", "w90")]
    lag += [(f"lag_idx_{p}_{s}", 11) for s in ("w45", "w90")]
    for name, n in lag:
        rows += rows_for(FEATURES, name, columns("lag", n), pair=True)
    regime = [(f"regime_{p}_45", 13), (f"regime_{p}_90", 13)]
    regime += [(f"regime_bqx_{p}_45", 19), (f"regime_bqx_{p}_90", 19)]
    for name, n in regime:
        rows += rows_for(FEATURES, name, columns("regime", n, (("regime_label", "STRING"),)),
                         pair=True)  # fmt: skip
    corr_sizes = {"bqx_ibkr": 8, "etf_bqx": 7, "etf_idx": 7, "ibkr": 8}
    for kind, n in corr_sizes.items():
        for etf in ETFS:
            rows += rows_for(FEATURES, f"corr_{kind}_{p}_{etf}",
                             columns("corr", n, (("fx_pair", "STRING"),)))  # fmt: skip
    return rows


def cov_tables() -> list[SchemaRow]:
    kinds = {"agg": 13, "agg_bqx": 13, "agg_idx": 13, "align": 13, "align_bqx": 13, "lag": 15,
             "lag_bqx": 15, "mom": 13, "mom_bqx": 13, "reg": 13, "reg_bqx": 13, "regime": 12,
             "regime_bqx": 12, "vol": 13, "vol_bqx": 13}  # fmt: skip
    rows: list[SchemaRow] = []
    for p1, p2 in itertools.combinations(sorted(PAIRS), 2):
        if not set((p1[:3], p1[3:])) & set((p2[:3], p2[3:])):
            continue
        for kind, n in kinds.items():
            extra = (("pair1", "STRING"), ("pair2", "STRING"))
            rows += rows_for(FEATURES, f"cov_{kind}_{p1}_{p2}", columns("cov", n, extra))
    return rows


def shared_tables() -> list[SchemaRow]:
    rows: list[SchemaRow] = []
    triangles = ["_".join(t) for t in itertools.combinations(CURRENCIES, 3)]
    ccy = (("currency1", "STRING"), ("currency2", "STRING"), ("currency3", "STRING"))
    for kind in ("agg", "align", "mom", "vol"):
        for variant in ("bqx", "idx"):
            for tri in triangles[:18]:
                rows += rows_for(FEATURES, f"tri_{kind}_{variant}_{tri}", columns("tri", 14, ccy))
    for variant in ("bqx", "idx"):
        for i, tri in enumerate(triangles[:25]):
            n = 118 if i < 18 else 14
            rows += rows_for(FEATURES, f"tri_reg_{variant}_{tri}", columns("tri", n, ccy))
    mkt = {"corr": 11, "dispersion": 17, "regime": 8, "sentiment": 17, "vol": 22}
    for kind, n in mkt.items():
        extra = (("risk_sentiment", "STRING"),) if kind == "sentiment" else ()
        for variant in ("", "_bqx"):
            rows += rows_for(FEATURES, f"mkt_{kind}{variant}", columns("mkt", n, extra))
    # Summary tables have no interval_time: the refresh leaves them out.
    for name in ("mkt_reg_summary", "mkt_reg_bqx_summary"):
        rows += rows_for(FEATURES, name, columns("mkt", 6), key=False)
    for kind, (usd, other) in {"agg": (128, 13), "align": (38, 10)}.items():
        for variant in ("bqx", "idx"):
            for c in CURRENCIES:
                rows += rows_for(FEATURES, f"var_{kind}_{variant}_{c}",
                                 columns("var", usd if c == "usd" else other))  # fmt: skip
    for variant in ("", "_bqx", "_idx"):
        for c in CURRENCIES:
            if c != "usd":
                rows += rows_for(FEATURES, f"var_corr{variant}_{c}", columns("var", 9))
    for variant in ("bqx", "idx"):
        for w in WINDOWS[:5]:
            rows += rows_for(FEATURES, f"var_lag_{variant}_{w}", columns("var", 13))
    # 18 CSI kinds per currency, 5 to 98 columns, 654 per currency (5,232 in all).
    csi = {"agg": 98, "reg": 98, "mom": 60, "align": 52, "vol": 48, "der": 40, "lag": 36,
           "regime": 34, "corr": 30, "cov": 28, "ext": 26, "tmp": 23, "mrt": 20, "rev": 18,
           "base": 16, "div": 12, "cyc": 10, "var": 5}  # fmt: skip
    assert len(csi) == 18 and sum(csi.values()) == 654
    for c in CURRENCIES:
        for kind, n in csi.items():
            rows += rows_for(FEATURES, f"csi_{kind}_{c}", columns("csi", n))
    return rows


def targets_tables() -> list[SchemaRow]:
    rows: list[SchemaRow] = []
    cols = [(f"bqx_{w}", "FLOAT64") for w in WINDOWS] + [(t, "FLOAT64") for t in TARGET_COLUMNS]
    for p in PAIRS:
        rows += rows_for(TARGETS, f"targets_{p}", cols, pair=True)
    return rows


def production_schema() -> list[SchemaRow]:
    rows = [r for p in PAIRS for r in pair_tables(p)]
    return rows + cov_tables() + shared_tables() + targets_tables()


def main() -> None:
    catalog = catalog_from_schema(
        production_schema(), project=PROJECT, features_dataset=FEATURES, targets_dataset=TARGETS
    )
    out = Path(__file__).resolve().parents[1] / "bqx_assets" / "core" / "catalog.json"
    catalog.dump(out)
    tables = catalog.tables_for("eurusd")
    print(
        f"{out}: {len(catalog.pairs)} pairs, {len(catalog.tables)} tables; eurusd: {len(tables)} "
        f"tables, {sum(len(t.columns) for t in tables)} columns, "
        f"{len(catalog.shared_tables())} shared; excluded {sorted(catalog.excluded)}"
    )


if __name__ == "__main__":
    main()
