"""The asset graph: warehouse tables, their parquet checkpoints, and each pair's training file."""

import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import dagster as dg

from bqx_assets.core.build import TrainingBuild, build_training_file, redone_if_replaced
from bqx_assets.core.catalog import (
    FAMILY_ORDER,
    SHARED_PREFIXES,
    TARGETS_FAMILY,
    Catalog,
    TargetsTable,
)
from bqx_assets.core.checkpoints.recover import Recovery, recover_pair_chunks
from bqx_assets.core.checkpoints.refresh import (
    ChunkedCheckpoint,
    RefreshProgress,
    refresh_checkpoints,
)
from bqx_assets.core.checkpoints.schema import Source
from bqx_assets.core.checkpoints.versions import family_versions
from bqx_assets.core.costs import Prices, StepUsage, Usage
from bqx_assets.core.metrics import LocalBytes, footprint_metadata
from bqx_assets.core.publish import TrainingFile
from bqx_assets.core.warehouse import Cut
from bqx_assets.defs import metadata as md
from bqx_assets.defs.checks import check_results, training_check_specs
from bqx_assets.defs.environment import graph_catalog
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.partitions import pairs_partitions
from bqx_assets.defs.previews import allowed_previews
from bqx_assets.defs.resources import CheckpointStore, PipelineSettings, WarehouseResource

SHARED_FAMILIES: tuple[str, ...] = tuple(p.removesuffix("_") for p in SHARED_PREFIXES)
CUT_KEY = "cut"
"""Checkpoint metadata: the moment (ISO, UTC) the step read every table as of."""
"""The families every pair uses (tri, mkt, var, csi): the catalog's shared prefixes."""
PAIR_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILY_ORDER if f not in SHARED_FAMILIES)
TARGETS = TARGETS_FAMILY
TRAINING_GROUP = "training"
TRAINING_FILE = dg.AssetKey("training_file")
BIGQUERY_POOL = "bigquery"
"""Steps that read the warehouse share this pool, so a backfill of many pairs never opens more
read sessions than the pool allows (dagster.yaml sets its limit)."""

WAREHOUSE_CRON = "0 */6 * * *"
"""The warehouse's feature jobs refresh daily; observing its tables every 6 hours (UTC) costs a
few metadata look-ups per family and pair."""
OBSERVE_WAREHOUSE = (
    dg.AutomationCondition.cron_tick_passed(WAREHOUSE_CRON, "UTC")
    & ~dg.AutomationCondition.in_progress()
)
"""When the automation sensor observes a warehouse family (and so records its data version)."""
REBUILD = dg.AutomationCondition.eager()
"""Checkpoints and training files are rebuilt when what they are made from changes: a warehouse
family observed with a new data version, a shared checkpoint re-extracted (every pair's training
file), a pair's checkpoints rebuilt. Nothing is requested while a dependency is missing or in
progress, so a pair never built stays unbuilt (initial builds are a backfill). A source's first
observation counts as a change: checkpoints whose tables did not change are reused, not read."""

_SCOPE_TEXT = {
    "pair": "one table set per pair",
    "corr": "per pair x ETF",
    "cov": "per pair of pairs sharing a currency",
    "shared": "the same tables for every pair",
}


def warehouse_key(family: str) -> dg.AssetKey:
    return dg.AssetKey(["warehouse", family])


def checkpoint_asset_key(family: str) -> dg.AssetKey:
    return dg.AssetKey(["checkpoints", family])


AFTER_SHARED = REBUILD & ~dg.AutomationCondition.any_deps_match(
    dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.any_deps_in_progress()
).allow(dg.AssetSelection.assets(*(checkpoint_asset_key(f) for f in SHARED_FAMILIES)))
"""A pair's checkpoints read as of the shared checkpoints' cut, so they depend on them: REBUILD,
held while the shared tables are being observed (each observation is a run of its own, the
pairs' often done first) or were just observed changed (the shared checkpoints are being
requested), then run once those are re-extracted, at their new cut. Run alongside instead, they
would read as of the old cut, and run again after the shared refresh. The training file is held
alike: requested with the shared checkpoints, it would merge them with the pair's checkpoints
not yet refreshed. A pair whose observation ends before the shared tables' observation starts
is not held (nothing says yet that they changed): it is rebuilt as of the old cut, a consistent
file, and again after the shared refresh. If that refresh replaces shared chunks while the pair
merges, the merge starts again from them (core/build.py: redone_if_replaced)."""


