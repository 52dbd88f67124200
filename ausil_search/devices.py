"""Where tensors run: CUDA when present, the CPU otherwise, or what the user asked for."""

from __future__ import annotations

import torch

from .errors import AusilError


def pick_device(spec: str | torch.device | None = None) -> torch.device:
    if spec is None or str(spec) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise AusilError(f"unknown device {spec!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AusilError(f"device {spec!r} asked for, but no CUDA GPU is available to torch")
    return device
