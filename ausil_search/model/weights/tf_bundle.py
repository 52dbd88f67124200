"""TensorFlow tensor bundles (TF1 checkpoints: `<prefix>.index` + `<prefix>.data-*`) without TensorFlow.

The official AuSiL head ships as such a checkpoint. The index is a LevelDB-format table whose keys
are tensor names and whose values are `BundleEntryProto` messages (dtype, shape, shard, offset,
size, masked CRC32C of the tensor bytes); the empty key holds the `BundleHeaderProto`. Both the
table and the protobuf wire format are small enough to read and write here directly, which keeps
TensorFlow and protobuf out of the dependencies.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import crc32c
import numpy as np

from ausil_search.errors import WeightsError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked CRC32C
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
RESTART_INTERVAL = 16
BLOCK_SIZE = 256 * 1024  # TensorFlow's table default; a data block is closed once it reaches this
HEADER_KEY = b""

# TensorFlow DataType enum values of the numeric types numpy can hold (types.proto).
_NUMPY_BY_TF_DTYPE = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"),
    18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
_TF_DTYPE_BY_NUMPY = {dtype: code for code, dtype in _NUMPY_BY_TF_DTYPE.items()}

_MASK_DELTA = 0xA282EAD8
_UINT32 = 0xFFFFFFFF
_UINT64 = 0xFFFFFFFFFFFFFFFF


class _FormatError(Exception):
    """Malformed index bytes; turned into a WeightsError that names the file."""


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives in the data file(s), as recorded in the index."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked


def masked_crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """LevelDB/TensorFlow store CRCs masked, so that a CRC of data containing CRCs stays robust."""
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _UINT32) + _MASK_DELTA) & _UINT32


# --- protobuf wire format -------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _FormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _FormatError("varint longer than 10 bytes")


def _encode_varint(value: int) -> bytes:
    value &= _UINT64  # negative int64 are ten-byte two's complement on the wire
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs; varint and fixed values as ints, length-delimited as bytes."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > len(buf):
                raise _FormatError("truncated fixed-width field")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise _FormatError("truncated length-delimited field")
            value = buf[pos:pos + length]
            pos += length
        else:
            raise _FormatError(f"unsupported protobuf wire type {wire_type}")
        yield field, value


def _varint_field(field: int, value: int) -> bytes:
    return _encode_varint(field << 3) + _encode_varint(value) if value else b""


def _bytes_field(field: int, value: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(value)) + value


def _fixed32_field(field: int, value: int) -> bytes:
    return _encode_varint(field << 3 | 5) + struct.pack("<I", value)


# --- bundle protos --------------------------------------------------------------------------


def _decode_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for field, value in _proto_fields(buf):
        if field == 2:  # TensorShapeProto.dim
            size = 0
            for dim_field, dim_value in _proto_fields(value):
                if dim_field == 1:
                    size = _as_int64(dim_value)
            dims.append(size)
        elif field == 3 and value:
            raise _FormatError("tensor of unknown rank")
    if any(size < 0 for size in dims):
        raise _FormatError(f"tensor shape with unknown dimensions {dims}")
    return tuple(dims)


def _decode_entry(name: str, buf: bytes) -> BundleEntry:
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0}
    for field, value in _proto_fields(buf):
        if field == 1:
            fields["dtype"] = value
        elif field == 2:
            fields["shape"] = _decode_shape(value)
        elif field in (3, 4, 5):
            fields[("shard_id", "offset", "size")[field - 3]] = _as_int64(value)
        elif field == 6:
            fields["crc32c"] = value
        elif field == 7:
            raise _FormatError(f"{name!r} is a partitioned (sliced) variable, which is not supported")
    tf_dtype = fields.pop("dtype")
    if tf_dtype not in _NUMPY_BY_TF_DTYPE:
        raise _FormatError(f"{name!r} has TensorFlow dtype {tf_dtype}, which is not a supported numeric type")
    return BundleEntry(name=name, dtype=_NUMPY_BY_TF_DTYPE[tf_dtype], **fields)


def _encode_entry(entry: BundleEntry) -> bytes:
    shape = b"".join(_bytes_field(2, _varint_field(1, size)) for size in entry.shape)
    return b"".join((
        _varint_field(1, _TF_DTYPE_BY_NUMPY[entry.dtype]),
        _bytes_field(2, shape),
        _varint_field(3, entry.shard_id),
        _varint_field(4, entry.offset),
        _varint_field(5, entry.size),
        _fixed32_field(6, entry.crc32c),
    ))


def _encode_header(num_shards: int) -> bytes:
    # num_shards, endianness LITTLE (0, the default, so absent), version {producer: 1}
    return _varint_field(1, num_shards) + _bytes_field(3, _varint_field(1, 1))


# --- LevelDB table --------------------------------------------------------------------------


def _read_block_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _read_varint(buf, pos)
    size, pos = _read_varint(buf, pos)
    return (offset, size), pos


def _read_block(table: bytes, handle: tuple[int, int]) -> bytes:
    offset, size = handle
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(table):
        raise _FormatError(f"block at {offset} runs past the end of the file")
    compression = table[end]
    (stored_crc,) = struct.unpack_from("<I", table, end + 1)
    if masked_crc32c(table[offset:end + 1]) != stored_crc:
        raise _FormatError(f"checksum mismatch in the block at {offset}")
    if compression == SNAPPY_COMPRESSION:
        raise _FormatError("snappy-compressed blocks are not supported (the AuSiL release is uncompressed)")
    if compression != NO_COMPRESSION:
        raise _FormatError(f"unknown block compression type {compression}")
    return table[offset:end]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _FormatError("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    data_end = len(block) - 4 - 4 * num_restarts
    if data_end < 0:
        raise _FormatError("block restart array larger than the block")
    key, pos = b"", 0
    while pos < data_end:
        shared, pos = _read_varint(block, pos)
        non_shared, pos = _read_varint(block, pos)
        value_length, pos = _read_varint(block, pos)
        value_start = pos + non_shared
        if shared > len(key) or value_start + value_length > data_end:
            raise _FormatError(f"corrupt block entry at {pos}")
        key = key[:shared] + block[pos:value_start]
        pos = value_start + value_length
        yield key, block[value_start:pos]


def _table_entries(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(table) < FOOTER_SIZE:
        raise _FormatError("file shorter than a table footer")
    footer = table[-FOOTER_SIZE:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise _FormatError("bad table magic number")
    _metaindex_handle, pos = _read_block_handle(footer, 0)
    index_handle, _ = _read_block_handle(footer, pos)
    for _separator, handle_bytes in _block_entries(_read_block(table, index_handle)):
        data_handle, _ = _read_block_handle(handle_bytes, 0)
        yield from _block_entries(_read_block(table, data_handle))


def _block_trailer(block: bytes) -> bytes:
    return bytes([NO_COMPRESSION]) + struct.pack("<I", masked_crc32c(block + bytes([NO_COMPRESSION])))


def _build_block(entries: Iterable[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for count, (key, value) in enumerate(entries):
        shared = 0
        if count % restart_interval == 0:
            restarts.append(len(out))
        else:
            limit = min(len(key), len(previous))
            while shared < limit and key[shared] == previous[shared]:
                shared += 1
        out += _encode_varint(shared) + _encode_varint(len(key) - shared) + _encode_varint(len(value))
        out += key[shared:] + value
        previous = key
    for restart in restarts or [0]:
        out += struct.pack("<I", restart)
    out += struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def _build_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """Sorted (key, value) pairs -> table bytes. Index keys are each block's last key (a valid separator)."""
    table, index_entries, pending, pending_size = bytearray(), [], [], 0

    def append_block(block: bytes) -> bytes:
        handle = _encode_varint(len(table)) + _encode_varint(len(block))
        table.extend(block + _block_trailer(block))
        return handle

    for number, (key, value) in enumerate(entries):
        pending.append((key, value))
        pending_size += len(key) + len(value)
        if pending_size >= BLOCK_SIZE or number == len(entries) - 1:
            index_entries.append((key, append_block(_build_block(pending, RESTART_INTERVAL))))
            pending, pending_size = [], 0
    metaindex_handle = append_block(_build_block([], RESTART_INTERVAL))
    index_handle = append_block(_build_block(index_entries, 1))
    table += (metaindex_handle + index_handle).ljust(FOOTER_SIZE - 8, b"\0") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(table)


