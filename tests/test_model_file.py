"""The project's model file: safetensors tensors plus ausil-search metadata, identified by SHA-256."""

import datetime
import hashlib
import json

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from ausil_search.errors import WeightsError
from ausil_search.weights.model_file import file_sha256, load_model_file, save_model_file

FRONTEND = {"sample_rate": 44100, "n_fft": 1024, "hop_length": 512, "n_mels": 128, "top_db": 80.0,
            "step_frames": 87, "window_frames": 174, "pad_value": 0.0}
METADATA = {"name": "test-model", "version": "3", "description": "for tests", "frontend": FRONTEND, "source": "pytest"}


def model_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "head.pca_mean": (2528,), "head.pca_weights": (2528, 2528), "head.context": (2528,),
        "head.comparator.conv1.weight": (32, 1, 3, 3), "head.comparator.conv1.bias": (32,),
        "head.comparator.conv2.weight": (64, 32, 3, 3), "head.comparator.conv2.bias": (64,),
        "head.comparator.conv3.weight": (128, 64, 3, 3), "head.comparator.conv3.bias": (128,),
        "head.comparator.fconv.weight": (1, 128, 1, 1), "head.comparator.fconv.bias": (1,),
        "backbone.layer1.0.weight": (16, 1, 3, 3), "backbone.layer1.0.bias": (16,),
        "backbone.layer1.1.running_mean": (16,), "backbone.layer1.1.running_var": (16,),
        "backbone.layer18.0.weight": (1024, 512, 2, 2),
    }
    tensors = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    tensors["backbone.layer1.1.num_batches_tracked"] = torch.tensor(98765, dtype=torch.int64)
    return tensors


def test_round_trip_float32(tmp_path):
    tensors = model_tensors()
    path = tmp_path / "models" / "m.safetensors"
    returned_digest = save_model_file(path, tensors, METADATA)
    model = load_model_file(path)

    assert set(model.tensors) == set(tensors)
    for name, tensor in tensors.items():
        assert model.tensors[name].dtype == tensor.dtype, name
        assert torch.equal(model.tensors[name], tensor), name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.sha256 == returned_digest == file_sha256(path) == digest
    assert model.identity == f"test-model-3@{digest[:12]}"
    assert model.path == path
    meta = model.metadata
    assert meta["format"] == "ausil-search-model" and meta["format_version"] == 1
    assert (meta["name"], meta["version"], meta["description"], meta["source"]) == ("test-model", "3", "for tests", "pytest")
    assert meta["frontend"] == FRONTEND
    assert meta["descriptor_dim"] == 2528 and meta["tensor_dtype"] == "float32"
    assert datetime.date.fromisoformat(meta["created"]) <= datetime.date.today()
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temporary file left


def test_metadata_is_one_json_document_in_the_safetensors_header(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model_file(path, model_tensors(), METADATA)
    with safe_open(str(path), framework="pt") as handle:
        header_metadata = handle.metadata()
        assert set(handle.keys()) == set(model_tensors())
    assert set(header_metadata) == {"ausil_search"}
    document = json.loads(header_metadata["ausil_search"])
    assert document["name"] == "test-model" and document["frontend"]["window_frames"] == 174


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path):
    tensors = model_tensors()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_model_file(full, tensors, METADATA)
    save_model_file(half, tensors, METADATA, dtype=torch.float16)
    assert 0.49 < half.stat().st_size / full.stat().st_size < 0.51
    model = load_model_file(half)
    assert model.metadata["tensor_dtype"] == "float16"
    weights = model.tensors["head.pca_weights"]
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, tensors["head.pca_weights"], rtol=1e-3, atol=1e-4)
    assert not torch.equal(weights, tensors["head.pca_weights"])
    steps = model.tensors["backbone.layer1.1.num_batches_tracked"]
    assert steps.dtype == torch.int64 and int(steps) == 98765
    with pytest.raises(ValueError, match="dtype"):
        save_model_file(half, tensors, METADATA, dtype=torch.bfloat16)


def test_identity_follows_content_and_overwrite_is_clean(tmp_path):
    path = tmp_path / "m.safetensors"
    first = save_model_file(path, model_tensors(seed=0), {**METADATA, "created": "2024-01-02"})
    again = save_model_file(path, model_tensors(seed=0), {**METADATA, "created": "2024-01-02"})
    other = save_model_file(path, model_tensors(seed=1), {**METADATA, "created": "2024-01-02"})
    assert first == again != other
    assert load_model_file(path).sha256 == other
    assert load_model_file(path).metadata["created"] == "2024-01-02"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_saving_an_incomplete_model_is_refused(tmp_path):
    tensors = model_tensors()
    del tensors["head.context"]
    tensors["head.comparator.conv2.weight"] = torch.zeros(64, 32, 1, 1)
    with pytest.raises(WeightsError, match=r"missing head\.context.*conv2\.weight has shape \(64, 32, 1, 1\)"):
        save_model_file(tmp_path / "m.safetensors", tensors, METADATA)
    with pytest.raises(ValueError, match="frontend"):
        save_model_file(tmp_path / "m.safetensors", model_tensors(), {"name": "x", "version": "1"})
    assert not list(tmp_path.iterdir())


def write_raw(path, tensors, document=None):
    metadata = None if document is None else {"ausil_search": json.dumps(document)}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_files_that_are_not_model_files(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(WeightsError, match="not found"):
        load_model_file(path)

    path.write_text("just some text, long enough to have a header length\n")
    with pytest.raises(WeightsError, match="not a safetensors model file"):
        load_model_file(path)

    path.write_bytes(b"\x02\x00")
    with pytest.raises(WeightsError, match="not a safetensors model file"):
        load_model_file(path)

    write_raw(path, model_tensors())
    with pytest.raises(WeightsError, match="without ausil-search metadata"):
        load_model_file(path)

    write_raw(path, model_tensors(), {"format": "something-else", "format_version": 1, "name": "a", "version": "1"})
    with pytest.raises(WeightsError, match="does not describe an ausil-search-model"):
        load_model_file(path)

    write_raw(path, model_tensors(), {"format": "ausil-search-model", "format_version": 2, "name": "a", "version": "1"})
    with pytest.raises(WeightsError, match="format version 2"):
        load_model_file(path)


def test_truncated_and_incomplete_model_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model_file(path, model_tensors(), METADATA)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt safetensors data"):
        load_model_file(path)

    document = {"format": "ausil-search-model", "format_version": 1, "name": "a", "version": "1"}
    tensors = model_tensors()
    del tensors["head.pca_weights"]
    write_raw(path, tensors, document)
    with pytest.raises(WeightsError, match=r"incomplete model file \(missing head\.pca_weights\)"):
        load_model_file(path)

