"""Storage roots (a local folder or `gs://bucket/prefix`) with atomic, verified writes."""

from __future__ import annotations

from pathlib import Path

from bqx_assets.core.errors import StorageError
from bqx_assets.core.storage.base import ObjectInfo, StagedFile, Storage, StoredFile
from bqx_assets.core.storage.checksum import bytes_crc32c, crc32c_concat, file_crc32c
from bqx_assets.core.storage.local import LocalStorage
from bqx_assets.core.storage.local_sink import LocalFile
from bqx_assets.core.storage.sink import CopyMismatch, Sink

__all__ = [
    "CopyMismatch",
    "LocalFile",
    "LocalStorage",
    "ObjectInfo",
    "Sink",
    "StagedFile",
    "Storage",
    "StoredFile",
    "bytes_crc32c",
    "crc32c_concat",
    "file_crc32c",
    "open_storage",
]


def open_storage(uri: str | Path, *, durable: bool = True) -> Storage:
    """The storage root for a local folder or a `gs://bucket/prefix` URI (`durable`: fsync local
    files before they are renamed into place)."""
    text = str(uri)
    if text.startswith("gs://"):
        # Imported here: local runs never load the GCS client.
        from bqx_assets.core.storage.gcs import GCSStorage

        return GCSStorage.from_uri(text)
    if "://" in text:
        raise StorageError(f"unsupported storage root {text!r}: use a local folder or gs://")
    return LocalStorage(text, durable=durable)
