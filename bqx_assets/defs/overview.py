"""`gate_summary`: every pair's gate on one page, brought up to date after pairs' runs."""

import dagster as dg
import polars as pl

from bqx_assets.core.gate.validate import CHECK_NAMES
from bqx_assets.core.overview import PASSED, PairGate, gate_overview, overview_table
from bqx_assets.defs.assets import TRAINING_FILE, TRAINING_GROUP
from bqx_assets.defs.costs import latest_build
from bqx_assets.defs.io_managers import TrainingFileIOManager
from bqx_assets.defs.resources import PipelineSettings

GATE_SUMMARY = dg.AssetKey("gate_summary")
UPDATE_VIEW = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after pairs' training files are built")
"""Once any pair's training file was built (or quarantined) since the view was last made, and
no pair's build is still running."""
_REASON_CHARS = 160
"""A failed check's reason, cut to this many characters on the page (whole in the frame)."""


@dg.asset(
    key=GATE_SUMMARY,
    deps=[TRAINING_FILE],
    io_manager_key="frame_io_manager",
    group_name=TRAINING_GROUP,
    kinds={"polars"},
    automation_condition=UPDATE_VIEW,
)
def gate_summary(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    training_io_manager: dg.ResourceParam[TrainingFileIOManager],
) -> dg.Output[pl.DataFrame]:
    """Every pair's gate at a glance: a row per pair, failing pairs first, with each gate
    check's verdict (passed, or failed with its one-line reason), and the pair's rows, newest
    key, build time, drift (the family whose null share moved most since the pair's previous
    published file) and the cost of its last build. Read from the output root, where each build
    leaves its gate report and each published file its profile, so it shows every pair whatever
    run built it; a frame with a column per check."""
    gates = gate_overview(training_io_manager.storage(), settings.catalog().pairs)
    costs = {}
    for gate in gates:
        usage = latest_build(context.instance, gate.pair) if gate.run_id else None
        if usage is not None:
            costs[gate.pair] = {"cost_usd": round(usage.usage.estimated_cost_usd, 6)}
    table = overview_table(gates, costs)
    failing = [g for g in gates if g.failed]
    return dg.Output(
        pl.from_arrow(table),  # type: ignore[arg-type]
        metadata={
            "pairs": dg.MetadataValue.int(len(gates)),
            "pairs_failing": dg.MetadataValue.int(len(failing)),
            "pairs_not_built": dg.MetadataValue.int(sum(not g.checks for g in gates)),
            "gate": dg.MetadataValue.md(_markdown(gates, costs)),
        },
    )


def _markdown(gates: list[PairGate], costs: dict[str, dict[str, float]]) -> str:
    lines = [
        "| pair | gate | failed checks: why | rows | newest key | built | drift | cost |",
        "|---|---|---|---:|---|---|---|---:|",
    ]
    for g in gates:
        if not g.checks:
            verdict, why = g.status, ""
        elif g.failed:
            verdict = f"FAILED {len(g.failed)} of {len(CHECK_NAMES)}"
            why = "<br>".join(
                f"**{name}**: {_cell(g.checks[name].removeprefix('FAILED: '))}" for name in g.failed
            )
        else:
            verdict, why = f"{PASSED} ({g.status})", ""
        cost = costs.get(g.pair, {}).get("cost_usd")
        lines.append(
            f"| {g.pair} | {verdict} | {why} | {'' if g.rows is None else f'{g.rows:,}'} "
            f"| {g.last_key or ''} | {g.built_at or ''} | {g.drift} "
            f"| {'' if cost is None else f'${cost:.4f}'} |"
        )
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text fit for one cell of a markdown table."""
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"
