"""LocalStorage: keys, listings, escapes and checksums as a refresh relies on them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bqx_assets.core.errors import ReplacedWhileRead, StorageError
from bqx_assets.core.storage import LocalFile, LocalStorage, bytes_crc32c, open_storage
from bqx_assets.core.storage.local import PUT_ATTEMPTS
from bqx_assets_tests.builders import root_with_xattrs


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
    assert LocalStorage(tmp_path).stat("t/a.manifest.json") == info  # another process

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


def _rewrite_in_place(path: Path, data: bytes, mtime_ns: int) -> None:
    """New bytes into the same inode, its mtime then set to `mtime_ns`."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_written_files_checksum_is_kept_with_it_until_its_size_or_mtime_changes(
    tmp_path: Path,
) -> None:
    root = root_with_xattrs(tmp_path)
    local = tmp_path / "chunk.parquet"
    local.write_bytes(b"first bytes")
    storage = LocalStorage(root)
    storage.put_file(local, "t/chunk.parquet")
    storage.write_bytes("t/chunk.manifest.json", b"{}")
    for key, data in [("t/chunk.parquet", b"first bytes"), ("t/chunk.manifest.json", b"{}")]:
        st = os.stat(root / key)
        expected = f"{st.st_size} {st.st_mtime_ns} {bytes_crc32c(data)}".encode()
        assert os.getxattr(root / key, "user.bqx.crc32c") == expected
        info = LocalStorage(root).stat(key)
        assert info is not None and info.crc32c == bytes_crc32c(data)

    # Other bytes of the same size under the same mtime: the documented limit, the recorded
    # checksum is reported without reading the file.
    path = root / "t" / "chunk.parquet"
    mtime_ns = os.stat(path).st_mtime_ns
    _rewrite_in_place(path, b"other bytes", mtime_ns)
    trusted = LocalStorage(root).stat("t/chunk.parquet")
    assert trusted is not None and trusted.crc32c == bytes_crc32c(b"first bytes")
    # A deep check reads the file, and its record is then the true one.
    deep = LocalStorage(root, trust_recorded_crc32c=False).stat("t/chunk.parquet")
    assert deep is not None and deep.crc32c == bytes_crc32c(b"other bytes")
    again = LocalStorage(root).stat("t/chunk.parquet")
    assert again is not None and again.crc32c == bytes_crc32c(b"other bytes")

    # A write as it happens: the same size, a later mtime. The file is read again.
    _rewrite_in_place(path, b"third bytes", mtime_ns + 1_000_000_000)
    changed = LocalStorage(root).stat("t/chunk.parquet")
    assert changed is not None and changed.crc32c == bytes_crc32c(b"third bytes")
    # A change of size is read again too, whatever the mtime.
    _rewrite_in_place(path, b"fourth, longer", mtime_ns + 1_000_000_000)
    longer = LocalStorage(root).stat("t/chunk.parquet")
    assert longer is not None and (longer.size, longer.crc32c) == (
        14,
        bytes_crc32c(b"fourth, longer"),
    )


def test_a_root_vouches_for_a_file_while_its_checksum_record_holds(tmp_path: Path) -> None:
    root = root_with_xattrs(tmp_path)
    storage = LocalStorage(root)
    local = tmp_path / "training.parquet"
    local.write_bytes(b"training file")
    storage.put_file(local, "training.parquet")
    assert storage.vouches("training.parquet")
    assert not storage.vouches("absent.parquet")
    assert not LocalStorage(root, trust_recorded_crc32c=False).vouches("training.parquet")
    # Written to (same size, later mtime): no longer, until it is checksummed again.
    path = root / "training.parquet"
    _rewrite_in_place(path, b"other file!!!", os.stat(path).st_mtime_ns + 1_000_000_000)
    assert not LocalStorage(root).vouches("training.parquet")
    assert LocalStorage(root).stat("training.parquet") is not None  # read and recorded anew
    assert LocalStorage(root).vouches("training.parquet")


