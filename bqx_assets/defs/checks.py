"""The training file's gate checks as Dagster asset checks, one result per pair."""

from __future__ import annotations

import warnings
from typing import Any

import dagster as dg

from bqx_assets.core.gate.descriptions import CHECK_DESCRIPTIONS
from bqx_assets.core.gate.report import ValidationReport
from bqx_assets.core.gate.validate import CHECK_NAMES


def training_check_specs(
    asset_key: dg.AssetKey, partitions_def: dg.PartitionsDefinition | None
) -> list[dg.AssetCheckSpec]:
    """One blocking spec per gate check; partitioned like the asset so that the UI keeps a result
    per pair instead of only the latest pair's."""
    with warnings.catch_warnings():
        # Partitioned check specs are a preview API in dagster 1.13 and the only way the UI shows
        # a check result per pair; the warning would repeat at every load of the definitions.
        warnings.simplefilter("ignore", dg.PreviewWarning)
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


def _metadata_value(value: Any) -> Any:
    # Lists and dicts become JSON values; None has no metadata type of its own.
    if value is None:
        return dg.MetadataValue.text("")
    if isinstance(value, dict | list | tuple):
        return dg.MetadataValue.json(value if not isinstance(value, tuple) else list(value))
    return value


def check_results(report: ValidationReport, asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    """The report's outcomes as check results: ERROR severity, so a failure blocks downstream."""
    results = []
    for outcome in report.outcomes:
        metadata = {k: _metadata_value(v) for k, v in outcome.metadata.items() if k != "summary"}
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
        "failed_checks": dg.MetadataValue.json(list(report.failed)),
        "validation_seconds": dg.MetadataValue.float(round(report.seconds, 2)),
        "validation_peak_rss_bytes": dg.MetadataValue.int(report.peak_rss_bytes),
        "families": dg.MetadataValue.md(report.family_table_markdown()),
    }
