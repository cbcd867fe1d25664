"""The preflight in Dagster: one check per warehouse family, all run by `preflight_job` before a
backfill; each defect shows on its family's check (warehouse-wide ones on every check)."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from bqx_assets.core.catalog import FAMILY_ORDER
from bqx_assets.core.costs import Prices
from bqx_assets.core.preflight import Preflight, family_of, preflight, sources
from bqx_assets.defs.assets import TARGETS, warehouse_key
from bqx_assets.defs.resources import PipelineSettings

PREFLIGHT_JOB = "preflight_job"
CHECK = "preflight"
FAMILIES: tuple[str, ...] = (*FAMILY_ORDER, TARGETS)
"""The families with a warehouse source asset (`defs/assets.py`), each with a check."""


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset=warehouse_key(family),
            description=(
                "The family's warehouse tables against the catalog, from metadata alone: each "
                "exists, is a TABLE partitioned by DAY on interval_time (a TIMESTAMP), has the "
                "catalog's columns and types and no rows in the streaming buffer; and the "
                "datasets' location and the credentials' access (read sessions, extract jobs)."
            ),
        )
        for family in FAMILIES
    ],
    required_resource_keys={"warehouse", "settings"},
    description="`bqx preflight` for every warehouse family: one check each, reading no row.",
)
def preflight_checks(context) -> Iterator[dg.AssetCheckResult]:
    # Unannotated: under `from __future__ import annotations` dagster reads the annotation as
    # the text "dg.AssetCheckExecutionContext", which it refuses; it passes that context.
    settings: PipelineSettings = context.resources.settings
    catalog = settings.catalog()
    wh = context.resources.warehouse.open()
    try:
        report = preflight(wh, catalog, prices=Prices(storage_read_tib=settings.bq_price_per_tib))
    finally:
        wh.close()
    for line in report.lines():
        context.log.info(line)
    yield from check_results(report, {family_of(s) for s in sources(catalog)})


def check_results(report: Preflight, present: set[str]) -> Iterator[dg.AssetCheckResult]:
    """One result per family: its tables' defects, and those of every table (location,
    credentials, and those of a family without a check of its own)."""
    everywhere = [d for d in report.defects if d.family is None or d.family not in FAMILIES]
    for family in FAMILIES:
        mine = [d for d in report.defects if d.family == family]
        found = [*everywhere, *mine]
        yield dg.AssetCheckResult(
            asset_key=warehouse_key(family),
            check_name=CHECK,
            passed=not found,
            severity=dg.AssetCheckSeverity.ERROR,
            description=str(found[0]) if found else None,
            metadata={
                "defects": len(found),
                "defect_lines": dg.MetadataValue.md("\n".join(f"- {d}" for d in found) or "none"),
                "in_catalog": family in present,
                "full_build_bytes": report.full_build.bytes,
                "full_build_usd": round(report.full_build.usd, 4),
                "refresh_bytes": report.refresh.bytes,
                "refresh_usd": round(report.refresh.usd, 4),
            },
        )


preflight_job = dg.define_asset_job(
    PREFLIGHT_JOB,
    selection=dg.AssetSelection.checks(preflight_checks),
    description="Before a backfill: the warehouse against the catalog (bqx preflight), a check "
    "per family; nothing is read from the tables.",
)