@pytest.mark.parametrize(
    "record",
    [
        "{bigger} {mtime} {other}",  # stale: another size (trusted, it would be wrong)
        "{size} {earlier} {other}",  # stale: another mtime
        "{size} {mtime} not-base64",
        "{size} {mtime} AAAAAAAAAAA=",  # 8 bytes, not a CRC32C
        "{size} {mtime} AAAAAA",  # unpadded
        "{size}",
        "",
    ],
)
def test_a_stale_or_malformed_record_is_ignored_and_replaced(tmp_path: Path, record: str) -> None:
    root = root_with_xattrs(tmp_path)
    _put(root, "t/chunk.parquet", b"chunk bytes")
    path = root / "t" / "chunk.parquet"
    st = os.stat(path)
    fields = {
        "size": st.st_size,
        "bigger": st.st_size + 1,
        "mtime": st.st_mtime_ns,
        "earlier": st.st_mtime_ns - 1,
        "other": bytes_crc32c(b"other bytes"),
    }
    os.setxattr(path, "user.bqx.crc32c", record.format(**fields).encode())

    info = LocalStorage(root).stat("t/chunk.parquet")

    assert info is not None and info.crc32c == bytes_crc32c(b"chunk bytes")
    replaced = f"{st.st_size} {st.st_mtime_ns} {bytes_crc32c(b'chunk bytes')}".encode()
    assert os.getxattr(path, "user.bqx.crc32c") == replaced


def test_a_root_that_refuses_xattrs_reads_every_file_and_asks_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def refused(name: str) -> object:
        def call(*args: object) -> None:
            calls.append(name)
            raise OSError(errno.ENOTSUP, "Operation not supported")

        return call

    monkeypatch.setattr(os, "setxattr", refused("set"), raising=False)
    monkeypatch.setattr(os, "getxattr", refused("get"), raising=False)
    storage = LocalStorage(tmp_path)
    local = tmp_path / "local.parquet"
    local.write_bytes(b"chunk")
    # Writes succeed without a record; only the first asks the filesystem.
    assert storage.put_file(local, "t/a.parquet").crc32c == bytes_crc32c(b"chunk")
    assert storage.write_bytes("t/a.manifest.json", b"{}").crc32c == bytes_crc32c(b"{}")
    assert calls == ["set"]

    calls.clear()
    fresh = LocalStorage(tmp_path)
    for key, data in [("t/a.parquet", b"chunk"), ("t/a.manifest.json", b"{}")]:
        info = fresh.stat(key)
        assert info is not None and info.crc32c == bytes_crc32c(data)
    assert calls == ["get"]  # once for the root, then every file is read


def _no_links(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.EXDEV, "Invalid cross-device link")


@pytest.mark.parametrize("links", [True, False], ids=["hard link", "links refused"])
def test_a_copy_keeps_the_bytes_when_the_original_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool
) -> None:
    """What `versions/` needs of a published training file: a copy that keeps the old bytes
    after the published key is replaced (a hard link where the filesystem allows one)."""
    if not links:
        monkeypatch.setattr(os, "link", _no_links)
    storage = LocalStorage(tmp_path / "root")
    source = tmp_path / "first.parquet"
    source.write_bytes(b"the first published file")
    storage.put_file(source, "training.parquet")

    info = storage.copy("training.parquet", "versions/training.1.parquet")

    published = tmp_path / "root" / "training.parquet"
    version = tmp_path / "root" / "versions" / "training.1.parquet"
    assert os.path.samestat(os.stat(published), os.stat(version)) == links
    assert info.crc32c == bytes_crc32c(b"the first published file")
    # The published key replaced by a new file: the version keeps the old bytes.
    source.write_bytes(b"the second published file, longer")
    storage.put_file(source, "training.parquet")
    assert version.read_bytes() == b"the first published file"
    fresh = LocalStorage(tmp_path / "root")
    assert fresh.stat("versions/training.1.parquet").crc32c == info.crc32c
    assert fresh.stat("training.parquet").crc32c == bytes_crc32c(
        b"the second published file, longer"
    )
    assert [p.name for p in version.parent.iterdir()] == ["training.1.parquet"]


