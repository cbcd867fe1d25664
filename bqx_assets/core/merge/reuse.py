"""Which row groups of an earlier training file a merge copies instead of encoding them again."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bqx_assets.core.errors import MergeError, StorageError
from bqx_assets.core.merge.footer import MAGIC
from bqx_assets.core.merge.rowgroups import LAYOUT_FORMAT, Layout
from bqx_assets.core.storage import StoredFile, bytes_crc32c

ROW_GROUPS_KEY = "bqx:row_groups"
"""Footer key-value metadata: each row group's rows, byte span, CRC32C, signature, and its
RowGroup struct's span and CRC32C: what a later merge needs to copy it."""


@dataclass(frozen=True)
class ReusedRowGroup:
    """A row group of the earlier file to copy: its record there (byte span, CRC32C, ...), its
    RowGroup struct, and its index there when that struct matched its recorded CRC32C (so the
    footer can keep its bytes unparsed where it does not move)."""

    record: dict[str, Any]
    raw: bytes
    was: int | None

    @property
    def span(self) -> tuple[int, int, str]:
        """(start, stop, CRC32C) of its bytes in the earlier file."""
        return int(self.record["start"]), int(self.record["end"]), str(self.record["crc32c"])


@dataclass(frozen=True)
class Reuse:
    """The row groups to copy from `source`, by their index in the new file."""

    source: StoredFile
    groups: dict[int, ReusedRowGroup]

    @property
    def count(self) -> int:
        return len(self.groups)

    @property
    def bytes(self) -> int:
        return sum(stop - start for start, stop, _ in (g.span for g in self.groups.values()))

    def leading(self) -> list[int]:
        """The row groups copied from the first on, without one built between them."""
        out: list[int] = []
        while len(out) in self.groups:
            out.append(len(out))
        return out

    def damaged(self, r: int) -> MergeError:
        return MergeError(
            f"previous training file {self.source}: its row group for row group {r} does not "
            "match the CRC32C recorded when it was written (the file was changed or damaged "
            "since); nothing was published: move it away and run again to build from scratch"
        )


def footer_of(source: StoredFile) -> bytes:
    """The file's footer (FileMetaData bytes)."""
    size = source.size
    end = source.read_range(size - 8, size)
    length = int.from_bytes(end[:4], "little")
    if end[4:] != MAGIC or length + 12 > size:
        raise MergeError(f"previous training file {source}: not a parquet file")
    return source.read_range(size - 8 - length, size - 8)


def find_reuse(
    previous: StoredFile,
    layout: Layout,
    names: Sequence[str],
    groups: Sequence[tuple[int, int]],
    keys: np.ndarray,
    newest_from: int,
    progress: Callable[[str], None],
) -> Reuse | None:
    """The row groups of `previous` whose signature and rows match one of this merge's, by the
    index they get here. The row groups holding the newest day are always encoded (they also
    count its nulls). None when there is none, or `previous` cannot be used (said why)."""
    try:
        footer = footer_of(previous)
        meta = pq.read_metadata(
            pa.BufferReader(MAGIC + footer + len(footer).to_bytes(4, "little") + MAGIC)
        )
        record = json.loads((meta.metadata or {}).get(ROW_GROUPS_KEY.encode(), b"null"))
    except (OSError, ValueError, StorageError, MergeError, pa.ArrowException) as exc:
        # Not an error: the file being built replaces it, from scratch.
        progress(f"previous training file {previous} not reused: {exc}")
        return None
    if not isinstance(record, dict) or record.get("format") != LAYOUT_FORMAT:
        progress(f"previous training file {previous} not reused: written by another layout")
        return None
    theirs = record.get("groups") or []
    # The record must describe this very footer: a file rewritten by another writer can carry
    # it over (pyarrow keeps a table's key-value metadata) without its row groups.
    described = meta.num_row_groups == len(theirs) and all(
        meta.row_group(r).num_rows == g.get("rows") for r, g in enumerate(theirs)
    )
    if record.get("plan") != layout.plan or meta.schema.names != list(names) or not described:
        progress(f"previous training file {previous} not reused: other columns, types or encoder")
        return None
    # Any row group whose inputs are unchanged, wherever it was: a rolling window drops days at
    # the start and a corrected day changes one row group, the others move as they are.
    by_signature = {g.get("signature"): (i, g) for i, g in enumerate(theirs) if g.get("signature")}
    size = previous.size
    chosen: dict[int, ReusedRowGroup] = {}
    for r, (a, b) in enumerate(groups):
        if int(keys[b - 1]) >= newest_from:
            break  # the newest day's row groups are always encoded: they count its nulls
        was, g = by_signature.get(layout.signatures[r], (None, None))
        if g is None or g.get("rows") != b - a:
            continue
        if not len(MAGIC) <= int(g["start"]) < int(g["end"]) <= size - len(footer) - 8:
            continue
        raw = footer[int(g["footer"][0]) : int(g["footer"][1])]
        checked = g.get("footer_crc32c") == bytes_crc32c(raw)
        chosen[r] = ReusedRowGroup(g, raw, was if checked else None)
    return Reuse(previous, chosen) if chosen else None


def row_groups_record(
    layout: Layout,
    written: Sequence[dict[str, Any]],
    spans: Sequence[tuple[int, int]],
    footer: bytes,
) -> dict[str, str]:
    """The footer's record of the row groups written (`written`: each one's rows, byte span,
    CRC32C and signature; `spans`: its RowGroup struct's span in the encoded `footer`)."""
    body = [
        {**g, "footer": [a, b], "footer_crc32c": bytes_crc32c(footer[a:b])}
        for g, (a, b) in zip(written, spans, strict=True)
    ]
    return {
        ROW_GROUPS_KEY: json.dumps(
            {"format": LAYOUT_FORMAT, "plan": layout.plan, "groups": body},
            separators=(",", ":"),
        )
    }
