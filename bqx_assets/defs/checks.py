"""The training file's gate checks as Dagster asset checks, one result per pair."""

from __future__ import annotations

import dagster as dg

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.report import Listing, MetadataValue, ValidationReport
from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.defs.previews import allowed_previews


def training_check_specs(
    asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition | None
) -> list[dg.AssetCheckSpec]:
    """One blocking spec per gate check; partitioned like the asset so that the UI keeps a result
    per pair instead of only the latest pair's."""
    with allowed_previews():
        return [
            dg.AssetCheckSpec(
                name,
                asset=asset_key,
                description=CHECK_DESCRIPTIONS[name],
                blocking=True,
                partitions_def=partitions_def,
            )
            for name in CHECK_NAMES
        ]


def metadata_value(key: str, value: MetadataValue) -> dg.MetadataValue:
    """One value of a check's metadata as the UI shows it: numbers as numbers (`actual` and
    `threshold` are floats, plotted across runs), text as text, lists of names and listings as
    markdown tables; never JSON."""
    if isinstance(value, Listing):
        return dg.MetadataValue.md(value.markdown())
    if isinstance(value, list) and not value:
        return dg.MetadataValue.text("none")
    if isinstance(value, list):
        return dg.MetadataValue.md(
            Listing.of((key.replace("_", " "),), [(v,) for v in value]).markdown()
        )
    if isinstance(value, bool):
        return dg.MetadataValue.bool(value)
    if isinstance(value, int):
        return dg.MetadataValue.int(value)
    if isinstance(value, float):
        return dg.MetadataValue.float(value)
    if value is None:
        return dg.MetadataValue.text("-")
    if isinstance(value, str):
        return dg.MetadataValue.text(value)
    raise TypeError(f"check metadata {key!r}: no rendering for {type(value).__name__}")


def check_results(report: ValidationReport, asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    """The report's outcomes as check results: ERROR severity, so a failure blocks downstream;
    the outcome's summary (with the thresholds it applied) is the result's description."""
    results = []
    for outcome in report.outcomes:
        metadata = {k: metadata_value(k, v) for k, v in outcome.metadata.items() if k != "summary"}
        results.append(
            dg.AssetCheckResult(
                asset_key=asset_key,
                check_name=outcome.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=outcome.metadata.get("summary", outcome.description),
                metadata=metadata,
            )
        )
    return results


def report_metadata(report: ValidationReport) -> dict[str, dg.MetadataValue]:
    """Small materialization metadata of a validated file: size, cost of the gate, families."""
    return {
        "rows": dg.MetadataValue.int(report.rows),
        "columns": dg.MetadataValue.int(report.columns),
        "row_groups": dg.MetadataValue.int(report.row_groups),
        "gate": dg.MetadataValue.text("passed" if report.passed else "failed"),
        "failed_checks": dg.MetadataValue.text(", ".join(report.failed) or "none"),
        "validation_seconds": dg.MetadataValue.float(round(report.seconds, 2)),
        "validation_peak_rss_bytes": dg.MetadataValue.int(report.peak_rss_bytes),
        "families": dg.MetadataValue.md(report.family_table_markdown()),
    }
