"""LocalStorage: keys, listings, escapes and checksums as a refresh relies on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bqx_assets.core import storage as storage_module
from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage import LocalStorage, bytes_crc32c, file_crc32c


def _put(root: Path, key: str, data: bytes = b"x") -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_listing_matches_sorted_paths_and_skips_temporaries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # "a-b" sorts before "a/..." as text but after it by path parts: the listing is by parts.
    for key in ["a/b/2.parquet", "a/b/1.manifest.json", "a-b/c.parquet", "a/z.parquet", "b.txt"]:
        _put(root, key)
    _put(root, "a/b/.1.parquet.0123.tmp")
    (root / "a" / "empty").mkdir()
    storage = LocalStorage(root)

    expected = [
        p.relative_to(root).as_posix()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    ]
    assert list(storage.list()) == expected
    assert list(storage.list("a/b")) == ["a/b/1.manifest.json", "a/b/2.parquet"]
    assert list(storage.list("a/z.parquet")) == ["a/z.parquet"]
    assert list(storage.list("missing")) == []
    assert list(storage.temporaries("a/b")) == ["a/b/.1.parquet.0123.tmp"]
    assert list(storage.temporaries("a")) == []


def test_keys_that_resolve_outside_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _put(outside, "secret.parquet", b"secret")
    _put(root, "inside/kept.parquet")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "inside" / "leak.parquet").symlink_to(outside / "secret.parquet")
    storage = LocalStorage(root)

    for key in ["../outside/secret.parquet", "inside/../../outside/secret.parquet",
                "linked/secret.parquet", "inside/leak.parquet"]:  # fmt: skip
        with pytest.raises(StorageError, match="escapes the storage root"):
            storage.stat(key)
        with pytest.raises(StorageError, match="escapes the storage root"):
            storage.read_bytes(key)
    assert storage.read_bytes("inside/../inside/kept.parquet") == b"x"
    (root / "inside" / "alias.parquet").symlink_to(root / "inside" / "kept.parquet")
    assert storage.read_bytes("inside/alias.parquet") == b"x"  # a link inside the root is read
    alias = storage.stat("inside/alias.parquet")
    assert alias is not None and alias == storage.stat("inside/kept.parquet")
    assert storage.stat("inside/missing.parquet") is None
    assert storage.stat("inside") is None  # a folder is not a stored file


def test_a_replaced_file_is_checksummed_again(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    info = storage.write_bytes("t/a.manifest.json", b"first")
    assert info.crc32c == bytes_crc32c(b"first")
    assert LocalStorage(tmp_path).stat("t/a.manifest.json") == info  # not taken on trust

    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"second, longer")
    os.replace(replacement, tmp_path / "t" / "a.manifest.json")
    again = storage.stat("t/a.manifest.json")
    assert again is not None
    assert (again.size, again.crc32c) == (14, bytes_crc32c(b"second, longer"))
    storage.delete("t/a.manifest.json")
    storage.delete("t/a.manifest.json")  # no error when already gone
    assert storage.stat("t/a.manifest.json") is None
    assert storage.read_bytes("t/a.manifest.json") is None


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 20])
def test_file_checksum_is_the_checksum_of_its_bytes_whatever_the_read_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(storage_module, "_CHUNK", 8)  # files of several reads
    data = bytes(range(size))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_crc32c(path) == bytes_crc32c(data)