# --- public API -----------------------------------------------------------------------------


def _index_path(prefix_or_dir: str | Path) -> Path:
    """Accept the checkpoint directory (holding `model.index`), the prefix, or the `.index` file."""
    path = Path(prefix_or_dir)
    if path.is_dir():
        return path / "model.index"
    return path if path.suffix == ".index" else path.with_name(path.name + ".index")


def _data_path(index_path: Path, shard_id: int, num_shards: int) -> Path:
    prefix = index_path.with_suffix("")
    return prefix.with_name(f"{prefix.name}.data-{shard_id:05d}-of-{num_shards:05d}")


def _read_table_file(index_path: Path) -> tuple[int, dict[str, BundleEntry]]:
    """(num_shards, entries) of a bundle index."""
    try:
        table = index_path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{index_path}: TensorFlow checkpoint index not found") from None
    num_shards, entries = None, {}
    try:
        for key, value in _table_entries(table):
            if key == HEADER_KEY:
                header = dict(_proto_fields(value))
                if header.get(2, 0) != 0:
                    raise _FormatError("big-endian bundles are not supported")
                num_shards = header.get(1, 0)
            else:
                name = key.decode("utf-8")
                entries[name] = _decode_entry(name, value)
    except (_FormatError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{index_path}: not a readable TensorFlow checkpoint index ({exc})") from None
    if not num_shards:
        raise WeightsError(f"{index_path}: TensorFlow checkpoint index without a bundle header")
    for entry in entries.values():
        expected = math.prod(entry.shape) * entry.dtype.itemsize
        if entry.size != expected or not 0 <= entry.shard_id < num_shards or entry.offset < 0:
            raise WeightsError(
                f"{index_path}: inconsistent entry {entry.name!r} (shape {entry.shape} of {entry.dtype} "
                f"needs {expected} bytes, index says {entry.size} in shard {entry.shard_id} of {num_shards})"
            )
    return num_shards, entries


def read_index(index_path: str | Path) -> dict[str, BundleEntry]:
    """The tensors a bundle index lists, in file (sorted-name) order; the header is left out."""
    return _read_table_file(_index_path(index_path))[1]


def read_bundle(prefix_or_dir: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Load tensors (all, or `names`) from a checkpoint, verifying each one's size and CRC32C."""
    index_path = _index_path(prefix_or_dir)
    num_shards, entries = _read_table_file(index_path)
    if names is not None:
        names = list(names)
        missing = [name for name in names if name not in entries]
        if missing:
            raise WeightsError(f"{index_path}: checkpoint has no tensor(s) {', '.join(missing)}")
        entries = {name: entries[name] for name in names}
    tensors = {}
    for shard_id in sorted({entry.shard_id for entry in entries.values()}):
        data_path = _data_path(index_path, shard_id, num_shards)
        shard_entries = [entry for entry in entries.values() if entry.shard_id == shard_id]
        try:
            data_size = data_path.stat().st_size
        except FileNotFoundError:
            raise WeightsError(f"{data_path}: checkpoint data file not found (next to {index_path.name})") from None
        needed = max(entry.offset + entry.size for entry in shard_entries)
        if data_size < needed:
            raise WeightsError(f"{data_path}: truncated checkpoint data file ({data_size} bytes, the index needs {needed})")
        with data_path.open("rb") as data_file:
            for entry in shard_entries:
                raw = np.empty(entry.size, dtype=np.uint8)
                data_file.seek(entry.offset)
                data_file.readinto(raw)
                if masked_crc32c(raw) != entry.crc32c:
                    raise WeightsError(f"{data_path}: checksum mismatch for tensor {entry.name!r} (corrupt file)")
                native = entry.dtype.newbyteorder("=")
                tensors[entry.name] = raw.view(entry.dtype).reshape(entry.shape).astype(native, copy=False)
    return {name: tensors[name] for name in entries}


def write_bundle(prefix: str | Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write a single-shard bundle `<prefix>.index` + `<prefix>.data-00000-of-00001` as TensorFlow would."""
    index_path = Path(str(prefix) + ".index")
    index_path.parent.mkdir(parents=True, exist_ok=True)
    entries, offset = [], 0
    with _data_path(index_path, 0, 1).open("wb") as data_file:
        for name in sorted(tensors, key=lambda name: name.encode("utf-8")):
            if not name:
                raise ValueError("the empty tensor name is reserved for the bundle header")
            array = np.asarray(tensors[name])
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder != "|" else array.dtype
            if dtype not in _TF_DTYPE_BY_NUMPY:
                raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no TensorFlow bundle equivalent")
            raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
            data_file.write(raw)
            entry = BundleEntry(name, dtype, tuple(array.shape), 0, offset, len(raw), masked_crc32c(raw))
            entries.append((name.encode("utf-8"), _encode_entry(entry)))
            offset += len(raw)
    index_path.write_bytes(_build_table([(HEADER_KEY, _encode_header(1)), *entries]))
