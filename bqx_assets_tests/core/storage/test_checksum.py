"""CRC32C of files, of bytes and of concatenations, in the form GCS reports it."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import google_crc32c
import pytest

from bqx_assets.core.storage import checksum
from bqx_assets.core.storage.checksum import bytes_crc32c, crc32c_concat, file_crc32c


def test_the_form_is_base64_of_the_big_endian_value() -> None:
    # The check value of CRC32C ("123456789" -> 0xE3069283), as GCS's `crc32c` field gives it.
    assert bytes_crc32c(b"123456789") == base64.b64encode(bytes.fromhex("e3069283")).decode()
    assert bytes_crc32c(b"") == "AAAAAA=="


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 20])
def test_file_checksum_is_the_checksum_of_its_bytes_whatever_the_read_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(checksum, "_CHUNK", 8)  # files of several reads
    data = bytes(range(size))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_crc32c(path) == bytes_crc32c(data)
    assert file_crc32c(str(path)) == bytes_crc32c(data)


def test_the_checksum_of_a_concatenation_comes_from_its_parts_checksums() -> None:
    rng = random.Random(3)
    for count in (1, 2, 5):
        parts = [rng.randbytes(rng.choice([0, 1, 4, 1000, 70_001])) for _ in range(count)]
        assert crc32c_concat([(bytes_crc32c(p), len(p)) for p in parts]) == bytes_crc32c(
            b"".join(parts)
        )
    assert crc32c_concat([]) == bytes_crc32c(b"")
    # A wrong part gives another checksum.
    a, b = b"PAR1", b"row group"
    assert crc32c_concat([(bytes_crc32c(a), 4), (bytes_crc32c(b"row grouP"), 9)]) != bytes_crc32c(
        a + b
    )


def test_a_long_part_is_combined_as_its_bytes_are() -> None:
    """A part of 2**k bytes and more (the operator squared many times): a 9 GB file's row
    groups are hundreds of megabytes each, checked here on a part of a few megabytes."""
    rng = random.Random(5)
    head, tail = rng.randbytes(3), rng.randbytes((1 << 22) + 5)
    whole = google_crc32c.Checksum(head + tail).digest()
    assert crc32c_concat([(bytes_crc32c(head), 3), (bytes_crc32c(tail), len(tail))]) == (
        base64.b64encode(whole).decode()
    )
