"""The training file's parquet footer, assembled from the footers of separately encoded pieces."""

# pyarrow has no per-column-chunk writer (`FileMetaData.append_row_groups` stacks row groups, not
# columns) and fastparquet's Thrift codec drops footer fields it does not know, so the merge
# encodes each piece as a small parquet file and this module moves the pieces' column chunks into
# one file and writes its footer (Thrift compact protocol, only what a footer needs).

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from bqx_assets.core.errors import FooterError

MAGIC = b"PAR1"
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# Fields decoded from a piece's footer (everything else is copied as raw bytes): the offsets
# that must move when the piece's column chunks move, and the counts that add up.
_COLUMN_META = {9: "i", 10: "i", 11: "i", 14: "i"}  # data, index, dictionary, bloom offsets
# file offset, then offset-index and column-index offsets and lengths
_COLUMN_CHUNK = {2: "i", 3: _COLUMN_META, 4: "i", 5: "i", 6: "i", 7: "i"}
_ROW_GROUP = {1: ("list", _COLUMN_CHUNK), 2: "i", 3: "i", 5: "i", 6: "i", 7: "i"}
_ROOT = {5: "i"}
_FILE = {1: "i", 2: ("list", None), 3: "i", 4: ("list", _ROW_GROUP), 7: ("list", None)}
_PAGE_LOCATION = {1: "i"}  # the page's absolute offset
_OFFSET_INDEX = {1: ("list", _PAGE_LOCATION)}

# Every field id of parquet-format's parquet.thrift (apache/parquet-format, 2.11) in the structures
# whose offsets the codec moves. A field outside these is refused, not copied: a newer writer may
# add one that holds an offset, and copying it unshifted would point readers at the wrong bytes.
KNOWN_FIELDS: Mapping[str, frozenset[int]] = {
    # version, schema, num_rows, row_groups, key_value_metadata, created_by, column_orders,
    # encryption_algorithm, footer_signing_key_metadata
    "FileMetaData": frozenset(range(1, 10)),
    # columns, total_byte_size, num_rows, sorting_columns, file_offset, total_compressed_size,
    # ordinal
    "RowGroup": frozenset(range(1, 8)),
    # file_path, file_offset, meta_data, offset_index_offset/_length, column_index_offset/_length,
    # crypto_metadata, encrypted_column_metadata
    "ColumnChunk": frozenset(range(1, 10)),
    # type, encodings, path_in_schema, codec, num_values, total_uncompressed_size,
    # total_compressed_size, key_value_metadata, data_page_offset (9), index_page_offset (10),
    # dictionary_page_offset (11), statistics, encoding_stats, bloom_filter_offset (14),
    # bloom_filter_length, size_statistics, geospatial_statistics
    "ColumnMetaData": frozenset(range(1, 18)),
    # page_locations, unencoded_byte_array_data_bytes
    "OffsetIndex": frozenset({1, 2}),
    # offset, compressed_page_size, first_row_index
    "PageLocation": frozenset({1, 2, 3}),
}
UNSUPPORTED_FIELDS: Mapping[str, Mapping[int, str]] = {
    # Encrypted metadata hides its offsets from the codec; a column chunk in another file
    # (file_path) is not in the piece's body.
    "FileMetaData": {8: "encryption_algorithm", 9: "footer_signing_key_metadata"},
    "ColumnChunk": {1: "file_path", 8: "crypto_metadata", 9: "encrypted_column_metadata"},
}

