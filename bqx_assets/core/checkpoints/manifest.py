"""A chunk's manifest, and a table's chunk index: its manifests in one file (a cache)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Self

from bqx_assets.core.checkpoints.schema import Source, owner_of
from bqx_assets.core.checkpoints.window import ChunkRange
from bqx_assets.core.layout import chunk_folder, chunk_index_key
from bqx_assets.core.storage import ObjectInfo, Storage
from bqx_assets.core.warehouse import PartitionState

CHUNK_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"
_INDEX_FORMAT = 1


def manifest_key(chunk: str) -> str:
    """The key of a chunk's manifest, beside the chunk (`{days}.parquet`)."""
    return chunk.removesuffix(".parquet") + MANIFEST_SUFFIX


class JsonRecord:
    """A frozen dataclass stored as JSON beside what it describes (checkpoints, chunks)."""

    def to_json(self) -> bytes:
        # The fields as they are (`asdict` deep-copies every nested list and dict first): the
        # same JSON text.
        return json.dumps(self.record(), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self | None:
        try:
            return cls.from_record(json.loads(data))
        except ValueError:
            return None  # an unreadable manifest means what it describes is redone

    @classmethod
    def from_record(cls, record: Any) -> Self | None:
        """From the JSON object `to_json` writes, already parsed; None when it is not one."""
        try:
            return cls(**record)
        except TypeError:
            return None

    def record(self) -> dict[str, Any]:
        """The fields as `to_json` writes them, not yet encoded."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


def partition_text(states: Sequence[PartitionState]) -> dict[str, list[int | str]]:
    return {s.day.isoformat(): [s.rows, s.last_modified] for s in states}


@dataclass(frozen=True)
class ChunkManifest(JsonRecord):
    """What one chunk holds and the partition states it was made from."""

    table: str
    dataset: str
    first: str
    last: str
    window: list[str]
    """[start, end) of the rows read, ISO-8601 UTC."""
    partitions: dict[str, list[int | str]]
    """Per day: [rows, last-modified] of the source partitions when the chunk was made."""
    rows: int
    schema_fingerprint: str
    bytes: int
    crc32c: str
    bytes_read: int
    """This chunk's share of the warehouse bytes of the read that produced it (0: compacted)."""
    key_min: str | None
    key_max: str | None
    format: int = CHUNK_FORMAT
    method: str = "read"
    """"read" (a restricted read), "export" (from an export of the whole table, not billed)
    or "compacted" (concatenated from day chunks)."""
    cut: str | None = None
    """ISO-8601 UTC moment the chunk's rows are as of (the run's `Cut`; None in manifests
    written before runs had one): a chunk whose last day ends after it (`complete_at_cut`
    False) was made from a day still being written, and is current only while that day's
    partition state is the one recorded."""
    facts: dict[str, Any] | None = None
    """What the merge plans the chunk from without opening it (`facts.ChunkFacts`): its row
    groups' rows, its columns' types and null cells, its keys. None in manifests written
    before they were recorded: the merge then reads the chunk's footer and key column."""

    @classmethod
    def from_record(cls, record: Any) -> Self | None:
        """As `JsonRecord.from_record`, and None when the fields that place and verify the chunk
        are not of their types (a hand-edited manifest, another format's): such a manifest is
        unreadable, its chunk redone, rather than an error where it is used."""
        manifest = super().from_record(record)
        if manifest is None:
            return None
        try:
            manifest.range  # noqa: B018 - parsed to check it
            valid = (
                isinstance(manifest.partitions, dict)
                and all(isinstance(s, list) and len(s) == 2 for s in manifest.partitions.values())
                and isinstance(manifest.rows, int)
                and isinstance(manifest.bytes, int)
                and isinstance(manifest.crc32c, str)
            )
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            return None
        return manifest if valid else None

    @property
    def complete_at_cut(self) -> bool:
        """Whether its days had all ended at the cut it was made at (unknown: assumed so)."""
        if self.cut is None:
            return True
        return self.range.end <= datetime.fromisoformat(self.cut)

    @property
    def range(self) -> ChunkRange:
        return ChunkRange(
            date.fromisoformat(self.first),
            date.fromisoformat(self.last),
            datetime.fromisoformat(self.window[0]),
            datetime.fromisoformat(self.window[1]),
        )


@dataclass(frozen=True)
class StoredChunks:
    """A table's stored chunks as its folder lists them: each readable manifest by its chunk's
    key, and the size and CRC32C of every object in the folder (from one listing)."""

    manifests: dict[str, ChunkManifest]
    infos: dict[str, ObjectInfo]
    index: dict[str, tuple[int, str]]
    """The chunk index as it was read: (size, CRC32C) of each manifest it copies, by key."""
    read: int
    """Manifests read on their own: not in the index, or changed since it was written."""

    def verified(self, key: str, manifest: ChunkManifest) -> bool:
        """Whether the chunk at `key` is the file its manifest describes (size and CRC32C)."""
        info = self.infos.get(key)
        return info is not None and info.size == manifest.bytes and info.crc32c == manifest.crc32c


def _index_entries(raw: bytes | None) -> dict[str, tuple[int, str, Any]]:
    """A chunk index's entries: (size, CRC32C, manifest record) by manifest key; none from an
    index that cannot be read (its manifests are then read one by one)."""
    try:
        data = json.loads(raw) if raw is not None else None
        if not isinstance(data, dict) or data.get("format") != _INDEX_FORMAT:
            return {}
        return {
            key: (int(entry["bytes"]), str(entry["crc32c"]), entry["manifest"])
            for key, entry in data["manifests"].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def stored_manifests(storage: Storage, source: Source) -> StoredChunks:
    """Every readable chunk manifest of a table, by its chunk's key: from one listing of its
    folder and its chunk index, reading on their own only the manifests that the index does
    not hold as they are now (on GCS ~23 requests a table fewer at production length)."""
    owner = owner_of(source)
    infos = storage.infos(chunk_folder(owner, source.name))
    index_key = chunk_index_key(owner, source.name)
    entries = _index_entries(storage.read_bytes(index_key)) if index_key in infos else {}
    manifests, read = {}, 0
    for key, info in infos.items():
        if not key.endswith(MANIFEST_SUFFIX):
            continue
        entry = entries.get(key)
        if entry is not None and (entry[0], entry[1]) == (info.size, info.crc32c):
            manifest = ChunkManifest.from_record(entry[2])
        else:
            raw = storage.read_bytes(key)
            manifest = ChunkManifest.from_json(raw) if raw is not None else None
            read += 1
        if manifest is not None:
            manifests[key.removesuffix(MANIFEST_SUFFIX) + ".parquet"] = manifest
    index = {key: (entry[0], entry[1]) for key, entry in entries.items()}
    return StoredChunks(manifests, infos, index, read)


def write_index(
    storage: Storage,
    source: Source,
    known: dict[str, ChunkManifest],
    before: StoredChunks,
    written: dict[str, ObjectInfo],
) -> None:
    """Write the table's chunk index from the manifests its folder holds now (`known`: their
    content, by chunk key), unless it already says what it would. Their files' sizes and
    checksums are those listed before this run (`before`) or written by it (`written`, by
    manifest key); the folder is listed again only when some manifest is in neither."""
    owner = owner_of(source)
    infos = {**before.infos, **written}
    manifest_keys = [manifest_key(k) for k in known]
    if any(k not in infos for k in manifest_keys):
        infos = storage.infos(chunk_folder(owner, source.name))
    entries = {}
    for key, manifest in known.items():
        info = infos.get(manifest_key(key))
        if info is not None:
            entries[manifest_key(key)] = (info.size, info.crc32c, manifest)
    if {k: (e[0], e[1]) for k, e in entries.items()} == before.index:
        return
    record = {
        "format": _INDEX_FORMAT,
        "manifests": {
            k: {"bytes": e[0], "crc32c": e[1], "manifest": e[2].record()}
            for k, e in sorted(entries.items())
        },
    }
    storage.write_bytes(
        chunk_index_key(owner, source.name), json.dumps(record, separators=(",", ":")).encode()
    )
