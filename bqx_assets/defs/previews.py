"""The Dagster beta and preview APIs used where no stable one does the same: their warnings,
silenced in this one place, each with why."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

ALLOWED: tuple[tuple[type[Warning], str, str], ...] = (
    (
        dg.BetaWarning,
        r"Function `multi_observable_source_asset` is currently in beta",
        # dagster 1.13: `observable_source_asset` is beta too; `@multi_asset` always
        # materializes (an ObserveResult it yields is recorded as a materialization); an
        # `AssetSpec` alone cannot run. Only an observable source records a data version per
        # family and pair in a step that Declarative Automation requests on its cron.
        "the warehouse families' observations (defs/assets.py: pair_sources, shared_sources)",
    ),
    (
        dg.PreviewWarning,
        r"Specifying a partitions_def on an AssetCheckSpec is currently in preview",
        # Without it the UI keeps only the latest pair's result of each check.
        "one result per pair of each gate check (defs/checks.py: training_check_specs)",
    ),
)
"""(category, message pattern, what uses it) for each warning bqx_assets silences."""


@contextmanager
def allowed_previews() -> Iterator[None]:
    """Declarations inside this block may use the APIs of `ALLOWED` without a warning; any other
    beta or preview warning still shows."""
    with warnings.catch_warnings():
        for category, message, _ in ALLOWED:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
