"""Materialization metadata for people: a few keys with their units, the rest in one table."""

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from bqx_assets.core.costs import Usage

USAGE = "usage"
"""The step's usage as recorded (CPU, memory, time, bytes read, cost; `costs.METADATA_KEYS` and
the footprint keys), for `bqx costs` and the gate view: on one materialization per step, as a
table of a row per measure (its exact value, and the value in MiB, MB, s or $)."""


def mb(count: int) -> dg.MetadataValue:
    """A size in megabytes (10^6 bytes), a number Dagster plots."""
    return dg.MetadataValue.float(round(count / 1e6, 2))


def mib(count: int) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(count / 2**20, 1))


def usd(amount: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(amount, 6))


def seconds(value: float) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(value, 2))


def uri(text: str) -> dg.MetadataValue:
    """Where a file is: a path on a local root, a URL (gs://) on an object store."""
    return dg.MetadataValue.url(text) if "://" in text else dg.MetadataValue.path(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as a markdown table (numbers right-aligned)."""
    align = [
        "---:" if rows and isinstance(rows[0][i], int | float) else "---"
        for i in range(len(headers))
    ]
    lines = [f"| {' | '.join(headers)} |", f"|{'|'.join(align)}|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "/").replace("\n", " ")


def step_usage(usage: Usage, footprint: Mapping[str, int]) -> dict[str, dg.MetadataValue]:
    """A step's cost and memory, once per step: its time, peak memory (RSS + local bytes, what
    a container must hold), estimated cost, and the whole record under `USAGE`."""
    held = footprint.get("step_footprint_bytes", usage.peak_rss_bytes)
    return {
        "step_seconds": seconds(usage.wall_seconds),
        "step_peak_memory_mib": mib(held),
        "step_cost_usd": usd(usage.estimated_cost_usd),
        USAGE: _usage_table({**usage.to_metadata(), **footprint}),
    }


def _usage_table(values: Mapping[str, int | float]) -> dg.TableMetadataValue:
    """A row per measure: its key, its exact value (what `recorded_usage` reads back) and the
    value in a person's unit."""
    columns = [
        dg.TableColumn("measure", "string"),
        dg.TableColumn("value", "float"),
        dg.TableColumn("shown", "string", description="the value in a person's unit"),
    ]
    rows = [
        dg.TableRecord({"measure": k, "value": v, "shown": _in_unit(k, v)})
        for k, v in values.items()
    ]
    return dg.MetadataValue.table(rows, dg.TableSchema(columns))


def _in_unit(key: str, value: float) -> str:
    """A usage value in the unit the other metadata use: memory (`..._bytes`) in MiB, bytes read
    or billed (`..._bytes_read`, `..._bytes_billed`) in MB."""
    if key.endswith("_usd"):
        return f"${value:,.6f}"
    if key.endswith("_seconds"):
        return f"{value:,.2f} s"
    if key.endswith("_bytes"):
        return f"{value / 2**20:,.1f} MiB"
    if "_bytes_" in key:
        return f"{value / 1e6:,.2f} MB"
    return f"{value:,}"


def recorded_usage(metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """The usage record of a materialization's metadata (`USAGE`: a table, or a JSON
    object as events recorded before the table carry it), or the metadata itself where it is
    older than that key and carries the usage keys directly."""
    value = metadata.get(USAGE)
    value = getattr(value, "value", value)
    if isinstance(value, dg.TableMetadataValue):
        return {r.data["measure"]: r.data["value"] for r in value.records}
    return value if isinstance(value, Mapping) else metadata
