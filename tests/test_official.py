"""Official weights: conversion of release-shaped files, git blob ids, and verified downloads."""

import dataclasses
import functools
import http.server
import os
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ausil_search.errors import WeightsError
from ausil_search.weights import official
from ausil_search.weights.model_file import load_model_file, save_model_file
from ausil_search.weights.official import (
    OFFICIAL_METADATA,
    OfficialFile,
    cache_dir,
    convert_official,
    download_official,
    git_blob_sha1,
    load_backbone_pkl,
)
from ausil_search.weights.tf_bundle import write_bundle

SHARED_DIR = Path(os.environ.get("AUSIL_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
REFERENCE_INDEX = SHARED_DIR / "reference" / "ausil_ckpt_model.index"

# weak_mxh64_1024 conv blocks (DESIGN.md §2): layer -> (in, out, kernel)
BACKBONE_CONVS = {
    1: (1, 16, 3), 2: (16, 16, 3), 4: (16, 32, 3), 5: (32, 32, 3), 7: (32, 64, 3), 8: (64, 64, 3),
    10: (64, 128, 3), 11: (128, 128, 3), 13: (128, 256, 3), 14: (256, 256, 3), 16: (256, 512, 3),
    18: (512, 1024, 2),
}
COMPARATOR_KERNELS = {"conv2d": (3, 3, 1, 32), "conv2d_1": (3, 3, 32, 64), "conv2d_2": (3, 3, 64, 128),
                      "conv2d_3": (1, 1, 128, 1)}
TORCH_NAMES = {"conv2d": "conv1", "conv2d_1": "conv2", "conv2d_2": "conv3", "conv2d_3": "fconv"}


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A DataParallel-style state dict with the official key layout and random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer, (c_in, c_out, k) in BACKBONE_CONVS.items():
        state[f"module.layer{layer}.0.weight"] = torch.randn(c_out, c_in, k, k, generator=generator) * 0.05
        state[f"module.layer{layer}.0.bias"] = torch.randn(c_out, generator=generator)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            state[f"module.layer{layer}.1.{stat}"] = torch.rand(c_out, generator=generator)
        state[f"module.layer{layer}.1.num_batches_tracked"] = torch.tensor(1000 + layer)
    state["module.layer19.0.weight"] = torch.randn(527, 1024, 1, 1, generator=generator) * 0.05
    state["module.layer19.0.bias"] = torch.randn(527, generator=generator)
    return state


def release_checkpoint(seed: int = 0) -> dict[str, np.ndarray]:
    """Every variable of the release checkpoint, with its real name and shape and random values."""
    rng = np.random.default_rng(seed)
    trainable = {"attention_layer/context_vector": (2528, 1)}
    for layer, shape in COMPARATOR_KERNELS.items():
        trainable[f"video_comparator/{layer}/kernel"] = shape
        trainable[f"video_comparator/{layer}/bias"] = (shape[-1],)
    variables = {
        "PCA/mean_sift": rng.standard_normal(2528, dtype=np.float32),
        "PCA/weights": rng.standard_normal((2528, 2528), dtype=np.float32),
        "beta1_power": np.float32(0.0), "beta2_power": np.float32(0.0), "global_step": np.int64(41000),
    }
    for name, shape in trainable.items():
        for suffix in ("", "/Adam", "/Adam_1"):
            variables[name + suffix] = rng.standard_normal(shape, dtype=np.float32)
    return variables


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    state, checkpoint = official_state_dict(), release_checkpoint()
    torch.save(state, root / "mx-h64-1024_0d3-1.17.pkl")
    write_bundle(root / "ckpt" / "model", checkpoint)
    return root, state, checkpoint


def test_convert_maps_every_tensor(release_files):
    root, state, checkpoint = release_files
    tensors = convert_official(root / "mx-h64-1024_0d3-1.17.pkl", root / "ckpt")

    backbone = {name for name in tensors if name.startswith("backbone.")}
    assert backbone == {"backbone." + name.removeprefix("module.") for name in state}
    for name, value in state.items():
        assert torch.equal(tensors["backbone." + name.removeprefix("module.")], value), name

    head = {name for name in tensors if name.startswith("head.")}
    assert head == {"head.pca_mean", "head.pca_weights", "head.context"} | {
        f"head.comparator.{torch_name}.{kind}" for torch_name in TORCH_NAMES.values() for kind in ("weight", "bias")}
    assert len(tensors) == len(backbone) + len(head)  # no Adam slots, powers or step counter
    np.testing.assert_array_equal(tensors["head.pca_mean"].numpy(), checkpoint["PCA/mean_sift"])
    np.testing.assert_array_equal(tensors["head.pca_weights"].numpy(), checkpoint["PCA/weights"])
    assert tensors["head.context"].shape == (2528,)
    np.testing.assert_array_equal(tensors["head.context"].numpy(), checkpoint["attention_layer/context_vector"][:, 0])

    for tf_name, torch_name in TORCH_NAMES.items():
        hwio = checkpoint[f"video_comparator/{tf_name}/kernel"]
        oihw = tensors[f"head.comparator.{torch_name}.weight"].numpy()
        h, w, i, o = hwio.shape
        assert oihw.shape == (o, i, h, w)
        for oo in range(o):
            for ii in range(0, i, 7):
                for hh in range(h):
                    for ww in range(w):
                        assert oihw[oo, ii, hh, ww] == hwio[hh, ww, ii, oo]
        np.testing.assert_array_equal(
            tensors[f"head.comparator.{torch_name}.bias"].numpy(), checkpoint[f"video_comparator/{tf_name}/bias"])


def test_converted_weights_survive_the_model_file(release_files, tmp_path):
    root, _, checkpoint = release_files
    tensors = convert_official(root / "mx-h64-1024_0d3-1.17.pkl", root / "ckpt" / "model")
    save_model_file(tmp_path / "official.safetensors", tensors, OFFICIAL_METADATA)
    model = load_model_file(tmp_path / "official.safetensors")
    assert model.identity.startswith("ausil-official-2020.icpr@")
    assert model.metadata["frontend"]["sample_rate"] == 44100 and model.metadata["frontend"]["step_frames"] == 87
    assert model.metadata["source"]["commit"] == "51dc3b87bc412cd231aa7fc40703b8f4f582d2ec"
    for name, value in tensors.items():
        assert torch.equal(model.tensors[name], value), name
    kernel = checkpoint["video_comparator/conv2d_1/kernel"]
    assert model.tensors["head.comparator.conv2.weight"][5, 17, 2, 0] == float(kernel[2, 0, 17, 5])


def test_backbone_pkl_problems(tmp_path, release_files):
    root, state, _ = release_files
    loaded = load_backbone_pkl(root / "mx-h64-1024_0d3-1.17.pkl")
    assert set(loaded) == {name.removeprefix("module.") for name in state}

    plain = tmp_path / "plain.pkl"
    torch.save({name.removeprefix("module."): value for name, value in state.items()}, plain)
    assert set(load_backbone_pkl(plain)) == set(loaded)
    # The release's file predates torch's zip format: the legacy pickle layout must load too.
    legacy = tmp_path / "legacy.pkl"
    torch.save(state, legacy, pickle_protocol=2, _use_new_zipfile_serialization=False)
    legacy_loaded = load_backbone_pkl(legacy)
    assert all(torch.equal(legacy_loaded[name], value) for name, value in loaded.items())

    with pytest.raises(WeightsError, match="not found"):
        load_backbone_pkl(tmp_path / "absent.pkl")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        load_backbone_pkl(garbage)
    other = tmp_path / "other.pkl"
    torch.save({"layer1.0.weight": torch.zeros(16, 3, 3, 3)}, other)
    with pytest.raises(WeightsError, match=r"layer1\.0\.weight expected \(16, 1, 3, 3\), found \(16, 3, 3, 3\)"):
        load_backbone_pkl(other)
    torch.save([torch.zeros(3)], other)
    with pytest.raises(WeightsError, match="not a PyTorch state dict of tensors"):
        load_backbone_pkl(other)


def test_checkpoint_without_the_head_variables(release_files, tmp_path):
    root, _, checkpoint = release_files
    partial = {name: value for name, value in checkpoint.items() if name != "PCA/weights"}
    write_bundle(tmp_path / "model", partial)
    with pytest.raises(WeightsError, match="no tensor.*PCA/weights"):
        convert_official(root / "mx-h64-1024_0d3-1.17.pkl", tmp_path)
    write_bundle(tmp_path / "model", {**partial, "PCA/weights": np.zeros((2528, 100), np.float32)})
    with pytest.raises(WeightsError, match=r"PCA/weights is float32 \(2528, 100\), expected float32 \(2528, 2528\)"):
        convert_official(root / "mx-h64-1024_0d3-1.17.pkl", tmp_path)


def git_hash_object(path: Path) -> str:
    return subprocess.run(["git", "hash-object", str(path)], check=True, capture_output=True, text=True).stdout.strip()


def test_git_blob_sha1_agrees_with_git(tmp_path):
    for name, content in (("empty", b""), ("text", b"hello\n"), ("binary", os.urandom(3 * 1024 * 1024 + 17))):
        path = tmp_path / name
        path.write_bytes(content)
        assert git_blob_sha1(path) == git_hash_object(path), name
    if REFERENCE_INDEX.is_file():  # the release's own index has the blob id DESIGN.md lists
        assert git_blob_sha1(REFERENCE_INDEX) == "a42726a9cf5c2daa5fa9e2e4ce971ab1208ab355"


def test_release_urls_and_cache_dir(monkeypatch, tmp_path):
    assert official.BASE_URL + official.OFFICIAL_FILES[1].release_path == (
        "https://raw.githubusercontent.com/mever-team/ausil/51dc3b87bc412cd231aa7fc40703b8f4f582d2ec/ckpt/model.index")
    monkeypatch.setenv("AUSIL_SEARCH_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home"
    monkeypatch.delenv("AUSIL_SEARCH_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "ausil-search"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """A local HTTP server over a directory; yields (root dir, base URL, list of requested paths)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/", requests
    server.shutdown()
    server.server_close()


def publish(served: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        (served / relative).parent.mkdir(parents=True, exist_ok=True)
        (served / relative).write_bytes(content)


def release_table(served: Path, contents: dict[str, bytes], mirror: str | None = None) -> tuple[OfficialFile, ...]:
    """The official file table with blob ids that git computes for the test's contents."""
    table = []
    for file in official.OFFICIAL_FILES:
        probe = served.parent / "probe"
        probe.write_bytes(contents[file.release_path])
        table.append(OfficialFile(
            file.key, file.release_path, file.local_path, git_hash_object(probe), len(contents[file.release_path]),
            mirrors=(mirror,) if mirror and file.key == "cnn" else (),
        ))
    return tuple(table)


CONTENTS = {
    "feature_extraction/mx-h64-1024_0d3-1.17.pkl": b"pkl bytes " * 5000,
    "ckpt/model.index": b"index bytes",
    "ckpt/model.data-00000-of-00001": os.urandom(2 * 1024 * 1024 + 3),
}


def test_download_verifies_and_redownloads_a_corrupt_cache(file_server, tmp_path):
    served, base_url, requests = file_server
    publish(served, CONTENTS)
    table = release_table(served, CONTENTS)
    dest = tmp_path / "weights"

    paths = download_official(dest, progress=True, base_url=base_url, files=table)
    assert paths == {
        "cnn": dest / "mx-h64-1024_0d3-1.17.pkl",
        "tf_index": dest / "ckpt" / "model.index",
        "tf_data": dest / "ckpt" / "model.data-00000-of-00001",
        "tf_ckpt": dest / "ckpt",
    }
    for file in table:
        assert paths[file.key].read_bytes() == CONTENTS[file.release_path]
    assert sorted(requests) == sorted("/" + path for path in CONTENTS)

    requests.clear()
    download_official(dest, progress=False, base_url=base_url, files=table)
    assert requests == []  # verified cache, nothing fetched

    corrupt = bytearray(CONTENTS["ckpt/model.data-00000-of-00001"])
    corrupt[1000] ^= 0xFF
    paths["tf_data"].write_bytes(bytes(corrupt))
    download_official(dest, progress=False, base_url=base_url, files=table)
    assert requests == ["/ckpt/model.data-00000-of-00001"]
    assert paths["tf_data"].read_bytes() == CONTENTS["ckpt/model.data-00000-of-00001"]
    assert sorted(p.name for p in (dest / "ckpt").iterdir()) == ["model.data-00000-of-00001", "model.index"]


def test_download_rejects_content_with_the_wrong_blob_id(file_server, tmp_path):
    served, base_url, _ = file_server
    publish(served, {**CONTENTS, "ckpt/model.index": b"tampered index"})
    table = release_table(served, CONTENTS)
    dest = tmp_path / "weights"
    with pytest.raises(WeightsError) as caught:
        download_official(dest, progress=False, base_url=base_url, files=table)
    message = str(caught.value)
    assert "\n" not in message
    assert "git blob id" in message and f"{base_url}ckpt/model.index" in message
    assert "model.data" not in message  # only the failing file is asked for
    assert not (dest / "ckpt" / "model.index").exists()
    assert sorted(p.name for p in (dest / "ckpt").iterdir()) == ["model.data-00000-of-00001"]


def test_download_falls_back_to_the_mirror(file_server, tmp_path):
    served, base_url, requests = file_server
    pkl = "feature_extraction/mx-h64-1024_0d3-1.17.pkl"
    publish(served, {name: content for name, content in CONTENTS.items() if name != pkl})
    publish(served, {"mirror/mx-h64-1024_0d3-1.17.pkl": CONTENTS[pkl]})
    table = release_table(served, CONTENTS, mirror=f"{base_url}mirror/mx-h64-1024_0d3-1.17.pkl")
    paths = download_official(tmp_path / "weights", progress=False, base_url=base_url, files=table)
    assert paths["cnn"].read_bytes() == CONTENTS[pkl]
    assert requests[:2] == ["/" + pkl, "/mirror/mx-h64-1024_0d3-1.17.pkl"]


def test_download_offline_says_what_to_fetch(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    dest = tmp_path / "weights"
    # The real table, with its external mirror swapped for the closed port too.
    table = [dataclasses.replace(file, mirrors=(f"http://127.0.0.1:{closed_port}/mirror",) if file.mirrors else ())
             for file in official.OFFICIAL_FILES]
    with pytest.raises(WeightsError) as caught:
        download_official(dest, progress=False, base_url=f"http://127.0.0.1:{closed_port}/", files=table)
    message = str(caught.value)
    assert "\n" not in message
    assert "refused" in message.lower()
    for file in official.OFFICIAL_FILES:
        assert f"http://127.0.0.1:{closed_port}/{file.release_path} -> {dest / file.local_path}" in message
    assert "ausil-search weights convert" in message
    assert not any(path.is_file() for path in dest.rglob("*"))