def _family_facts(catalog: Catalog, family: str) -> tuple[int, int, str]:
    if family == TARGETS:
        return 1, len(catalog.targets[catalog.pairs[0]].columns), "pair"
    tables = [t for t in catalog.tables_for(catalog.pairs[0]) if t.family == family]
    return len(tables), sum(len(t.columns) for t in tables), tables[0].scope


def _source_spec(catalog: Catalog, family: str) -> dg.AssetSpec:
    """A family's warehouse tables as an observable source: observing it records a data version
    per pair (or one for shared tables) from the tables' last-modified times and row counts, so
    checkpoints made from older versions show as stale in the UI."""
    tables, columns, scope = _family_facts(catalog, family)
    if family == TARGETS:
        text = (
            f"`{catalog.targets_dataset}.targets_{{pair}}`: the spine of each training file "
            "(its rows) and the 49 targets target_bqx{w}_h{h}. A partition is one pair."
        )
    else:
        text = (
            f"BigQuery feature tables of the `{family}` family in `{catalog.features_dataset}`: "
            f"{tables} tables and {columns} columns per pair ({_SCOPE_TEXT[scope]})."
            + ("" if family in SHARED_FAMILIES else " A partition is one pair's tables.")
        )
    return dg.AssetSpec(
        warehouse_key(family),
        description=text,
        group_name=TRAINING_GROUP if family == TARGETS else family,
        metadata={"tables_per_pair": tables, "columns_per_pair": columns}
        if family != TARGETS
        else None,
        kinds={"bigquery"},
        automation_condition=OBSERVE_WAREHOUSE,
    )


def _observe(context: dg.AssetExecutionContext, pair: str | None) -> Iterator[dg.ObserveResult]:
    """One data version per selected family: of the pair's own tables, or of the shared ones,
    from their day partitions inside the training window (a day appended or corrected changes
    it, one outside the window does not). A rolling window is resolved from the targets tables'
    partitions as the checkpoint step would."""
    settings: PipelineSettings = context.resources.settings
    families = sorted(k.path[-1] for k in context.selected_asset_keys)
    wh = context.resources.warehouse.open()
    try:
        versions = family_versions(
            wh, settings.catalog(), pair, families, settings.training_window()
        )
    finally:
        wh.close()
    for family in families:
        yield dg.ObserveResult(
            asset_key=warehouse_key(family),
            data_version=dg.DataVersion(versions[family][0]),
            metadata={"tables": versions[family][1]},
        )


def _checkpoint_spec(catalog: Catalog, family: str) -> dg.AssetSpec:
    if family == TARGETS:
        text = "Parquet checkpoint of the pair's targets table (the spine)."
        group = TRAINING_GROUP
    else:
        tables, columns, _ = _family_facts(catalog, family)
        text = (
            f"Parquet checkpoints of the `{family}` tables, sorted by interval_time: {tables} "
            f"tables, {columns} columns per pair. A table is chunks aligned to its day partitions "
            "(a file per closed month, a file per day of the newest month), each with a manifest "
            "of the partition states it was made from: a refresh reads only changed or new days."
        )
        text += (
            " Checkpointed once for every pair."
            if family in SHARED_FAMILIES
            else " A partition is one pair's tables; cov tables shared by two pairs are written "
            "once and reused by the second."
        )
        group = family
    shared = family in SHARED_FAMILIES
    return dg.AssetSpec(
        checkpoint_asset_key(family),
        deps=[warehouse_key(family)]
        + ([] if shared else [checkpoint_asset_key(f) for f in SHARED_FAMILIES]),
        description=text,
        group_name=group,
        kinds={"parquet"},
        skippable=True,
        automation_condition=REBUILD if shared else AFTER_SHARED,
    )


_CATALOG = graph_catalog()
"""The graph's shape (descriptions, partitions) comes from the catalog the runs read: the one
`defs/environment.py` resolves, which `definitions.build_definitions` checks against the runs'."""


def _step_folders(
    settings: PipelineSettings, checkpoints: CheckpointStore, *more: str
) -> list[str]:
    """The local folders a step may write to, whose bytes count in its footprint."""
    return [settings.workdir, checkpoints.cache_dir, tempfile.gettempdir(), *more]