Fields = list[tuple[int, int, Any]]


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _put_uvarint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _unzigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _zigzag(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def _skip(buf: bytes, pos: int, kind: int, *, element: bool = False) -> int:
    if kind in (_TRUE, _FALSE):
        return pos + 1 if element else pos  # a struct field carries its bool in the type
    if kind == _BYTE:
        return pos + 1
    if kind in (_I16, _I32, _I64):
        while buf[pos] & 0x80:  # only the end of the varint is needed
            pos += 1
        return pos + 1
    if kind == _DOUBLE:
        return pos + 8
    if kind == _BINARY:
        size, pos = _uvarint(buf, pos)
        return pos + size
    if kind in (_LIST, _SET):
        size, item, pos = _list_header(buf, pos)
        for _ in range(size):
            pos = _skip(buf, pos, item, element=True)
        return pos
    if kind == _MAP:
        size, pos = _uvarint(buf, pos)
        if size:
            types = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _skip(buf, pos, types >> 4, element=True)
                pos = _skip(buf, pos, types & 0xF, element=True)
        return pos
    if kind == _STRUCT:
        return _read_struct(buf, pos, {})[1]
    raise FooterError(f"parquet footer: unknown Thrift type {kind}")


def _list_header(buf: bytes, pos: int) -> tuple[int, int, int]:
    header = buf[pos]
    size, item = header >> 4, header & 0xF
    pos += 1
    if size == 15:
        size, pos = _uvarint(buf, pos)
    return size, item, pos


def _read_struct(buf: bytes, pos: int, spec: Mapping[int, Any]) -> tuple[Fields, int]:
    fields: Fields = []
    fid = 0
    while True:
        header = buf[pos]
        pos += 1
        if header == 0:
            return fields, pos
        kind, delta = header & 0xF, header >> 4
        if delta:
            fid += delta
        else:
            raw, pos = _uvarint(buf, pos)
            fid = _unzigzag(raw)
        want = spec.get(fid)
        start = pos
        if want is None:
            pos = _skip(buf, pos, kind)
            fields.append((fid, kind, buf[start:pos]))
        elif want == "i":
            raw, pos = _uvarint(buf, pos)
            fields.append((fid, kind, _unzigzag(raw)))
        elif isinstance(want, dict):
            value, pos = _read_struct(buf, pos, want)
            fields.append((fid, kind, value))
        else:
            size, item, pos = _list_header(buf, pos)
            items: list[Any] = []
            for _ in range(size):
                if want[1] is None:
                    start = pos
                    pos = _skip(buf, pos, item, element=True)
                    items.append(buf[start:pos])
                else:
                    value, pos = _read_struct(buf, pos, want[1])
                    items.append(value)
            fields.append((fid, kind, (item, items)))


def _write_value(out: bytearray, kind: int, value: Any) -> None:
    if isinstance(value, bytes):
        out += value
    elif isinstance(value, int):
        _put_uvarint(out, _zigzag(value))
    elif kind == _STRUCT:
        _write_struct(out, value)
    else:
        item, items = value
        _put_list_header(out, item, len(items))
        for element in items:
            _write_value(out, item, element)


def _put_list_header(out: bytearray, item: int, size: int) -> None:
    if size < 15:
        out.append((size << 4) | item)
    else:
        out.append(0xF0 | item)
        _put_uvarint(out, size)


def _put_field_header(out: bytearray, last: int, fid: int, kind: int) -> None:
    """A struct field's header: its id as a delta from the previous field's (`last`)."""
    if 0 < fid - last <= 15:
        out.append(((fid - last) << 4) | kind)
    else:
        out.append(kind)
        _put_uvarint(out, _zigzag(fid))


def _write_struct(out: bytearray, fields: Fields) -> None:
    last = 0
    for fid, kind, value in fields:
        _put_field_header(out, last, fid, kind)
        last = fid
        _write_value(out, kind, value)
    out.append(0)


def _shifted(fields: Fields, offsets: frozenset[int], by: int) -> Fields:
    return [
        (f, k, v + by if f in offsets and isinstance(v, int) and v > 0 else v) for f, k, v in fields
    ]


_CHUNK_OFFSETS = frozenset({2, 6})  # the offset index (4) is rewritten, not shifted
_META_OFFSETS = frozenset({9, 10, 11, 14})


def _check_known(fields: Fields, structure: str) -> None:
    """Refuse a field of `structure` the codec does not know or cannot move."""
    for fid, _, _ in fields:
        if fid not in KNOWN_FIELDS[structure]:
            raise FooterError(
                f"parquet footer: {structure} field {fid} is not one the footer codec knows "
                f"(it knows {structure} fields {_ranges(KNOWN_FIELDS[structure])}); it may hold "
                "an offset that moving the column chunks would leave wrong"
            )
        name = UNSUPPORTED_FIELDS.get(structure, {}).get(fid)
        if name is not None:
            raise FooterError(
                f"parquet footer: {structure} field {fid} ({name}) is not supported by the footer "
                "codec (encrypted or external column chunks cannot be moved)"
            )


def _ranges(ids: frozenset[int]) -> str:
    ordered = sorted(ids)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(str(i) for i in ordered)


def _check_footer(meta: Fields) -> None:
    _check_known(meta, "FileMetaData")
    for fid, _, value in meta:
        if fid != 4:
            continue
        for group in value[1]:
            _check_known(group, "RowGroup")
            for gid, _, chunks in group:
                if gid != 1:
                    continue
                for chunk in chunks[1]:
                    _check_known(chunk, "ColumnChunk")
                    for cid, _, column_meta in chunk:
                        if cid == 3:
                            _check_known(column_meta, "ColumnMetaData")


def _moved_offset_index(raw: bytes, shift: int) -> bytes:
    """An OffsetIndex with its pages' absolute offsets moved by `shift` (re-encoded: the varints
    may grow, so its length can change)."""
    index, _ = _read_struct(raw, 0, _OFFSET_INDEX)
    _check_known(index, "OffsetIndex")
    moved: Fields = []
    for fid, kind, value in index:
        if fid == 1:
            item, locations = value
            for location in locations:
                _check_known(location, "PageLocation")
            value = (item, [_shifted(loc, frozenset({1}), shift) for loc in locations])
        moved.append((fid, kind, value))
    return _encoded(moved)


@dataclass(frozen=True)
class Piece:
    """An encoded piece: its column chunks (bytes after the leading magic, up to the footer) and
    its decoded footer."""

    body: memoryview
    meta: Fields

    @classmethod
    def parse(cls, buffer: pa.Buffer) -> Piece:
        view = memoryview(buffer)
        size = len(view)
        length = int.from_bytes(view[size - 8 : size - 4], "little")
        if bytes(view[:4]) != MAGIC or bytes(view[size - 4 :]) != MAGIC:
            raise FooterError("pyarrow wrote a piece that is not a parquet file")
        meta, _ = _read_struct(bytes(view[size - 8 - length : size - 8]), 0, _FILE)
        _check_footer(meta)
        return cls(view[len(MAGIC) : size - 8 - length], meta)


def _offset_indexes(piece: Piece, chunks: list[Fields]) -> dict[int, tuple[int, int]]:
    """(offset, length) in the piece of each column chunk's offset index, checked to be the
    piece body's last bytes, one after another (as pyarrow writes them)."""
    found: dict[int, tuple[int, int]] = {}
    for c, chunk in enumerate(chunks):
        values = {fid: value for fid, _, value in chunk}
        if 4 in values:
            if 5 not in values:
                raise FooterError("parquet footer: ColumnChunk has an offset index without length")
            found[c] = (values[4], values[5])
    if found:
        spans = sorted(found.values())
        contiguous = all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
        if not contiguous or spans[-1][0] + spans[-1][1] != len(piece.body) + len(MAGIC):
            raise FooterError(
                "parquet footer: the piece's offset indexes are not its last bytes; the codec "
                "can only rewrite them there"
            )
    return found


class FooterAssembler:
    """Collects the pieces' column chunks into the output's row groups and schema."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.root: Fields | None = None
        self.created_by: bytes | None = None
        self.leaves: list[bytes] = []
        self.orders: list[bytes] = []
        self.groups: list[dict[str, Any]] = []
        self.schema_group: int | None = None
        """The row group whose pieces give the schema: the first one built from pieces (the
        others may be adopted whole from an earlier file, before or after it)."""

    def adopt(self, raw: bytes, shift: int, ordinal: int, was: int | None = None) -> None:
        """Append a row group taken whole from an earlier file of the same layout: its RowGroup
        struct as encoded there (`encode`'s spans), its column chunks copied `shift` bytes
        further into this file, as its `ordinal`-th row group. Its offsets move with it; the
        column chunks themselves hold none (the pieces are written without page indexes, and
        one that has an index or a bloom filter is refused rather than moved).

        `was`: its ordinal in the earlier file, given when the caller has checked `raw` to be
        the very bytes that file's writer encoded (their CRC32C, recorded beside the spans).
        A row group that stays where it was, as the same ordinal, then keeps those bytes
        unparsed: parsing 17,000 column chunks in Python costs ~2 s per row group."""
        if len(self.groups) != ordinal:
            raise FooterError(f"parquet footer: row group {ordinal} adopted out of order")
        if shift == 0 and was == ordinal:
            self.groups.append({"raw": raw})
            return
        fields, _ = _read_struct(raw, 0, _ROW_GROUP)
        _check_known(fields, "RowGroup")
        if shift == 0 and dict((f, v) for f, _, v in fields).get(7) == ordinal:
            self.groups.append({"raw": raw})  # where it was: the very bytes
            return
        moved: Fields = []
        for fid, kind, value in fields:
            if fid == 1:
                chunks = []
                for chunk in value[1]:
                    _check_known(chunk, "ColumnChunk")
                    if any(cid in (4, 5, 6, 7) for cid, _, _ in chunk):
                        raise FooterError("parquet footer: a page index cannot be moved")
                    out = []
                    for cid, ckind, cvalue in _shifted(chunk, _CHUNK_OFFSETS, shift):
                        if cid == 3:
                            _check_known(cvalue, "ColumnMetaData")
                            if any(mid == 14 for mid, _, _ in cvalue):
                                raise FooterError("parquet footer: a bloom filter cannot be moved")
                            cvalue = _shifted(cvalue, _META_OFFSETS, shift)
                        out.append((cid, ckind, cvalue))
                    chunks.append(out)
                value = (value[0], chunks)
            elif fid == 5:
                value = value + shift
            elif fid == 7:
                value = ordinal
            moved.append((fid, kind, value))
        self.groups.append({"raw": _encoded(moved)})

    def add(self, f: Any, piece: Piece, group: int, rows: int) -> None:
        """Append one piece's column chunks to `f` and remember their metadata."""
        meta = piece.meta
        fields = {fid: value for fid, _, value in meta}
        shift = f.tell() - len(MAGIC)
        (row_group,) = fields[4][1]
        group_fields = {fid: value for fid, _, value in row_group}
        if group_fields[3] != rows:
            raise FooterError(f"piece has {group_fields[3]} rows, expected {rows}")
        indexes = _offset_indexes(piece, group_fields[1][1])
        # Offset indexes hold absolute page offsets: they are the body's last bytes (checked
        # above), so the body goes out up to them and each one is rewritten after it.
        end = min((start for start, _ in indexes.values()), default=len(piece.body) + len(MAGIC))
        f.write(piece.body[: end - len(MAGIC)])
        rewritten: dict[int, tuple[int, int]] = {}
        for c, (start, length) in sorted(indexes.items(), key=lambda item: item[1][0]):
            raw = bytes(piece.body[start - len(MAGIC) : start - len(MAGIC) + length])
            moved_index = _moved_offset_index(raw, shift)
            rewritten[c] = (f.tell(), len(moved_index))
            f.write(moved_index)
        chunks = []
        for c, chunk in enumerate(group_fields[1][1]):
            moved = []
            for fid, kind, value in _shifted(chunk, _CHUNK_OFFSETS, shift):
                if fid == 3:
                    value = _shifted(value, _META_OFFSETS, shift)
                elif fid in (4, 5) and c in rewritten:
                    value = rewritten[c][fid - 4]
                moved.append((fid, kind, value))
            chunks.append(moved)
        if group == len(self.groups):
            self.groups.append(
                {"chunks": [], "rows": rows, "bytes": 0, "compressed": 0, "offset": shift + 4}
            )
        target = self.groups[group]
        target["chunks"].extend(chunks)
        target["bytes"] += group_fields[2]
        target["compressed"] += group_fields.get(6, 0)
        if self.schema_group is None:
            self.schema_group = group
        if group == self.schema_group:
            schema = fields[2][1]
            if self.root is None:
                self.version = fields[1]
                self.root = _read_struct(schema[0], 0, _ROOT)[0]
                self.created_by = next(v for fid, _, v in meta if fid == 6)
            self.leaves.extend(schema[1:])
            self.orders.extend(fields.get(7, (_STRUCT, []))[1])

    def encode(
        self,
        rows: int,
        key_value: Mapping[str, str] | None = None,
        record: Callable[[list[tuple[int, int]], bytes], Mapping[str, str]] | None = None,
    ) -> bytes:
        """The output's footer: FileMetaData, its length and the closing magic.

        `key_value` becomes the file's key-value metadata (FileMetaData field 5, KeyValue structs
        {1: key, 2: value}): what readers see as `pq.read_metadata(...).metadata`. The pieces'
        own key-value metadata is not carried over: it describes each piece, not the file.
        `record`, given the (start, stop) span of each RowGroup struct in the encoded
        FileMetaData and the bytes encoded so far, returns more key-value metadata (what a later
        file needs to `adopt` them).
        """
        assert self.root is not None and self.version is not None and self.created_by is not None
        root = [(f, k, len(self.leaves) if f == 5 else v) for f, k, v in self.root]
        out = bytearray()
        last = 0

        def header(fid: int, kind: int) -> None:
            nonlocal last
            _put_field_header(out, last, fid, kind)
            last = fid

        for fid, kind, value in [
            (1, _I32, self.version),
            (2, _LIST, (_STRUCT, [_encoded(root), *self.leaves])),
            (3, _I64, rows),
        ]:
            header(fid, kind)
            _write_value(out, kind, value)
        header(4, _LIST)
        _put_list_header(out, _STRUCT, len(self.groups))
        spans = []
        for ordinal, g in enumerate(self.groups):
            start = len(out)
            if "raw" in g:
                out += g["raw"]
            else:
                _write_struct(
                    out,
                    [
                        (1, _LIST, (_STRUCT, g["chunks"])),
                        (2, _I64, g["bytes"]),
                        (3, _I64, g["rows"]),
                        (5, _I64, g["offset"]),
                        (6, _I64, g["compressed"]),
                        (7, _I16, ordinal),
                    ],
                )
            spans.append((start, len(out)))
        pairs_in = {**(key_value or {}), **(record(spans, bytes(out)) if record else {})}
        if pairs_in:
            pairs = [
                [(1, _BINARY, _binary(key)), (2, _BINARY, _binary(value))]
                for key, value in pairs_in.items()
            ]
            header(5, _LIST)
            _write_value(out, _LIST, (_STRUCT, pairs))
        header(6, _BINARY)
        out += self.created_by
        if self.orders:
            header(7, _LIST)
            _write_value(out, _LIST, (_STRUCT, self.orders))
        out.append(0)
        return bytes(out) + len(out).to_bytes(4, "little") + MAGIC


def _binary(text: str) -> bytes:
    """A Thrift compact string as it is written in place: varint length, then UTF-8 bytes."""
    data = text.encode()
    out = bytearray()
    _put_uvarint(out, len(data))
    return bytes(out + data)


def _encoded(fields: Fields) -> bytes:
    out = bytearray()
    _write_struct(out, fields)
    return bytes(out)
