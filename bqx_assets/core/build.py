"""A pair's training file built: merged from its checkpoints, gate-checked, ready to publish."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.checkpoints.recover import Recovery
from bqx_assets.core.checkpoints.select import stored_window
from bqx_assets.core.checkpoints.window import ResolvedWindow, TrainingWindow
from bqx_assets.core.errors import ReplacedWhileRead
from bqx_assets.core.gate.profile import Profile, load_profile
from bqx_assets.core.gate.report import Expectation, ValidationReport
from bqx_assets.core.gate.thresholds import Thresholds
from bqx_assets.core.gate.validate import validate_training_file
from bqx_assets.core.layout import training_file_key
from bqx_assets.core.merge import MergeReport, merge_checkpoints, pair_inputs
from bqx_assets.core.metrics import Stopwatch
from bqx_assets.core.publish import TrainingFile, clear_dead_writes
from bqx_assets.core.storage import Storage

T = TypeVar("T")

RESTART_WAITS_S = (30.0, 90.0)
"""The seconds a pair's build waits before it starts again, its checkpoints looked up again,
each time a checkpoint it reads is replaced under it (a refresh of the shared checkpoints, the
same for every pair, may run while a pair merges): 3 starts in all; a third meeting fails the
step. Long enough for that refresh to end: a day's refresh of the 411 shared tables took 14 s on
the embedded warehouse at 44,437 rows (bench/README.md); through BigQuery it is not measured."""


@dataclass(frozen=True)
class TrainingBuild:
    """A pair's training file as built: merged, checked, not yet published."""

    pair: str
    window: ResolvedWindow
    merge: MergeReport
    report: ValidationReport
    history: Profile | None
    """The pair's last published profile, the build's drift was judged against (None: first)."""
    validation_seconds: float
    cleared: tuple[str, ...] = ()
    """Temporary files a killed writer of the pair's training file left, deleted first."""

    @property
    def training_file(self) -> TrainingFile:
        """What the output root publishes (`publish.publish_training_file`)."""
        report = self.report
        profile = report.profile if report.passed else None
        return TrainingFile(self.pair, self.merge.staged, report.passed, report.to_dict(), profile)


def build_training_file(
    checkpoints: Storage,
    output: Storage,
    catalog: Catalog,
    pair: str,
    window: TrainingWindow,
    thresholds: Thresholds,
    *,
    recovered: Recovery | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainingBuild:
    """The pair's training file, merged into a sink of `output` and gate-checked there.

    The window is the one the pair's checkpoints were made for (a rolling one: the days its
    stored spine holds); the chunks inside it are checked against their manifests (in an object
    store, pinned to the version checked and read in place). Row groups whose inputs did not
    change are copied from the pair's published file. Its drift is judged against the profile
    published with the pair's last file; a file that passes carries its own profile, published
    with it (`publish.publish_training_file`). On any error nothing is left in `output` but what
    was there.

    `recovered`: the pair's chunks as the step before the merge checked (and re-made) them
    (`recover.recover_pair_chunks`), read as they are instead of being looked up again."""
    cleared = tuple(clear_dead_writes(output, pair))
    history = load_profile(output, pair)
    if recovered is None:
        resolved = stored_window(checkpoints, catalog.targets[pair], window)
        inputs = pair_inputs(checkpoints, catalog, pair, resolved)
    else:
        resolved = recovered.window
        inputs = pair_inputs(checkpoints, catalog, pair, resolved, recovered.chunks)
    # Looked up before the sink is opened: the merge aborts the sink on its own errors only.
    key = training_file_key(pair)
    previous = output.find_file(key)
    merged = merge_checkpoints(
        inputs.spine, inputs.tables, output.stage(key), previous=previous, progress=progress
    )
    try:
        clock = Stopwatch()
        # The merge wrote exactly the spine's rows (it verified the key column read back).
        expectation = Expectation.for_pair(catalog, pair, merged.rows)
        with merged.staged.file.reader() as stored:
            report = validate_training_file(
                merged.staged.info.uri,
                expectation,
                thresholds.within(resolved.training),
                history=history,
                source=stored,
            )
    except BaseException:
        output.discard(merged.staged)
        raise
    return TrainingBuild(pair, resolved, merged, report, history, clock.seconds, cleared)


def redone_if_replaced(
    build: Callable[[], T],
    warn: Callable[[str], None],
    *,
    waits_s: Sequence[float] = RESTART_WAITS_S,
) -> T:
    """`build()`, started again from the checkpoints as they are then when a checkpoint it read
    was replaced or deleted under it (`ReplacedWhileRead`, however the merge wrapped it), after
    each of `waits_s` in turn; once they are spent, the error is raised. Each restart is said
    through `warn`. A build that read a replaced chunk wrote nothing (the merge discards its
    own temporary file on any error).

    The writer is a refresh of the shared checkpoints: the automation holds a pair's build
    while they are being observed or re-extracted, but not one already running when that
    starts (nor does a person's). Started again, the build merges the pair's checkpoints with
    the refreshed shared ones, a file of the pair's rows, complete; the automation then
    rebuilds the pair's checkpoints and file at the refresh's cut (defs/assets.py:
    AFTER_SHARED). Without this, the step would fail, and the instance's run retries would
    start it again the same way after a failed run."""
    attempts = len(waits_s) + 1
    for attempt, wait in enumerate(waits_s, start=2):
        try:
            return build()
        except Exception as exc:
            replaced = _replaced(exc)
            if replaced is None:
                raise
        warn(
            f"a checkpoint was replaced while the build read it ({replaced}): starting again "
            f"in {wait:g} s from the checkpoints as they are then (attempt {attempt} of "
            f"{attempts})"
        )
        time.sleep(wait)
    return build()


def _replaced(exc: BaseException) -> ReplacedWhileRead | None:
    """The `ReplacedWhileRead` behind an error, through its causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ReplacedWhileRead):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
