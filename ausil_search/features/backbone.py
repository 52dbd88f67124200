"""The `weak_mxh64_1024` audio CNN (Kumar et al., ICASSP 2018) and its AuSiL segment descriptor.

The module layout mirrors the official state dict (`layerN.0` conv, `layerN.1` batch norm) so the
released `.pkl` loads with `strict=True`. `forward` returns the 2528-d multi-layer MAC descriptor
of DESIGN.md §2; `SegmentEncoder` runs it batched for inference on CPU or CUDA.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..devices import pick_device
from ..errors import WeightsError

N_MELS = 128
N_CLASSES = 527
MAC_LAYERS = (1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 18)
DESCRIPTOR_DIM = 2528

# Input and output channels of the 3x3 / padding 1 conv blocks; the other layers up to 17 are max-pools.
_CONV3_CHANNELS = {
    1: (1, 16), 2: (16, 16),
    4: (16, 32), 5: (32, 32),
    7: (32, 64), 8: (64, 64),
    10: (64, 128), 11: (128, 128),
    13: (128, 256), 14: (256, 256),
    16: (256, 512),
}
_BATCH_NORM_BLOCKS = (*_CONV3_CHANNELS, 18)

Precision = Literal["fp32", "fused", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=padding),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def mac_descriptor(feature_map: Tensor) -> Tensor:
    """Channel-L2-normalise every position, max over time x frequency, L2-normalise: (B, C, H, W) -> (B, C).

    The max goes through `adaptive_max_pool2d` rather than `amax`: on channels-last tensors `amax`
    over (H, W) is more than ten times slower on CPU.
    """
    pooled = F.adaptive_max_pool2d(F.normalize(feature_map, p=2, dim=1), 1).flatten(1)
    return F.normalize(pooled, p=2, dim=1)


class WeakMxH64(nn.Module):
    """weak_mxh64_1024; input (B, 1, T, 128) log-mel segments, T = 174 in AuSiL."""

    def __init__(self) -> None:
        super().__init__()
        for number in range(1, 18):
            channels = _CONV3_CHANNELS.get(number)
            self.add_module(f"layer{number}", _conv_block(*channels, 3, 1) if channels else nn.MaxPool2d(2))
        self.layer18 = _conv_block(512, 1024, 2, 0)
        self.layer19 = nn.Sequential(nn.Conv2d(1024, N_CLASSES, kernel_size=1), nn.Sigmoid())

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor]) -> WeakMxH64:
        """Build the network from the official `.pkl` state dict (with or without `module.`)."""
        model = cls()
        state = strip_module_prefix(state_dict)
        expected = model.state_dict()
        problems = [f"missing {key}" for key in expected if key not in state]
        problems += [f"unexpected {key}" for key in state if key not in expected]
        problems += [
            f"{key} has shape {tuple(state[key].shape)}, expected {tuple(expected[key].shape)}"
            for key in expected
            if key in state and state[key].shape != expected[key].shape
        ]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise WeightsError(f"not a weak_mxh64_1024 state dict: {problems[0]}{more}")
        model.load_state_dict(state, strict=True)
        return model.eval()

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, T, 128) -> (B, 2528) segment descriptors; the classifier (layer19) is not run."""
        descriptors = []
        for number in range(1, 19):
            x = getattr(self, f"layer{number}")(x)
            if number in MAC_LAYERS:
                descriptors.append(mac_descriptor(x.float()))
        return torch.cat(descriptors, dim=1)

    def classify(self, x: Tensor) -> Tensor:
        """(B, 1, T, 128) -> (B, 527) AudioSet class probabilities (global average of layer19)."""
        for number in range(1, 19):
            x = getattr(self, f"layer{number}")(x)
        return self.layer19(x).mean(dim=(2, 3))


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the `module.` prefix that `nn.DataParallel` adds to every key."""
    prefix = "module."
    return {(key[len(prefix):] if key.startswith(prefix) else key): value for key, value in state_dict.items()}


def fuse_batch_norm(model: WeakMxH64) -> WeakMxH64:
    """An inference copy with every BatchNorm folded into its conv: same maths, one pass less per block."""
    fused = copy.deepcopy(model).eval()
    for number in _BATCH_NORM_BLOCKS:
        block = getattr(fused, f"layer{number}")
        block[0] = fuse_conv_bn_eval(block[0], block[1])
        block[1] = nn.Identity()
    return fused


def _regroup(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-chunk a stream of (n_i, T, 128) arrays into (size, T, 128) ones, the last one possibly shorter."""
    pending: list[np.ndarray] = []
    count = 0
    for segments in arrays:
        if segments.ndim != 3 or segments.shape[2] != N_MELS:
            raise ValueError(f"segments must be (N, T, {N_MELS}), got {segments.shape}")
        start = 0
        while start < len(segments):
            piece = segments[start:start + size - count]
            pending.append(piece)
            count += len(piece)
            start += len(piece)
            if count == size:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, count = [], 0
    if pending:
        yield np.concatenate(pending)


