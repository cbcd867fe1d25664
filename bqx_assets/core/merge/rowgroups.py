"""The training file's row groups: cut by the calendar, each signed by what its bytes depend on."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bqx_assets.core.layout import ARROW_TYPES
from bqx_assets.core.merge.inputs import InputTable

DEFAULT_ROW_GROUP_ROWS = 262_144
"""Most rows in one row group (a month holds ~32K minutes)."""
LAYOUT_FORMAT = 2
"""Bumped whenever the output's bytes for the same inputs change: no row group is copied from a
file of another format."""
OUTPUT_COMPRESSION = "zstd"
OUTPUT_COMPRESSION_LEVEL = 1
_FIRST_SUNDAY = 3  # 1970-01-04, day 3 of the epoch: weeks counted from it start on Sundays


def row_groups(keys: np.ndarray, cap: int = DEFAULT_ROW_GROUP_ROWS) -> list[tuple[int, int]]:
    """The row groups as (start, stop) rows of the spine: one per calendar month (UTC) before
    the newest month, one per trading week (from Sunday, when the FX week opens) in the newest
    month, each cut to at most `cap` rows. A function of the keys alone: a refresh and a
    from-scratch build of the same spine cut the same row groups."""
    if not len(keys):
        return []
    stamps = keys.astype("datetime64[us]")
    months = stamps.astype("datetime64[M]").astype(np.int64)
    weeks = (stamps.astype("datetime64[D]").astype(np.int64) - _FIRST_SUNDAY) // 7
    label = np.where(months == months[-1], weeks * 2 + 1, months * 2)  # odd: a week, even: a month
    edges = [0, *(np.flatnonzero(label[1:] != label[:-1]) + 1).tolist(), len(keys)]
    return [
        (a, min(a + cap, stop))
        for start, stop in itertools.pairwise(edges)
        for a in range(start, stop, cap)
    ]


@dataclass(frozen=True)
class Layout:
    """What each row group's bytes depend on."""

    plan: str
    """Digest of what every row group's bytes depend on besides its inputs: the columns, their
    types, the encoder and its settings."""
    signatures: list[str | None]
    """Per row group: digest of `plan` and the ids of the input chunks overlapping its keys
    (None when a chunk has no id: such a row group is never copied)."""


def plan_digest(names: Sequence[str], types: Sequence[pa.DataType], rows_per_group: int) -> str:
    text = json.dumps(
        [
            LAYOUT_FORMAT,
            pa.__version__,
            OUTPUT_COMPRESSION,
            OUTPUT_COMPRESSION_LEVEL,
            rows_per_group,
            list(names),
            [str(t) for t in types],
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def signatures(
    keys: np.ndarray,
    groups: Sequence[tuple[int, int]],
    spine: InputTable,
    tables: Sequence[InputTable],
) -> list[str | None]:
    """Each row group's digest of the ids of every chunk that may hold rows for it: the
    spine's chunks (its keys and targets) and each table's, in output order."""
    every = [spine, *tables]
    if any(c.id is None for t in every for c in t.chunks):
        return [None] * len(groups)
    out: list[str | None] = []
    for a, b in groups:
        lo, hi = int(keys[a:b].min()), int(keys[a:b].max())
        digest = hashlib.sha256()
        for table in every:
            digest.update(b"|")
            for chunk in table.chunks:
                assert chunk.id is not None
                if chunk.id.start <= hi and chunk.id.end > lo:
                    digest.update(f"{chunk.id.start}:{chunk.id.end}:{chunk.id.digest};".encode())
        out.append(digest.hexdigest())
    return out


def declared(tables: Sequence[InputTable]) -> tuple[list[str], list[pa.DataType]] | None:
    """The feature columns' output names and types as the tables declare them (the catalog's
    columns and types: what planning makes of them once the chunks match), or None when a
    table leaves them to its files."""
    names: list[str] = []
    types: list[pa.DataType] = []
    for table in tables:
        if table.columns is None or table.dtypes is None:
            return None
        for column, name in table.columns:
            dtype = table.dtypes.get(column)
            if dtype not in ARROW_TYPES:
                return None
            names.append(name)
            types.append(ARROW_TYPES[dtype])
    return names, types