def _family_metadata(checkpoints: Sequence[ChunkedCheckpoint]) -> dict[str, dg.MetadataValue]:
    """A family's checkpoints: tables, chunks extracted and reused, size, bytes read."""
    chunks = {s: sum(c.count(s) for c in checkpoints) for s in ("extracted", "reused", "compacted")}
    return {
        "tables": dg.MetadataValue.int(len(checkpoints)),
        "chunks_extracted": dg.MetadataValue.int(chunks["extracted"]),
        "chunks_reused": dg.MetadataValue.int(chunks["reused"] + chunks["compacted"]),
        "size_mb": md.mb(sum(c.bytes for c in checkpoints)),
        # Read sessions report an estimate from metadata, not the bytes billed.
        "read_mb_estimated": md.mb(sum(c.bytes_read for c in checkpoints)),
        "details": dg.MetadataValue.md(
            md.table(
                ["tables extracted", "tables reused", "chunks compacted", "rows", "seconds"],
                [
                    [
                        sum(c.status == "extracted" for c in checkpoints),
                        sum(c.status == "reused" for c in checkpoints),
                        chunks["compacted"],
                        sum(c.rows for c in checkpoints),
                        round(sum(c.seconds for c in checkpoints), 2),
                    ]
                ],
            )
        ),
    }


def _extract(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStore,
    settings: PipelineSettings,
    sources: Sequence[Source],
    spines: Sequence[TargetsTable],
    what: str,
    cut: Cut | None = None,
) -> Iterator[dg.MaterializeResult]:
    usage = StepUsage(prices=Prices(storage_read_tib=settings.bq_price_per_tib)).start()
    storage = checkpoints.storage()
    context.log.info(f"{what}: {len(sources)} tables from {warehouse.describe()} to {storage.uri}")

    def report(progress: RefreshProgress) -> None:
        context.log.info(f"{what}: {progress.line()}")

    wh = warehouse.open()
    try:
        # The sampler stops whatever the step's outcome: a failed step leaves no thread behind.
        with LocalBytes(_step_folders(settings, checkpoints)) as local:
            # Only chunks whose day partitions changed or are new are read, each run of them in
            # one read restricted to its days; the others are reused after verification.
            step_done = refresh_checkpoints(
                wh,
                storage,
                sources,
                spines,
                settings.training_window(),
                what,
                threads=settings.extract_threads,
                workdir=settings.work_path("extract"),
                progress=report,
                mode=settings.mode(),
                staging_uri=settings.export_staging_uri,
                cut=cut,
            )
        billed = wh.bytes_billed
    finally:
        wh.close()
    if cut is not None and step_done.cut == cut:
        context.log.info(f"{what}: read as of the shared checkpoints' cut {cut.at.isoformat()}")
    elif cut is not None:
        context.log.warning(
            f"{what}: tables created or replaced since the shared checkpoints' cut "
            f"{cut.at.isoformat()}: read as of this step's own cut {step_done.cut.at.isoformat()}"
        )
    by_family = step_done.by_family()
    usage.add_bytes_read(step_done.bytes_read)
    usage.add_query_bytes_billed(billed)
    used = usage.finish()
    step = md.step_usage(used, footprint_metadata(used.peak_rss_bytes, local.peak))
    start = step_done.window.training.start
    # The first day of the training window the chunks were made for (a rolling one moves).
    step_window = {
        "window_start": dg.MetadataValue.text(start.isoformat() if start else "none"),
        # The moment every table of the step was read as of.
        CUT_KEY: dg.MetadataValue.text(step_done.cut.at.isoformat()),
    }
    # What BigQuery billed the step's metadata queries (partition look-ups), as billed (priced
    # in the step's cost at the query rate); the families' `read_mb_estimated` are the read
    # sessions' estimates.
    billed_mb = {"step_query_billed_mb": md.mb(billed)}
    keys = sorted(context.selected_asset_keys, key=lambda k: k.to_user_string())
    for key in keys:
        made = by_family.get(key.path[-1], [])
        # The step's cost and memory once: on its first family (adding up the families'
        # metadata then counts the step once).
        own = (
            {**step, **billed_mb}
            if key == keys[0]
            else {"step_usage": dg.MetadataValue.text(f"recorded on {keys[0].to_user_string()}")}
        )
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={**_family_metadata(made), **own, **step_window},
            # The checkpoints' content: unchanged when every chunk was reused as it was.
            data_version=dg.DataVersion(
                hashlib.sha256(
                    "".join(sorted(k.manifest.crc32c for c in made for k in c.chunks)).encode()
                ).hexdigest()[:16]
            ),
        )


@dg.multi_asset(
    name="shared_checkpoints",
    specs=[_checkpoint_spec(_CATALOG, f) for f in SHARED_FAMILIES],
    can_subset=True,
    pool=BIGQUERY_POOL,
    description="Checkpoints of the 411 tables every pair uses, extracted once.",
)
def shared_checkpoints(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStore,
    settings: PipelineSettings,
) -> Iterator[dg.MaterializeResult]:
    catalog = settings.catalog()
    families = {k.path[-1] for k in context.selected_asset_keys}
    sources = [t for t in catalog.shared_tables() if t.family in families]
    spines = [catalog.targets[p] for p in catalog.pairs]
    yield from _extract(context, warehouse, checkpoints, settings, sources, spines, "shared tables")


