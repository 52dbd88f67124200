"""Weight files: the project's model file, the official release weights, and TF checkpoint bundles."""

from .model_file import (
    REQUIRED_HEAD_TENSORS,
    ModelFile,
    file_sha256,
    load_model_file,
    save_model_file,
)
from .official import (
    OFFICIAL_FILES,
    OFFICIAL_METADATA,
    OfficialFile,
    cache_dir,
    convert_official,
    download_official,
    git_blob_sha1,
    load_backbone_pkl,
)
from .tf_bundle import BundleEntry, read_bundle, read_index, write_bundle

__all__ = [
    "REQUIRED_HEAD_TENSORS",
    "OFFICIAL_FILES",
    "OFFICIAL_METADATA",
    "BundleEntry",
    "ModelFile",
    "OfficialFile",
    "cache_dir",
    "convert_official",
    "download_official",
    "file_sha256",
    "git_blob_sha1",
    "load_backbone_pkl",
    "load_model_file",
    "read_bundle",
    "read_index",
    "save_model_file",
    "write_bundle",
]
