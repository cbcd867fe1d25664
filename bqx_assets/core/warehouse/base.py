"""The warehouse interface that extraction reads through (BigQuery or the embedded DuckDB)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa

from bqx_assets.core.catalog import SchemaRow
from bqx_assets.core.errors import WarehouseError


@dataclass(frozen=True)
class SourceState:
    """What the warehouse says about a table now; a checkpoint is current while this matches."""

    dataset: str
    table: str
    rows: int
    last_modified: str
    """ISO-8601 UTC time of the table's last change (BigQuery `lastModifiedTime`)."""
    bytes: int

    @property
    def version(self) -> str:
        """A data version for Dagster: changes whenever the table does."""
        return f"{self.last_modified}/{self.rows}"


@dataclass(frozen=True)
class PartitionState:
    """One day (DATE(interval_time)) of a table: its rows and when it last changed
    (BigQuery `INFORMATION_SCHEMA.PARTITIONS`: total_rows, last_modified_time)."""

    day: date
    rows: int
    last_modified: str


class PartitionStates(dict[str, tuple[PartitionState, ...]]):
    """Per-day states of the tables a look-up described, by name, each ordered by day; `errors`
    names the tables it could not describe (not partitioned by day, rows in no day) and why. A
    table that does not exist is in neither."""

    def __init__(
        self,
        states: Mapping[str, tuple[PartitionState, ...]] | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(states or {})
        self.errors: dict[str, str] = dict(errors or {})


@dataclass(frozen=True)
class Cut:
    """The moment a run reads the warehouse as of: each table is read as it was then, whatever
    upstream jobs write while the run reads. A checkpoint step takes one (`Warehouse.cut()`)
    before anything else and passes it to every look-up, read and export of the step
    (`checkpoints.refresh.refresh_checkpoints`), so its partition states and rows agree; a
    pair's step may be given the shared step's, so that a file mixing both is of one moment.

    BigQuery: a read session's and query's snapshot time (time travel). The embedded warehouse:
    the rows and day states of the appends committed by `at` (its append log), none after."""

    at: datetime
    """UTC."""

    @classmethod
    def common(cls, ats: Iterable[datetime], now: datetime) -> Cut | None:
        """The cut a step reads as of to agree with the steps that took `ats` (the shared
        checkpoints' latest steps): the oldest of them, or None (the step takes its own) when
        there is none or it is older than a snapshot time BigQuery can still read."""
        oldest = min(ats, default=None)
        if oldest is None or now - oldest > CUT_MAX_AGE:
            return None
        return cls(oldest.astimezone(UTC))


CUT_MAX_AGE = timedelta(days=6)
"""The oldest cut a step is given: BigQuery reads a table as of at most 7 days ago (its default
time travel window, https://cloud.google.com/bigquery/docs/time-travel), less a day for the
step to finish its reads."""


@dataclass(frozen=True)
class DateRange:
    """The training window: rows with `start <= interval_time < end` (either side open if None)."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class TableRead:
    """Rows of one table, as Arrow, and the bytes the warehouse scanned to produce them."""

    data: pa.Table
    bytes_read: int
    bytes_estimated: bool = False
    """`bytes_read` is the warehouse's estimate (a read session's), not what it billed."""


class Warehouse(ABC):
    """Where feature and targets tables live. Extraction uses only this interface."""

    name: str

    @abstractmethod
    def information_schema(self) -> list[SchemaRow]:
        """`INFORMATION_SCHEMA.COLUMNS` rows of the features and targets datasets."""

    @abstractmethod
    def state(self, dataset: str, table: str) -> SourceState:
        """Row count, size and last-modified time of a table."""

    def states(self, dataset: str, tables: Sequence[str]) -> dict[str, SourceState]:
        """States of the tables that exist, by name (a missing table is left out)."""
        out = {}
        for table in tables:
            try:
                out[table] = self.state(dataset, table)
            except WarehouseError:
                continue
        return out

    def cut(self) -> Cut:
        """A cut at this moment, for a run to read every table as of."""
        return Cut(datetime.now(UTC))

    @property
    def bytes_billed(self) -> int:
        """Bytes the warehouse billed for this connection's query jobs so far, as it reports
        them (the embedded warehouse bills nothing). Reads report their own bytes, which
        `TableRead.bytes_estimated` says are estimates or not."""
        return 0

    @abstractmethod
    def partition_states(
        self, dataset: str, tables: Sequence[str], *, cut: Cut | None = None
    ) -> PartitionStates:
        """Per-day states (DATE(interval_time)) of the tables that exist, by name, each ordered
        by day, as of `cut` where given: one look-up for the whole dataset (a missing table is
        left out; a table it cannot describe is in `errors`)."""

    @abstractmethod
    def read(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        window: DateRange,
        *,
        cut: Cut | None = None,
    ) -> TableRead:
        """`columns` of a table (key first), rows within `window`, ordered by the key, as of
        `cut` where given.

        Raises WarehouseError naming the table when it cannot be read.
        """

    def export_table(
        self,
        dataset: str,
        table: str,
        columns: Sequence[str],
        staging_uri: str,
        *,
        cut: Cut | None = None,
    ) -> TableRead | None:
        """The whole table, as `read()` with an unbounded window returns it, made by an export to
        files under `staging_uri` that the warehouse does not bill as a scan (`bytes_read` 0).

        None where the warehouse has no such export: the caller reads the table instead.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