def test_open_storage_gives_a_local_root_for_a_folder_and_refuses_other_schemes(
    tmp_path: Path,
) -> None:
    storage = open_storage(tmp_path / "out")
    assert isinstance(storage, LocalStorage) and storage.durable
    assert storage.uri == str((tmp_path / "out").resolve())
    assert storage.uri_of("eurusd/a.parquet") == f"{storage.uri}/eurusd/a.parquet"
    assert not open_storage(str(tmp_path), durable=False).durable  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match=r"unsupported storage root 's3://b/x'"):
        open_storage("s3://b/x")


@pytest.mark.parametrize("move", [False, True], ids=["copied", "moved"])
def test_put_file_stores_the_file_whole_under_its_key(tmp_path: Path, move: bool) -> None:
    storage = LocalStorage(tmp_path / "root")
    local = tmp_path / "chunk.parquet"
    local.write_bytes(b"chunk bytes")
    info = storage.put_file(local, "eurusd/chunk.parquet", move=move)
    assert (info.size, info.crc32c) == (11, bytes_crc32c(b"chunk bytes"))
    assert info.uri == str(tmp_path / "root" / "eurusd" / "chunk.parquet")
    assert (tmp_path / "root" / "eurusd" / "chunk.parquet").read_bytes() == b"chunk bytes"
    assert local.exists() != move
    assert list(storage.temporaries("eurusd")) == []
    # Storing the stored file itself again is no change.
    assert storage.put_file(tmp_path / "root/eurusd/chunk.parquet", "eurusd/chunk.parquet") == info


@pytest.mark.parametrize("move", [False, True], ids=["copied", "moved"])
@pytest.mark.parametrize("clears", [1, PUT_ATTEMPTS])
def test_a_temporary_file_cleared_by_another_writer_before_its_rename_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, move: bool, clears: int
) -> None:
    """Another writer of the folder (a cov table's other pair) clears its temporary files,
    taking this one's for a dead writer's, between its copy and its rename: the file is put
    again from the source; cleared every time, the put fails and replaces nothing."""
    storage = LocalStorage(tmp_path / "root")
    storage.write_bytes("t/chunk.parquet", b"the stored chunk")
    local = tmp_path / "new.parquet"
    local.write_bytes(b"the new chunk")
    record = storage._record
    cleared: list[str] = []

    def cleared_first(path: str | Path, *args: object) -> None:
        if len(cleared) < clears:
            for key in list(storage.temporaries("t")):  # as clear_temporaries does
                storage.delete(key)
                cleared.append(key)
        record(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "_record", cleared_first)
    if clears < PUT_ATTEMPTS:
        info = storage.put_file(local, "t/chunk.parquet", move=move)
        assert info.crc32c == bytes_crc32c(b"the new chunk")
        assert storage.read_bytes("t/chunk.parquet") == b"the new chunk"
        assert local.exists() != move
    else:
        with pytest.raises(StorageError, match=r"deleted before its rename 3 times; nothing"):
            storage.put_file(local, "t/chunk.parquet", move=move)
        assert storage.read_bytes("t/chunk.parquet") == b"the stored chunk"
        assert local.read_bytes() == b"the new chunk"
    assert len(cleared) == clears
    assert list(storage.temporaries("t")) == []


def test_a_copy_that_differs_from_its_source_is_refused_and_nothing_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "root")
    storage.write_bytes("t/chunk.parquet", b"the stored chunk")
    before = storage.stat("t/chunk.parquet")
    local = tmp_path / "new.parquet"
    local.write_bytes(b"the new chunk")

    def damaged_copy(src: Path, dst: Path) -> None:
        Path(dst).write_bytes(Path(src).read_bytes()[:-1] + b"?")

    monkeypatch.setattr("shutil.copyfile", damaged_copy)
    with pytest.raises(StorageError, match=r"checksum mismatch writing .*chunk\.parquet; nothing"):
        storage.put_file(local, "t/chunk.parquet")
    assert storage.read_bytes("t/chunk.parquet") == b"the stored chunk"
    assert storage.stat("t/chunk.parquet") == before
    assert list(storage.temporaries("t")) == []
    assert local.read_bytes() == b"the new chunk"