def default_batch_size(device: torch.device) -> int:
    """16 on CPU (measured fastest there), 64 on accelerators (which need wide batches)."""
    return 16 if device.type == "cpu" else 64


class SegmentEncoder:
    """Batched inference: log-mel segments (N, T, 128) -> descriptors (N, 2528), float32 numpy.

    precision (speeds from benchmarks/backbone_throughput.py on 2 AVX-512 cores, batch 16):
      fp32  -- the reference network as released (the given module itself, moved to `device`).
               ~75 segments/s.
      fused -- BatchNorm folded into the convs, channels-last: equal to fp32 within 2e-6, ~190/s.
      bf16  -- fused, then bfloat16 autocast: ~270/s where the CPU has bf16 units, with a
               descriptor cosine to fp32 of about 0.999 (not for indexes mixed with fp32 ones).

    compile=True runs the network through `torch.compile` (fused ~230/s, bf16 ~400/s, same
    results within 1e-6): a one-off cost of 10-40 s per process, and on CPU it needs a C++
    compiler. Every batch is then padded to `batch_size`, so that a single graph is compiled.
    On CPU, batches of 16 run faster than 64 (smaller tensors stay in reused memory).
    """

    def __init__(
        self,
        backbone: WeakMxH64,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        precision: Precision = "fused",
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = pick_device(device)
        if batch_size is None:
            batch_size = default_batch_size(self.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.precision = precision
        network = backbone if precision == "fp32" else fuse_batch_norm(backbone)
        self._memory_format = torch.contiguous_format if precision == "fp32" else torch.channels_last
        network = network.eval().to(self.device, memory_format=self._memory_format)
        self._network = torch.compile(network, dynamic=False) if compile else network
        self._pad_batches = compile

    def encode(self, segments: np.ndarray) -> np.ndarray:
        """(N, T, 128) float32 log-mel segments -> (N, 2528) float32 descriptors."""
        return self.encode_batches([segments])

    def encode_batches(self, batches: Iterable[np.ndarray]) -> np.ndarray:
        """Like `encode` over a stream of (n_i, T, 128) arrays, so long files need not be held whole.

        The stream is regrouped into full batches of `batch_size`, whatever its chunking.
        """
        outputs = [np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)]
        outputs += self.iter_encode_batches(batches)
        return np.concatenate(outputs, axis=0)

    def iter_encode_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """`encode_batches` one batch of descriptors at a time, for callers that consume them as they come."""
        for batch in _regroup(batches, self.batch_size):
            with torch.inference_mode():
                yield self._encode_batch(batch)

    def _encode_batch(self, segments: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(segments, dtype=np.float32)).to(self.device)
        if self._pad_batches and len(x) < self.batch_size:
            x = torch.cat([x, x.new_zeros((self.batch_size - len(x), *x.shape[1:]))])
        x = x.unsqueeze(1).contiguous(memory_format=self._memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            descriptors = self._network(x)
        return descriptors[: len(segments)].float().cpu().numpy()
