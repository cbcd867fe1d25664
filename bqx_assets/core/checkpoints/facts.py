"""What the merge plans a chunk from without opening it, recorded when the chunk is written."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.keys import pack_keys, unpack_keys
from bqx_assets.core.layout import KEY, canonical_type


@dataclass(frozen=True)
class ChunkFacts:
    """One chunk's row groups' rows, its columns' types and null cells, and its keys (packed:
    `keys.pack_keys`, in file order). A merge plans a table from its chunks' facts and opens
    only the chunks whose rows it encodes: a refresh that copies most row groups reads no
    footer or key column of the chunks behind them (~15,000 at production length). Facts are
    trusted as far as the chunk's bytes are: they are in its manifest, checked against the
    file's size and CRC32C before the merge, and a chunk that is opened is checked against
    them (columns, types, row groups). The keys stay packed until a table is planned (a pair's
    keys unpacked are ~1 GB at production length)."""

    rows: tuple[int, ...]
    names: tuple[str, ...]
    """The chunk's columns but the key, in file order; `types` (their `canonical_type` as text)
    and `nulls` (null cells; -1 where unknown) are theirs. Tuples of interned text: a pair
    holds ~15,000 chunks'."""
    types: tuple[str, ...]
    nulls: tuple[int, ...]
    packed_keys: str
    unpacked: np.ndarray | None = field(default=None, compare=False, repr=False)
    """The keys already at hand (facts read from a file rather than a manifest)."""

    @classmethod
    def of(cls, meta: pq.FileMetaData, data: pa.Table, keys: np.ndarray) -> ChunkFacts:
        """The facts of a chunk from its footer as written (its row groups), the table written
        (its columns' types and null cells: what the footer's statistics count; taken from the
        table, where they are known, rather than the footer) and its keys."""
        schema = data.schema
        names, types = schema.names, schema.types
        at = [i for i, n in enumerate(names) if n != KEY]
        columns = data.columns
        return cls(
            tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups)),
            tuple(names[i] for i in at),
            tuple(str(canonical_type(types[i])) for i in at),
            tuple(columns[i].null_count for i in at),
            pack_keys(keys),
        )

    def columns(self) -> dict[str, tuple[str, int]]:
        """(type as text, null cells) by column name."""
        return dict(zip(self.names, zip(self.types, self.nulls, strict=True), strict=True))

    def keys(self) -> np.ndarray:
        """The chunk's keys, int64 microseconds; ValueError when the record does not hold as
        many as its row groups' rows."""
        if self.unpacked is not None:
            return self.unpacked
        return unpack_keys(self.packed_keys, sum(self.rows))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": list(self.rows),
            "columns": {
                n: [t, c] for n, t, c in zip(self.names, self.types, self.nulls, strict=True)
            },
            "keys": self.packed_keys,
        }

    @classmethod
    def from_json(cls, data: Any) -> ChunkFacts | None:
        """None when `data` is not a record of facts (the chunk is then opened and read); its
        keys are unpacked, and checked, when the table is planned."""
        try:
            rows = tuple(int(n) for n in data["rows"])
            columns = [
                (sys.intern(str(n)), sys.intern(str(t)), int(c))
                for n, (t, c) in data["columns"].items()
            ]
            names, types, nulls = (
                (tuple(v) for v in zip(*columns, strict=True)) if columns else ((), (), ())
            )
            return cls(rows, names, types, nulls, str(data["keys"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
