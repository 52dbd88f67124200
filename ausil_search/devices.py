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


def one_blas_thread() -> None:
    """Keep NumPy's BLAS to one thread in this process. OpenBLAS threads busy-wait after each call
    and take the cores from the torch threads that run next (the backbone after a log-mel's matrix
    products ran 1.6x slower on 2 cores), so processes that interleave the two (queries, decode
    workers, the service) use one; training's large NumPy products keep the default."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
