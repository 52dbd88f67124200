"""TensorFlow tensor bundles: the release's real index, and round trips through bundles we write."""

import math
import os
import shutil
import struct
from pathlib import Path

import crc32c
import numpy as np
import pytest

from ausil_search.errors import WeightsError
from ausil_search.weights import tf_bundle
from ausil_search.weights.tf_bundle import read_bundle, read_index, write_bundle

SHARED_DIR = Path(os.environ.get("AUSIL_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
REFERENCE_INDEX = SHARED_DIR / "reference" / "ausil_ckpt_model.index"
RELEASE_DATA_SIZE = 26_717_212  # DESIGN.md §2

needs_reference = pytest.mark.skipif(not REFERENCE_INDEX.is_file(), reason=f"{REFERENCE_INDEX} not available")


def release_variables() -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The release checkpoint's variables as DESIGN.md §2 describes them (trainable ones with Adam slots)."""
    f32 = np.dtype(np.float32)
    kernels = {"conv2d": (3, 3, 1, 32), "conv2d_1": (3, 3, 32, 64), "conv2d_2": (3, 3, 64, 128), "conv2d_3": (1, 1, 128, 1)}
    trainable = {"attention_layer/context_vector": (2528, 1)}
    for layer, kernel_shape in kernels.items():
        trainable[f"video_comparator/{layer}/kernel"] = kernel_shape
        trainable[f"video_comparator/{layer}/bias"] = (kernel_shape[-1],)
    variables = {"PCA/mean_sift": (f32, (2528,)), "PCA/weights": (f32, (2528, 2528))}
    for name, shape in trainable.items():
        for suffix in ("", "/Adam", "/Adam_1"):
            variables[name + suffix] = (f32, shape)
    variables.update({"beta1_power": (f32, ()), "beta2_power": (f32, ()), "global_step": (np.dtype(np.int64), ())})
    return variables


def masked(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (buf[pos] & 0x7F) << shift
        pos += 1
        if buf[pos - 1] < 0x80:
            return value, pos
        shift += 7


def index_block_handle(table: bytes) -> tuple[int, int]:
    """(offset, size) of the table's index block, from the footer (metaindex handle, index handle, ..., magic)."""
    footer = table[-48:]
    assert footer[-8:] == bytes.fromhex("57fb808b247547db")
    _, pos = varint(footer, 0)
    _, pos = varint(footer, pos)
    offset, pos = varint(footer, pos)
    size, _ = varint(footer, pos)
    return offset, size


@needs_reference
def test_reference_index_lists_the_release_variables():
    entries = read_index(REFERENCE_INDEX)
    expected = release_variables()
    assert len(entries) == 32
    assert set(entries) == set(expected)
    for name, (dtype, shape) in expected.items():
        assert (entries[name].dtype, entries[name].shape) == (dtype, shape), name
        assert entries[name].shard_id == 0


@needs_reference
def test_reference_index_is_sorted_and_laid_out_contiguously():
    entries = read_index(REFERENCE_INDEX)
    names = sorted(release_variables(), key=lambda name: name.encode())
    assert list(entries) == names
    offset = 0
    for name in names:
        dtype, shape = release_variables()[name]
        assert entries[name].offset == offset, name
        assert entries[name].size == math.prod(shape) * dtype.itemsize, name
        offset += entries[name].size
    assert max(entry.offset + entry.size for entry in entries.values()) == RELEASE_DATA_SIZE


@needs_reference
def test_reference_tensor_checksums_match_our_crc(tmp_path):
    # Adam's beta powers decay geometrically; after the release's training they are 0.0, so the
    # CRCs TensorFlow recorded for them are those of four zero bytes.
    entries = read_index(REFERENCE_INDEX)
    assert entries["beta1_power"].crc32c == entries["beta2_power"].crc32c == masked(bytes(4))
    shutil.copy(REFERENCE_INDEX, tmp_path / "model.index")
    with open(tmp_path / "model.data-00000-of-00001", "wb") as data:
        data.truncate(RELEASE_DATA_SIZE)  # all zeros
    powers = read_bundle(tmp_path, names=["beta1_power", "beta2_power"])
    assert powers["beta1_power"].shape == () and float(powers["beta1_power"]) == 0.0
    with pytest.raises(WeightsError, match="checksum mismatch for tensor 'PCA/mean_sift'"):
        read_bundle(tmp_path, names=["PCA/mean_sift"])


@needs_reference
def test_written_bundle_has_the_release_layout(tmp_path):
    variables = release_variables()
    write_bundle(tmp_path / "model", {name: np.zeros(shape, dtype) for name, (dtype, shape) in variables.items()})
    ours, theirs = read_index(tmp_path / "model.index"), read_index(REFERENCE_INDEX)
    assert list(ours) == list(theirs)
    for name in theirs:
        keep = ("dtype", "shape", "shard_id", "offset", "size")
        assert [getattr(ours[name], k) for k in keep] == [getattr(theirs[name], k) for k in keep], name
    assert ours["beta1_power"].crc32c == theirs["beta1_power"].crc32c
    assert (tmp_path / "model.data-00000-of-00001").stat().st_size == RELEASE_DATA_SIZE


def random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a/matrix": rng.standard_normal((7, 5)).astype(np.float32),
        "a/matrix/Adam": rng.standard_normal((7, 5)).astype(np.float32),
        "b/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "scalar": np.float32(rng.standard_normal()),
        "step": np.int64(123456789012),
        "ids": rng.integers(-(2**62), 2**62, size=(11,), dtype=np.int64),
        "small_ints": rng.integers(-1000, 1000, size=(4, 2), dtype=np.int32),
        "doubles": rng.standard_normal((3,)),
        "half": rng.standard_normal((6,)).astype(np.float16),
        "bytes": rng.integers(0, 255, size=(9,), dtype=np.uint8),
        "mask": rng.random(5) > 0.5,
        "empty": np.zeros((0, 3), np.float32),
        "ünïcode/name": np.arange(4, dtype=np.float32),
    }


def test_round_trip_gives_identical_arrays(tmp_path):
    tensors = random_tensors()
    write_bundle(tmp_path / "ckpt" / "model", tensors)
    loaded = read_bundle(tmp_path / "ckpt")
    assert list(loaded) == sorted(tensors, key=lambda name: name.encode())
    for name, array in tensors.items():
        array = np.asarray(array)
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        np.testing.assert_array_equal(loaded[name], array)


def test_prefix_forms_and_name_selection(tmp_path):
    tensors = random_tensors()
    write_bundle(tmp_path / "model", tensors)
    for spec in (tmp_path, tmp_path / "model", tmp_path / "model.index", str(tmp_path / "model")):
        assert set(read_bundle(spec)) == set(tensors)
    picked = read_bundle(tmp_path, names=["step", "b/kernel"])
    assert list(picked) == ["step", "b/kernel"]
    assert int(picked["step"]) == 123456789012
    with pytest.raises(WeightsError, match="no tensor.*missing/one"):
        read_bundle(tmp_path, names=["step", "missing/one"])


def test_many_tensors_across_blocks_and_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(tf_bundle, "BLOCK_SIZE", 300)  # force many data blocks in the index
    tensors = {f"layer{i:03d}/weights": np.full((i % 4 + 1,), i, np.float32) for i in range(100)}
    write_bundle(tmp_path / "model", tensors)
    table = (tmp_path / "model.index").read_bytes()
    offset, size = index_block_handle(table)
    # The index block restarts at every entry, so its restart count is the number of data blocks.
    (data_blocks,) = struct.unpack_from("<I", table, offset + size - 4)
    assert data_blocks > 5
    loaded = read_bundle(tmp_path)
    assert list(loaded) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_flipped_data_byte_is_a_checksum_error(tmp_path):
    tensors = random_tensors()
    write_bundle(tmp_path / "model", tensors)
    entry = read_index(tmp_path / "model.index")["b/kernel"]
    data_path = tmp_path / "model.data-00000-of-00001"
    data = bytearray(data_path.read_bytes())
    data[entry.offset + 5] ^= 0x01
    data_path.write_bytes(bytes(data))
    assert set(read_bundle(tmp_path, names=["a/matrix", "step"])) == {"a/matrix", "step"}
    with pytest.raises(WeightsError, match=r"model\.data-00000-of-00001: checksum mismatch for tensor 'b/kernel'"):
        read_bundle(tmp_path)


def test_truncated_or_missing_data_file(tmp_path):
    write_bundle(tmp_path / "model", random_tensors())
    data_path = tmp_path / "model.data-00000-of-00001"
    size = data_path.stat().st_size
    with open(data_path, "r+b") as data:
        data.truncate(size - 1)
    with pytest.raises(WeightsError, match="truncated"):
        read_bundle(tmp_path)
    data_path.unlink()
    with pytest.raises(WeightsError, match="data file not found"):
        read_bundle(tmp_path)


def test_corrupted_index_is_rejected(tmp_path):
    write_bundle(tmp_path / "model", random_tensors())
    index_path = tmp_path / "model.index"
    good = index_path.read_bytes()

    corrupted = bytearray(good)
    corrupted[12] ^= 0x40  # inside the first data block
    index_path.write_bytes(bytes(corrupted))
    with pytest.raises(WeightsError, match="checksum mismatch in the block"):
        read_index(index_path)

    index_path.write_bytes(good[:-1] + b"\x00")
    with pytest.raises(WeightsError, match="magic"):
        read_index(index_path)

    index_path.write_bytes(good[:20])
    with pytest.raises(WeightsError, match="not a readable TensorFlow checkpoint index"):
        read_index(index_path)

    index_path.unlink()
    with pytest.raises(WeightsError, match="index not found"):
        read_bundle(tmp_path)


def test_snappy_blocks_are_reported(tmp_path):
    write_bundle(tmp_path / "model", {"x": np.ones(3, np.float32)})
    index = bytearray((tmp_path / "model.index").read_bytes())
    offset, size = index_block_handle(bytes(index))
    index[offset + size] = 1  # the block trailer's compression type: snappy, with a matching CRC
    index[offset + size + 1:offset + size + 5] = struct.pack("<I", masked(bytes(index[offset:offset + size + 1])))
    (tmp_path / "model.index").write_bytes(bytes(index))
    with pytest.raises(WeightsError, match="snappy"):
        read_index(tmp_path / "model.index")


def test_write_rejects_what_a_bundle_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        write_bundle(tmp_path / "model", {"": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="no TensorFlow bundle equivalent"):
        write_bundle(tmp_path / "model", {"text": np.array(["a", "b"])})