@dg.multi_asset(
    name="pair_checkpoints",
    specs=[_checkpoint_spec(_CATALOG, f) for f in (*PAIR_FAMILIES, TARGETS)],
    partitions_def=pairs_partitions,
    can_subset=True,
    pool=BIGQUERY_POOL,
    description="Checkpoints of one pair's own tables (pair, corr, cov) and its targets table.",
)
def pair_checkpoints(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStore,
    settings: PipelineSettings,
) -> Iterator[dg.MaterializeResult]:
    pair = context.partition_key
    catalog = settings.catalog()
    families = {k.path[-1] for k in context.selected_asset_keys}
    sources: list[Source] = [
        t for t in catalog.tables_for(pair) if t.scope != "shared" and t.family in families
    ]
    if TARGETS in families:
        sources.append(catalog.targets[pair])
    # Read as of the shared checkpoints' cut, so that the file mixing both is of one moment
    # (a pair step reading later would see minutes the shared tables do not have yet).
    cut = Cut.common(_shared_cuts(context), datetime.now(UTC))
    yield from _extract(
        context,
        warehouse,
        checkpoints,
        settings,
        sources,
        [catalog.targets[pair]],
        f"pair {pair}",
        cut=cut,
    )


def _shared_cuts(context: dg.AssetExecutionContext) -> list[datetime]:
    """The cut each shared checkpoint's latest materialization recorded."""
    cuts = []
    for family in SHARED_FAMILIES:
        event = context.instance.get_latest_materialization_event(checkpoint_asset_key(family))
        materialization = event.asset_materialization if event else None
        value = materialization.metadata.get(CUT_KEY) if materialization else None
        if value is not None:
            cuts.append(datetime.fromisoformat(str(value.value)))
    return cuts


@dg.asset(
    key=TRAINING_FILE,
    partitions_def=pairs_partitions,
    deps=[checkpoint_asset_key(f) for f in (*PAIR_FAMILIES, *SHARED_FAMILIES, TARGETS)],
    check_specs=training_check_specs(TRAINING_FILE, pairs_partitions),
    io_manager_key="training_io_manager",
    group_name=TRAINING_GROUP,
    kinds={"parquet"},
    automation_condition=AFTER_SHARED,
)
def training_file(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    checkpoints: CheckpointStore,
    settings: PipelineSettings,
    training_io_manager: dg.ResourceParam[TrainingFileIOManager],
) -> Iterator[dg.Output[TrainingFile] | dg.AssetCheckResult]:
    """The pair's training file: the targets table's rows (the spine) left-joined on
    interval_time with the pair's 667 feature tables, one wide parquet file (eurusd in
    production: 177,748 rows x 17,031 columns). Built by a streaming merge in bounded memory,
    validated by the gate checks, and published to the output root only when they all pass;
    a file that fails is quarantined. A partition is one pair.

    The file is written straight into a temporary file of the output root, checked there and
    then renamed (local) or copied server-side (gs://) into place; with gs:// roots nothing
    passes through local disk, the checkpoints being read in place by ranged reads."""
    usage = StepUsage(prices=Prices(storage_read_tib=settings.bq_price_per_tib)).start()
    pair = context.partition_key
    # The sampler stops whatever the step's outcome: a failed step leaves no thread behind.
    with LocalBytes(_step_folders(settings, checkpoints, training_io_manager.cache_dir)) as local:
        # Chunks gone or unverifiable since the checkpoint steps (a lifecycle rule, a person)
        # are extracted again first; the warehouse is opened only then.
        def build() -> tuple[Recovery | None, TrainingBuild]:
            recovered = recover_pair_chunks(
                warehouse.open,
                checkpoints.storage(),
                settings.catalog(),
                pair,
                settings.training_window(),
                threads=settings.extract_threads,
                workdir=settings.work_path("extract"),
                mode=settings.mode(),
                staging_uri=settings.export_staging_uri,
            )
            if recovered is not None and recovered.missing:
                usage.add_bytes_read(recovered.bytes_read)
                usage.add_query_bytes_billed(recovered.query_bytes_billed)
                context.log.warning(
                    f"{len(recovered.missing)} table(s) of {pair} extracted again before the "
                    f"merge ({recovered.chunks_extracted} chunks): "
                    + "; ".join(f"{k}: {v}" for k, v in list(recovered.missing.items())[:3])
                )
            return recovered, build_training_file(
                checkpoints.storage(),
                training_io_manager.storage(),
                settings.catalog(),
                pair,
                settings.training_window(),
                settings.thresholds(),
                recovered=recovered,
                progress=context.log.info,
            )

        recovered, built = redone_if_replaced(build, context.log.warning)
    if built.cleared:
        context.log.warning(
            f"deleted {len(built.cleared)} temporary file(s) a killed writer of {pair}'s "
            f"training file left: {', '.join(built.cleared[:3])}"
        )
    merged, report, history = built.merge, built.report, built.history
    verdict = "passed every gate check" if report.passed else f"failed {list(report.failed)}"
    context.log.info(f"training file of {pair}: {merged.rows} x {merged.columns}, {verdict}")
    own = usage.finish()
    step = md.step_usage(own, footprint_metadata(own.peak_rss_bytes, local.peak))
    details = md.table(
        [
            "merge s",
            "validation s",
            "chunks opened",
            "of chunks",
            "chunks extracted again",
            "MB copied",
            "judged against",
        ],
        [
            [
                round(merged.seconds, 2),
                round(built.validation_seconds, 2),
                merged.chunks_opened,
                merged.chunks,
                recovered.chunks_extracted if recovered else 0,
                round(merged.bytes_reused / 1e6, 2),
                f"the profile of {history.created}" if history else "nothing: a first build",
            ]
        ],
    )
    yield dg.Output(
        built.training_file,
        metadata={
            "dagster/row_count": dg.MetadataValue.int(merged.rows),
            "columns": dg.MetadataValue.int(merged.columns),
            "size_mb": md.mb(merged.bytes_written),
            "gate": dg.MetadataValue.text(
                "passed" if report.passed else f"FAILED: {', '.join(report.failed)}"
            ),
            "row_groups": dg.MetadataValue.int(merged.row_groups),
            "row_groups_reused": dg.MetadataValue.int(merged.row_groups_reused),
            **step,
            "run_cost_usd": md.usd(own.estimated_cost_usd + _earlier_steps_cost(context, pair)),
            "details": dg.MetadataValue.md(f"{details}\n\n{report.family_table_markdown()}"),
        },
    )
    yield from check_results(report, TRAINING_FILE)


