"""IO managers: training files published to a storage root and scanned lazily; small frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from bqx_assets.core.layout import training_file_key
from bqx_assets.core.publish import TrainingFile, publish_training_file
from bqx_assets.core.storage import Storage, open_storage
from bqx_assets.defs import metadata as md


class TrainingFileIOManager(dg.ConfigurableIOManager):
    """Publishes `TrainingFile`s to `output_root` and loads them back as Polars LazyFrames.

    An asset returns a `TrainingFile`: the verified temporary file of the root that the merge
    wrote (see `training_file`), published by a rename (local) or a server-side copy (gs://),
    so the file is never transferred again. A file whose gate checks passed replaces
    `training_{pair}.parquet`, the previous version being kept under `versions/`; a failed one
    goes to `quarantine/` and the published file stays as it was.

    The pair is the partition key; an unpartitioned asset names it with definition metadata
    `{"pair": "eurusd"}`.
    """

    output_root: str = "data/output"
    """A local folder or `gs://bucket/prefix` (production: `gs://bqx-ml-output`)."""
    cache_dir: str = "data/cache/output"
    """Where files of a `gs://` root are fetched (and verified) before they are scanned."""

    def storage(self) -> Storage:
        return open_storage(self.output_root)

    def handle_output(self, context: dg.OutputContext, obj: TrainingFile) -> None:
        if not isinstance(obj, TrainingFile):
            raise dg.DagsterInvariantViolationError(
                f"TrainingFileIOManager stores TrainingFile objects, got {type(obj).__name__}"
            )
        if context.has_asset_partitions and context.asset_partition_key != obj.pair:
            # Refused: its temporary file goes too, as a published or quarantined one's does.
            self.storage().discard(obj.staged)
            raise dg.DagsterInvariantViolationError(
                f"partition {context.asset_partition_key} returned the training file of {obj.pair}"
            )
        result = publish_training_file(self.storage(), obj, run_id=context.run_id)
        if not result.published:
            context.log.warning(
                f"training file of {obj.pair} failed its gate checks: quarantined at "
                f"{result.uri}; the published file is unchanged"
            )
        published: dict[str, dg.MetadataValue] = {
            "status": dg.MetadataValue.text(result.status),
            "dagster/uri": md.uri(result.uri),
            "publish_seconds": md.seconds(result.seconds),
            "crc32c": dg.MetadataValue.text(result.crc32c),
        }
        if result.generation is not None:
            published["generation"] = dg.MetadataValue.int(result.generation)
        if result.previous_uri:
            published["previous_version"] = md.uri(result.previous_uri)
        if result.report_uri:
            published["report"] = md.uri(result.report_uri)
        context.add_output_metadata(published)

    def load_input(self, context: dg.InputContext) -> pl.LazyFrame | dict[str, pl.LazyFrame]:
        pairs = _pairs_of(context)
        storage = self.storage()
        # Fetched to a local file first: Polars' own gs:// reader fails against the emulator and,
        # without a token, asks the cloud metadata server for one.
        frames = {
            pair: pl.scan_parquet(storage.fetch(training_file_key(pair), Path(self.cache_dir)))
            for pair in pairs
        }
        if len(frames) == 1 and not _wants_many(context):
            return next(iter(frames.values()))
        return frames


def _pairs_of(context: dg.InputContext) -> list[str]:
    if context.has_asset_partitions:
        return list(context.asset_partition_keys)
    upstream = context.upstream_output
    metadata: dict[str, Any] = dict(upstream.definition_metadata or {}) if upstream else {}
    pair = metadata.get("pair")
    if not pair:
        raise dg.DagsterInvariantViolationError(
            f"cannot tell which pair's training file {context.asset_key.to_user_string()} is: "
            "partition the asset by pair or give it metadata {'pair': ...}"
        )
    return [str(pair)]


def _wants_many(context: dg.InputContext) -> bool:
    """A consumer of several partitions (a dict annotation) gets a dict even for one pair."""
    typing_type = getattr(context.dagster_type, "typing_type", None)
    return getattr(typing_type, "__origin__", typing_type) is dict
