"""A step's usage record as the instance stores it, read back whole for `bqx costs`."""

import dagster as dg

from bqx_assets.core.costs import Usage
from bqx_assets.core.metrics import STEP_FOOTPRINT_BYTES, STEP_PEAK_LOCAL_BYTES
from bqx_assets.defs.metadata import USAGE, recorded_usage, step_usage

USED = Usage(
    cpu_seconds=14.937,
    peak_rss_bytes=371_736_576,
    wall_seconds=45.166,
    bytes_read=12_500_000,
    query_bytes_billed=10_485_760,
    cloud_run_usd=0.001987,
    bigquery_usd=0.000013,
)
FOOTPRINT = {STEP_PEAK_LOCAL_BYTES: 2**20, STEP_FOOTPRINT_BYTES: 371_736_576 + 2**20}


def _stored(metadata: dict[str, dg.MetadataValue]) -> dict[str, dg.MetadataValue]:
    """The metadata as an event log storage writes and reads it."""
    event = dg.AssetMaterialization("training_file", metadata=metadata)
    return dict(dg.deserialize_value(dg.serialize_value(event), dg.AssetMaterialization).metadata)


def test_the_usage_record_is_a_table_with_units_read_back_exactly() -> None:
    stored = _stored(step_usage(USED, FOOTPRINT))
    assert not any(isinstance(v, dg.JsonMetadataValue) for v in stored.values())
    shown = {r.data["measure"]: r.data["shown"] for r in stored[USAGE].records}
    assert shown["step_peak_rss_bytes"] == "354.5 MiB"
    assert shown["step_bytes_read"] == "12.50 MB"
    assert shown["step_wall_seconds"] == "45.17 s"
    assert shown["step_cloud_run_usd"] == "$0.001987"
    recorded = recorded_usage(stored)
    assert Usage.from_metadata(recorded) == USED
    assert recorded[STEP_FOOTPRINT_BYTES] == FOOTPRINT[STEP_FOOTPRINT_BYTES]
    assert stored["step_peak_memory_mib"].value == 355.5


def test_a_record_stored_as_json_before_the_table_is_still_read() -> None:
    """Events an instance recorded before the record became a table keep their cost."""
    earlier = {**USED.to_metadata(), **FOOTPRINT}
    stored = _stored({USAGE: dg.MetadataValue.json(earlier)})
    assert Usage.from_metadata(recorded_usage(stored)) == USED