def _earlier_steps_cost(context: dg.AssetExecutionContext, pair: str) -> float:
    """The estimated cost of the steps of this run before this one: the checkpoint steps that
    recorded their usage on a checkpoint of this pair (or on the shared ones) in this run."""
    total = 0.0
    keys = [
        *((checkpoint_asset_key(f), [pair]) for f in (*PAIR_FAMILIES, TARGETS)),
        *((checkpoint_asset_key(f), None) for f in SHARED_FAMILIES),
    ]
    for key, partitions in keys:
        found = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=1
        )
        for record in found.records:
            event = record.asset_materialization
            if record.run_id != context.run.run_id or event is None:
                continue
            usage = Usage.from_metadata(md.recorded_usage(event.metadata))
            if usage is not None and md.USAGE in event.metadata:
                total += usage.estimated_cost_usd
    return total


# Observable sources are beta in dagster 1.13 with no stable equivalent (defs/previews.py).
with allowed_previews():

    @dg.multi_observable_source_asset(
        name="pair_sources",
        specs=[_source_spec(_CATALOG, f) for f in (*PAIR_FAMILIES, TARGETS)],
        partitions_def=pairs_partitions,
        can_subset=True,
        required_resource_keys={"warehouse", "settings"},
        description=(
            "Observes one pair's own warehouse tables (pair, corr, cov) and its targets table."
        ),
    )
    def pair_sources(context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
        yield from _observe(context, context.partition_key)

    @dg.multi_observable_source_asset(
        name="shared_sources",
        specs=[_source_spec(_CATALOG, f) for f in SHARED_FAMILIES],
        can_subset=True,
        required_resource_keys={"warehouse", "settings"},
        description="Observes the warehouse tables every pair uses (tri, mkt, var, csi).",
    )
    def shared_sources(context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
        yield from _observe(context, None)


SHARED_CHECKPOINT = checkpoint_asset_key(SHARED_FAMILIES[0])
"""The shared checkpoints are materialized together; one of them stands for all."""
warehouse_assets = [pair_sources, shared_sources]


all_assets = [
    *warehouse_assets,
    shared_checkpoints,
    pair_checkpoints,
    training_file,
]
