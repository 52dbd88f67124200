"""`weights`: get, convert, inspect and create model files."""

from __future__ import annotations

from pathlib import Path

import click

from .base import cli, emit_json


@cli.group()
def weights() -> None:
    """Get, convert, inspect and create model files."""


@weights.command("download")
@click.option("--to", "dest", type=click.Path(path_type=Path), default=None,
              help="Cache folder (default: $AUSIL_SEARCH_HOME, else ~/.cache/ausil-search).")
@click.option("--json", "as_json", is_flag=True)
def weights_download(dest, as_json):
    """Fetch the official AuSiL release weights, verify them, and convert them to a model file."""
    from ..model import AuSiLModel, OFFICIAL_MODEL_FILE
    from ..model.weights.official import cache_dir, download_official

    folder = Path(dest) if dest else cache_dir()
    files = download_official(folder)
    model_path = folder / OFFICIAL_MODEL_FILE
    sha = _convert(files["cnn"], files["tf_ckpt"], model_path)
    _report_model(AuSiLModel.load(model_path), as_json, extra={"files": {k: str(v) for k, v in files.items()}})
    if not as_json:
        click.echo(f"use it with --model official (or --model {model_path}); sha256 {sha}")


def _convert(cnn: Path, tf_ckpt: Path, output: Path) -> str:
    from ..model import AuSiLModel
    from ..model.weights.official import OFFICIAL_METADATA, convert_official
    from ..model.weights.model_file import save_model_file

    tensors = convert_official(Path(cnn), Path(tf_ckpt))
    save_model_file(output, tensors, dict(OFFICIAL_METADATA))
    return AuSiLModel.load(output).sha256


@weights.command("convert")
@click.option("--cnn", required=True, type=click.Path(path_type=Path), help="The backbone state dict (mx-h64-1024_0d3-1.17.pkl).")
@click.option("--tf-ckpt", "tf_ckpt", required=True, type=click.Path(path_type=Path),
              help="The AuSiL TensorFlow checkpoint folder (holding model.index and model.data-00000-of-00001).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write (.safetensors).")
@click.option("--json", "as_json", is_flag=True)
def weights_convert(cnn, tf_ckpt, output, as_json):
    """Convert official release files you already have into a model file."""
    from ..model import AuSiLModel

    _convert(cnn, tf_ckpt, output)
    _report_model(AuSiLModel.load(output), as_json)


@weights.command("info")
@click.argument("model_file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def weights_info(model_file, as_json):
    """Show a model file's name, identity, dimensions and parameter counts."""
    from ..model import load_model

    _report_model(load_model(model_file), as_json)


@weights.command("init")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model file to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default="ausil-init", show_default=True)
@click.option("--float16", is_flag=True, help="Store tensors as float16 (half the size).")
@click.option("--json", "as_json", is_flag=True)
def weights_init(output, seed, name, float16, as_json):
    """Write a randomly initialised model: seeded random backbone, identity whitening, neutral attention.

    The starting point for training, and a model for tests and trials.
    """
    from ..model import AuSiLModel

    model = AuSiLModel.initialise(seed=seed, name=name)
    model.save(output, float16=float16)
    _report_model(model, as_json)


def _report_model(model, as_json: bool, extra: dict | None = None) -> None:
    counts = model.parameter_counts()
    info = {
        "path": str(model.path),
        "name": model.name,
        "version": model.version,
        "identity": model.identity,
        "sha256": model.sha256,
        "descriptor_dim": model.metadata.get("descriptor_dim"),
        "embedding_dim": model.head.width,
        "tensor_dtype": model.metadata.get("tensor_dtype", "float32"),
        "frontend": model.frontend.to_dict(),
        "parameters": counts,
        "description": model.metadata.get("description", ""),
        **(extra or {}),
    }
    if as_json:
        emit_json(info)
        return
    click.echo(f"{info['path']}\n  identity    {info['identity']}\n  sha256      {info['sha256']}")
    click.echo(f"  descriptor  {info['descriptor_dim']} dims, embedded {info['embedding_dim']}, tensors {info['tensor_dtype']}")
    click.echo(f"  parameters  backbone {counts['backbone']:,}, head {counts['head']:,}")
    fe = info["frontend"]
    click.echo(
        f"  front-end   {fe['sample_rate']} Hz, n_fft {fe['n_fft']}, hop {fe['hop_length']}, {fe['n_mels']} mels, "
        f"window {fe['window_frames']} / step {fe['step_frames']} frames"
    )
    if info["description"]:
        click.echo(f"  {info['description']}")