def test_get_file_and_fetch(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    storage.write_bytes("t/a.json", b"{}")
    assert storage.get_file("t/a.json", tmp_path / "copy.json").read_bytes() == b"{}"
    # A local root's fetch is the stored file itself: nothing copied to the cache.
    assert storage.fetch("t/a.json", tmp_path / "cache") == tmp_path / "root" / "t" / "a.json"
    assert not (tmp_path / "cache").exists()
    with pytest.raises(StorageError, match="does not exist"):
        storage.get_file("t/missing.json", tmp_path / "missing.json")
    assert not (tmp_path / "missing.json").exists()


def test_stored_files_are_read_in_place(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    storage = LocalStorage(tmp_path / "root")
    table = pa.table({"x": list(range(100))})
    pq.write_table(table, tmp_path / "t.parquet")
    info = storage.put_file(tmp_path / "t.parquet", "t/t.parquet")

    found = storage.find_file("t/t.parquet")
    assert isinstance(found, LocalFile) and not found.remote
    assert (found.uri, found.size) == (info.uri, info.size)
    assert found.read_range(0, 4) == b"PAR1"
    assert pq.ParquetFile(found.reader()).read().equals(table)
    opened = storage.open_file("t/t.parquet", size=info.size, crc32c=info.crc32c)
    assert opened.read_range(info.size - 4, info.size) == b"PAR1"
    with pytest.raises(StorageError, match=r"t\.parquet ends early"):
        opened.read_range(info.size - 4, info.size + 1)

    storage.write_bytes("t/folder/x.json", b"{}")
    assert storage.find_file("t/missing.parquet") is None
    assert storage.find_file("t/folder") is None  # a folder is not a stored file
    with pytest.raises(StorageError, match="escapes the storage root"):
        storage.find_file("../outside.parquet")
    storage.delete("t/t.parquet")
    with pytest.raises(ReplacedWhileRead, match=r"t\.parquet does not exist: deleted while"):
        opened.read_range(0, 4)
    with pytest.raises(StorageError, match=r"cannot read .*t\.parquet"):
        _ = LocalFile(tmp_path / "root" / "t" / "t.parquet").size


def test_an_opened_file_is_pinned_to_the_file_that_was_checked(tmp_path: Path) -> None:
    """As an object of a GCS root is pinned to its generation: a file renamed onto the key
    after it was opened (a refresh replacing a chunk) fails its reads instead of mixing two
    versions, and so does one deleted."""
    storage = LocalStorage(tmp_path / "root")
    first = storage.write_bytes("t.parquet", b"the first version")
    opened = storage.open_file("t.parquet", size=first.size, crc32c=first.crc32c)
    assert opened.read_range(4, 9) == b"first"
    with opened.reader() as f:
        assert f.read(9) == b"the first"

    storage.write_bytes("t.parquet", b"the second version")
    with pytest.raises(ReplacedWhileRead, match=r"t\.parquet was replaced while being read"):
        opened.read_range(4, 9)
    with pytest.raises(ReplacedWhileRead, match=r"t\.parquet was replaced while being read"):
        opened.reader()
    # Opened again (after its manifest was checked again): the new version reads.
    second = storage.stat("t.parquet")
    assert second is not None
    again = storage.open_file("t.parquet", size=second.size, crc32c=second.crc32c)
    assert again.read_range(4, 10) == b"second"
    storage.delete("t.parquet")
    with pytest.raises(ReplacedWhileRead, match="does not exist: deleted while being read"):
        again.reader()
    # A file found by listing is not pinned: gone, it is an ordinary error.
    with pytest.raises(StorageError, match=r"cannot read .*t\.parquet") as caught:
        LocalFile(tmp_path / "root" / "t.parquet").read_range(0, 4)
    assert not isinstance(caught.value, ReplacedWhileRead)


def test_a_found_file_is_vouched_for_while_its_checksum_record_holds(tmp_path: Path) -> None:
    root = root_with_xattrs(tmp_path)
    storage = LocalStorage(root)
    storage.write_bytes("written.parquet", b"written here")
    _put(root, "copied.parquet", b"copied in by hand")
    written = storage.find_file("written.parquet")
    copied = storage.find_file("copied.parquet")
    assert written is not None and written.vouched
    assert copied is not None and not copied.vouched
    deep = LocalStorage(root, trust_recorded_crc32c=False).find_file("written.parquet")
    assert deep is not None and not deep.vouched
