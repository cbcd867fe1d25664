"""Upstream jobs writing while a run reads: the embedded warehouse, appended to mid-step, for the
tests and the benchmark of the cut (`bench/cut_appends.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from bqx_assets.core.warehouse import Cut, DateRange, TableRead
from bqx_assets.core.warehouse.embedded import EmbeddedWarehouse


class AppendingWarehouse(EmbeddedWarehouse):
    """The embedded warehouse, appending `minutes` to every table right after its `after`-th
    read (`arm` sets them again for the next step). `as_of_cut=False` reads as the warehouse
    was before cuts existed: each read as of its own moment (the baseline)."""

    def __init__(
        self, path: Path, after: int = 0, minutes: int = 0, *, as_of_cut: bool = True
    ) -> None:
        super().__init__(path, read_only=False)
        self.as_of_cut = as_of_cut
        self.arm(after, minutes)

    def arm(self, after: int, minutes: int) -> None:
        self.after, self.minutes = after, minutes
        self.reads: list[str] = []
        self.appended_at: datetime | None = None
        """When the append committed (None: not yet)."""

    @property
    def fired(self) -> bool:
        return self.appended_at is not None

    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        done = super().read(dataset, table, columns, window, cut=cut if self.as_of_cut else None)
        self.reads.append(table)
        if len(self.reads) == self.after:
            self.append(self.minutes)
            self.appended_at = self.cut().at
        return done
