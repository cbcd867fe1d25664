"""Helpers the tests of several modules share: an upstream correction, a root that keeps xattrs,
memory held for a moment."""

from __future__ import annotations

import mmap
import os
from datetime import date
from pathlib import Path

import pytest

from bqx_assets.core.catalog import Catalog
from bqx_assets.core.layout import KEY
from bqx_assets.core.warehouse.embedded import connect


def correct_day(path: Path, catalog: Catalog, table: str, day: date) -> None:
    """A correction upstream: one day of one table rewritten, its partition's time updated.
    The only connection to the file while it is written (close the others first)."""
    source = catalog.table(table)
    column = next(c.name for c in source.columns if c.dtype == "FLOAT64")
    con = connect(path, read_only=False)
    try:
        con.execute(
            f'UPDATE "{source.dataset}"."{table}" SET "{column}" = "{column}" + 1 '
            f'WHERE CAST("{KEY}" AS DATE) = ?',
            [day],
        )
        con.execute(
            'UPDATE "_bqx_meta"."partitions" SET last_modified = now() '
            "WHERE dataset = ? AND table_name = ? AND day = ?",
            [source.dataset, table, day],
        )
    finally:
        con.close()


def root_with_xattrs(tmp_path: Path) -> Path:
    """A folder for a local root whose filesystem keeps user xattrs (where a root records the
    checksums it vouches for); the test is skipped where it does not."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except (AttributeError, OSError) as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    finally:
        probe.unlink()
    return tmp_path / "root"


PAGE = mmap.PAGESIZE


def hold_memory(size: int) -> None:
    """`size` bytes resident for a moment, then handed back: a mapping of their own, each page
    touched, unmapped at the end. (A `bytearray` may be carved from freed heap memory that is
    resident already and stays so, which leaves the process's RSS where it was.)"""
    held = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, PAGE):
            held[offset] = 1
    finally:
        held.close()
