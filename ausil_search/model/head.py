"""The AuSiL similarity head: whitening, attention, comparator CNN and Chamfer similarity.

Parameter names are the model-file keys (under a `head.` prefix): `pca_mean` (dim), `pca_weights`
(dim, width), `context` (width), `comparator.{conv1,conv2,conv3,fconv}.{weight,bias}`. The width of
the embedded segments may be below the descriptor's (a whitening that keeps only its top
components), which makes the stored segments smaller; the comparator does not depend on it. All
functions are device-agnostic: they run where their input tensors live.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features.backbone import DESCRIPTOR_DIM

# The release tiles database videos to >= 10 segments. The comparator needs >= 4 segments a side
# to survive its two 2x2 max-pools, so queries get the same doubling rule with that minimum.
MIN_DATABASE_SEGMENTS = 10
MIN_COMPARATOR_SEGMENTS = 4
# Input rows (columns) covered by one comparator output cell: two 2x2/2 max-pools.
COMPARATOR_STRIDE = 4
# The release's tf.nn.l2_normalize epsilon, which bounds the *squared* norm from below.
L2_EPSILON = 1e-15
# Batch-size budgets for `score_many` (elements of the biggest intermediate). On CPU, batches whose
# intermediates stay in cache win: 1<<20 (4 MB) beat 1<<19 and 1<<22 for a 30-s query's 100
# candidates, and big batches only add memory traffic (1<<26 is 3x slower).
MAX_BATCH_ELEMS = {"cpu": 1 << 20, "cuda": 1 << 26}


# A matched run is trimmed to its cells above this fraction of the way from the matrix's median to the
# run's best cell. A speed-changed copy scores lower towards the run's ends, which one half cut off.
TRIM_FRACTION = 0.3

def l2_normalize(x: Tensor) -> Tensor:
    """Row-wise L2 normalisation as TensorFlow does it: x / sqrt(max(sum(x^2), 1e-15))."""
    return x * torch.rsqrt(x.square().sum(dim=-1, keepdim=True).clamp_min(L2_EPSILON))


def tile_segments(x: Tensor, minimum: int = MIN_DATABASE_SEGMENTS) -> Tensor:
    """The release's rule for short videos: concatenate with itself until there are `minimum` rows."""
    if len(x) == 0:
        raise ValueError("cannot tile a video with no segments")
    while len(x) < minimum:
        x = torch.cat([x, x])
    return x


def chamfer(sim_map: Tensor) -> Tensor:
    """Chamfer similarity: mean over rows of the max over columns."""
    return sim_map.amax(dim=-1).mean(dim=-1)


def masked_chamfer(maps: Tensor, widths: Tensor, heights: Tensor | None = None) -> Tensor:
    """Chamfer of each (B, H, W) batch item over its valid cells: columns < width, rows < height.

    Without ``heights`` every row is valid and the mean is the plain one of :func:`chamfer`.
    """
    columns = torch.arange(maps.shape[-1], device=maps.device)
    row_max = maps.masked_fill(columns[None, None, :] >= widths[:, None, None], float("-inf")).amax(dim=-1)
    if heights is None:
        return row_max.mean(dim=-1)
    rows_valid = torch.arange(maps.shape[-2], device=maps.device)[None, :] < heights[:, None]
    return row_max.masked_fill(~rows_valid, 0).sum(-1) / rows_valid.sum(-1)


def valid_cells(shape: torch.Size, heights: Tensor, widths: Tensor) -> Tensor:
    """(B, H, W) mask of the cells inside each item's (height, width)."""
    rows = torch.arange(shape[-2], device=heights.device)
    columns = torch.arange(shape[-1], device=heights.device)
    return (rows[None, :, None] < heights[:, None, None]) & (columns[None, None, :] < widths[:, None, None])


def _replicate_past_width(x: Tensor, widths: Tensor) -> Tensor:
    """Overwrite every column at or past each item's valid width with its last valid column.

    A batch item narrower than the batch then pads exactly as it would alone (edge replication).
    """
    columns = torch.arange(x.shape[-1], device=x.device)
    index = torch.minimum(columns[None, :], (widths - 1)[:, None])
    return x.gather(-1, index[:, None, None, :].expand_as(x))


class VideoComparator(nn.Module):
    """The comparator CNN on a similarity matrix, batched over candidates of different widths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 128, 3)
        self.fconv = nn.Conv2d(128, 1, 1)

    def forward(self, sim: Tensor, widths: Tensor | None = None, clip: bool = True,
                heights: Tensor | None = None, channels_last: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(B, H, W) similarity matrices -> ((B, H', W') maps, (B,) valid widths, (B,) valid heights).

        `widths` (`heights`) are the true widths (heights) of items padded at the right (bottom),
        whose padding must replicate their last real column (row); map cells past an item's
        returned width or height are meaningless. Without `heights` every row is real.
        `channels_last` runs the convolutions in that memory layout: on CPU the oneDNN kernels are
        faster with it, and the results equal the default layout's to float32 rounding.
        """
        if widths is None:
            widths = torch.full((sim.shape[0],), sim.shape[-1], device=sim.device)
        x = sim.unsqueeze(1)
        kernels = self._channels_last_kernels() if channels_last else {}
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def conv(layer: nn.Conv2d, x: Tensor) -> Tensor:
            return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels.get(layer, layer.weight), layer.bias)

        for layer in (self.conv1, self.conv2):
            x = F.relu(F.max_pool2d(conv(layer, x), 2))  # pooled first: the same as ReLU first, on 1/4 the cells
            widths = widths // 2
            x = _replicate_past_width(x, widths)
            if heights is not None:
                heights = heights // 2
                x = _replicate_past_width(x.transpose(-1, -2), heights).transpose(-1, -2)
        x = self.fconv(F.relu(conv(self.conv3, x)))
        x = x.squeeze(1)
        return (x.clamp(-1.0, 1.0) if clip else x), widths, heights

    def _channels_last_kernels(self) -> dict[nn.Conv2d, Tensor]:
        """The 3x3 kernels in channels-last layout (converted once per change of the weights when no
        gradient is taken). With channels-last input and default-layout kernels, oneDNN runs the
        one-channel first convolution 14x slower (2.6 vs 0.18 ms for a batch of 7 candidates)."""
        layers = (self.conv1, self.conv2, self.conv3)
        if torch.is_grad_enabled():  # a differentiable copy; the cache is for inference
            return {layer: layer.weight.contiguous(memory_format=torch.channels_last) for layer in layers}
        key = tuple((layer.weight.data_ptr(), layer.weight._version) for layer in layers)
        cached = getattr(self, "_kernel_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                kernels = {layer: layer.weight.detach().contiguous(memory_format=torch.channels_last) for layer in layers}
            self._kernel_cache = cached = (key, kernels)
        return cached[1]

    def reset_keras_style(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform kernels and zero biases, as Keras initialises a fresh Conv2D."""
        for conv in (self.conv1, self.conv2, self.conv3, self.fconv):
            nn.init.xavier_uniform_(conv.weight, generator=generator)
            nn.init.zeros_(conv.bias)

    @torch.no_grad()
    def reset_passthrough(self, generator: torch.Generator | None = None, noise: float = 1e-3) -> None:
        """Make channel 0 carry the similarity matrix through (ReLU, then the two max-pools).

        The other weights get `noise` times a Keras initialisation: a trained comparator starts
        from Chamfer over the pooled matrix, and no channel is dead to the gradient.
        """
        self.reset_keras_style(generator)
        for conv in (self.conv1, self.conv2, self.conv3, self.fconv):
            conv.weight.mul_(noise)
            conv.weight[0, 0] = 0.0
            conv.weight[0, 0, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = 1.0


class AuSiLHead(nn.Module):
    """Segment embedding and video-to-video similarity of AuSiL.

    The `use_*` flags switch components off for ablations; without the comparator the video
    similarity is plain Chamfer over the raw similarity matrix.
    """

    def __init__(
        self,
        dim: int = DESCRIPTOR_DIM,
        *,
        width: int | None = None,
        use_whitening: bool = True,
        use_attention: bool = True,
        use_comparator: bool = True,
    ) -> None:
        super().__init__()
        width = dim if width is None else width
        if not 1 <= width <= dim:
            raise ValueError(f"the head's width must be in [1, {dim}], got {width}")
        if width < dim and not use_whitening:
            raise ValueError("a head narrower than its descriptors needs whitening (the projection that narrows it)")
        self.pca_mean = nn.Parameter(torch.zeros(dim), requires_grad=False)
        self.pca_weights = nn.Parameter(torch.eye(dim)[:, :width].clone(), requires_grad=False)
        self.context = nn.Parameter(torch.zeros(width))
        self.comparator = VideoComparator()
        self.use_whitening = use_whitening
        self.use_attention = use_attention
        self.use_comparator = use_comparator

    @property
    def width(self) -> int:
        """Width of the embedded segments (the whitening's output)."""
        return self.pca_weights.shape[1]

    @classmethod
    def identity(cls, dim: int = DESCRIPTOR_DIM, seed: int | None = None, width: int | None = None,
                 **flags: bool) -> AuSiLHead:
        """A neutral head (no whitening, every attention weight 0.5), Keras-initialised comparator."""
        head = cls(dim, width=width, **flags)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        head.comparator.reset_keras_style(generator)
        return head

    def init_passthrough_comparator(self, seed: int | None = None) -> None:
        """Replace the comparator by a near pass-through one (see `VideoComparator.reset_passthrough`)."""
        self.comparator.reset_passthrough(torch.Generator().manual_seed(seed) if seed is not None else None)

    @torch.no_grad()
    def set_whitening(self, mean: Tensor, weights: Tensor) -> None:
        """Adopt a whitening (`mean` (dim,), `weights` (dim, width)), possibly of another width.

        The attention context lives in the whitened space: a narrower head keeps its first
        components (whitenings order them by variance), a wider one gets zeros (neutral) for the new.
        """
        width = weights.shape[1]
        if mean.shape != self.pca_mean.shape or weights.shape[0] != self.pca_mean.shape[0] or width < 1:
            raise ValueError(f"whitening of shape {tuple(mean.shape)}, {tuple(weights.shape)} does not fit "
                             f"{self.pca_mean.shape[0]}-d descriptors")
        context = torch.zeros(width, dtype=self.context.dtype, device=self.context.device)
        kept = min(width, self.width)
        context[:kept] = self.context[:kept]
        device = self.pca_mean.device
        self.pca_mean = nn.Parameter(mean.to(device, self.pca_mean.dtype).clone(), requires_grad=False)
        self.pca_weights = nn.Parameter(weights.to(device, self.pca_weights.dtype).clone(), requires_grad=False)
        self.context = nn.Parameter(context, requires_grad=self.context.requires_grad)

    def truncate(self, width: int) -> None:
        """Keep the whitening's first `width` components (see `set_whitening`)."""
        if not 1 <= width <= self.width:
            raise ValueError(f"cannot narrow a {self.width}-wide head to {width}")
        self.set_whitening(self.pca_mean.detach(), self.pca_weights.detach()[:, :width])

    def embed(self, x: Tensor) -> Tensor:
        """(N, dim) backbone descriptors -> (N, width) embedded segments."""
        return self.attend(self.whiten(x))

    def whiten(self, x: Tensor) -> Tensor:
        """L2-normalised, then PCA-whitened and L2-normalised again (when whitening is on)."""
        x = l2_normalize(x)
        if self.use_whitening:
            x = l2_normalize((x - self.pca_mean) @ self.pca_weights)
        return x

    def attend(self, x: Tensor) -> Tensor:
        """Each whitened segment weighted by its attention ``(x·c)/2 + 0.5`` (when attention is on)."""
        if self.use_attention:
            x = x * ((x @ self.context) / 2 + 0.5).unsqueeze(-1)
        return x

    def comparator_map(self, q: Tensor, p: Tensor, clip: bool = True) -> Tensor:
        """Comparator output (X', Y') for embedded query (X, dim) and database (Y, dim) videos."""
        if len(q) < MIN_COMPARATOR_SEGMENTS or len(p) < MIN_COMPARATOR_SEGMENTS:
            raise ValueError(
                f"the comparator needs >= {MIN_COMPARATOR_SEGMENTS} segments a side, got {len(q)} x {len(p)}"
            )
        sim_map, _, _ = self.comparator((q @ p.T).unsqueeze(0), clip=clip)
        return sim_map[0]

    def similarity_map(self, q: Tensor, p: Tensor) -> Tensor:
        """What Chamfer is taken over: the comparator output, or the raw matrix without a comparator."""
        return self.comparator_map(q, p) if self.use_comparator else q @ p.T

    def score(self, q: Tensor, p: Tensor) -> float:
        """Video similarity of embedded query and database videos, with the tiling rules applied."""
        q = tile_segments(q, MIN_COMPARATOR_SEGMENTS)
        p = tile_segments(p, MIN_DATABASE_SEGMENTS)
        return chamfer(self.similarity_map(q, p)).item()

    def score_many(
        self,
        q: Tensor,
        candidates: Sequence[Tensor],
        max_batch_elems: int | None = None,
    ) -> Tensor:
        """`score` of one query against many candidates, in memory-bounded batches: (B,) scores.

        `max_batch_elems` bounds the largest intermediate (the first conv's output, 32 channels);
        by default MAX_BATCH_ELEMS of the query's device type. Candidates are grouped by width so
        that little work goes into padding.
        """
        if max_batch_elems is None:
            max_batch_elems = MAX_BATCH_ELEMS.get(q.device.type, MAX_BATCH_ELEMS["cuda"])
        q = tile_segments(q, MIN_COMPARATOR_SEGMENTS)
        tiled = [tile_segments(p, MIN_DATABASE_SEGMENTS) for p in candidates]
        scores = torch.empty(len(tiled), device=q.device, dtype=q.dtype)
        order = sorted(range(len(tiled)), key=lambda i: len(tiled[i]), reverse=True)
        elems_per_column = self.comparator.conv1.out_channels * (len(q) + 2)
        start = 0
        while start < len(order):
            width = len(tiled[order[start]])
            count = max(1, max_batch_elems // (elems_per_column * (width + 2)))
            chunk = order[start:start + count]
            scores[chunk] = self._score_chunk(q, [tiled[i] for i in chunk])
            start += len(chunk)
        return scores

    def _score_chunk(self, q: Tensor, candidates: list[Tensor]) -> Tensor:
        # One matmul against all candidates, then a gather that lays each candidate's columns out
        # right-padded by repeating its last column (the comparator's edge replication).
        widths = torch.tensor([len(p) for p in candidates], device=q.device)
        offsets = torch.cumsum(widths, 0) - widths
        columns = torch.arange(int(widths.max()), device=q.device)
        index = offsets[:, None] + torch.minimum(columns[None, :], widths[:, None] - 1)
        sim = (q @ torch.cat(candidates).T)[:, index].permute(1, 0, 2)
        if self.use_comparator:
            sim, widths, _ = self.comparator(sim, widths, channels_last=q.device.type == "cpu")
        return masked_chamfer(sim, widths)

    def compare_pairs(self, queries: Sequence[Tensor], databases: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Similarity maps of many (query, database) pairs of embedded videos, any sizes, in one batch.

        Returns the (B, H', W') maps *before* the hard tanh (training regularises what leaves
        [-1, 1]) and their (B, H', W') validity mask. Each similarity matrix is padded to the
        batch's size by repeating its last row and column, and the comparator keeps padding that
        way after each pooling, so every item's valid cells equal those of running it alone.
        Without a comparator the maps are the raw similarity matrices.
        """
        heights = torch.tensor([len(q) for q in queries], device=queries[0].device)
        widths = torch.tensor([len(p) for p in databases], device=queries[0].device)
        height, width = int(heights.max()), int(widths.max())
        sims = torch.stack([
            F.pad((q @ p.T)[None], (0, width - len(p), 0, height - len(q)), mode="replicate")[0]
            for q, p in zip(queries, databases)
        ])
        if self.use_comparator:
            sims, widths, heights = self.comparator(sims, widths, clip=False, heights=heights)
        return sims, valid_cells(sims.shape, heights, widths)

    def chamfer_pairs(self, maps: Tensor, valid: Tensor) -> Tensor:
        """Video similarity of each pair from :meth:`compare_pairs`' maps: hard tanh, then masked Chamfer."""
        widths, heights = valid.any(dim=-2).sum(-1), valid.any(dim=-1).sum(-1)
        return masked_chamfer(maps.clamp(-1.0, 1.0), widths, heights)

    def occurrences(self, q: Tensor, p: Tensor) -> list[tuple[range, range, float]]:
        """Every place embedded query `q` occurs in embedded database video `p` (:func:`find_occurrences`)."""
        return find_occurrences(q @ p.T)

    def locate(self, q: Tensor, p: Tensor) -> tuple[range, range]:
        """Query and database segment ranges of the best match between two embedded videos.

        Uses the raw similarity matrix: it has one cell per segment pair, where the comparator's
        output has one per 4x4 block.
        """
        return best_alignment(q @ p.T)


def best_alignment(sim: Tensor, stride: int = 1, min_overlap: int | None = None) -> tuple[range, range]:
    """Row and column spans of the strongest diagonal of a similarity matrix.

    Shared audio shows as a diagonal run of high values, so the offset with the highest mean along
    its diagonal wins; diagonals shorter than `min_overlap` cells (default: half the shorter side)
    do not compete, so that a lone corner cell cannot win. The winning diagonal is then trimmed
    at both ends to its first and last cells above TRIM_FRACTION of the way from the matrix's median
    to the diagonal's maximum. `stride` is the input segments per cell: 1 for a raw similarity
    matrix, 4 (COMPARATOR_STRIDE) for a comparator output.
    """
    values = sim.detach().double().cpu().numpy()
    rows, columns = values.shape
    if min_overlap is None:
        min_overlap = max(1, min(rows, columns) // 2)
    min_overlap = min(min_overlap, rows, columns)
    offsets = range(-(rows - min_overlap), columns - min_overlap + 1)
    best = max(offsets, key=lambda offset: np.diagonal(values, offset).mean())
    first, last = _trimmed_run(np.diagonal(values, best), float(np.median(values)))
    row, column = max(0, -best), max(0, best)
    return (
        range((row + first) * stride, (row + last) * stride),
        range((column + first) * stride, (column + last) * stride),
    )


def _trimmed_run(diagonal: np.ndarray, median: float) -> tuple[int, int]:
    """First and one-past-last cell of `diagonal` at or above TRIM_FRACTION of the way from the
    matrix's `median` to the diagonal's best cell."""
    above = np.flatnonzero(diagonal >= median + TRIM_FRACTION * (diagonal.max() - median))
    return int(above[0]), int(above[-1]) + 1


def diagonal_means(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The mean of each diagonal `offset` of a 2-D array (``np.diagonal(values, offset).mean()``), in one pass."""
    rows, columns = values.shape
    column = np.arange(rows)[:, None] + offsets[None, :]
    inside = (column >= 0) & (column < columns)
    cells = np.where(inside, values[np.arange(rows)[:, None], np.clip(column, 0, columns - 1)], 0.0)
    return cells.sum(axis=0) / inside.sum(axis=0)


def find_occurrences(sim: Tensor, max_speed_change: float = 0.15, min_overlap: int | None = None,
                     keep: float = 0.4, min_contrast: float = 6.0) -> list[tuple[range, range, float]]:
    """Every place the query occurs in the database video: (query rows, database columns, score) per
    occurrence, in database order, from a raw similarity matrix (query segments × database segments).

    Shared audio is a diagonal run of high values; a speed change tilts it, so each diagonal is
    scored in a band of ``±max_speed_change·rows/2`` columns around it (the mean over rows of the
    band's maximum). Diagonal offsets are taken best first, each one suppressing the offsets within
    one query length of it (a repeat inside the query is not a second place in the database), while
    they score at least ``keep`` of the way from the band's median to the best offset's score and
    stand out from the offsets' scores by ``min_contrast`` robust standard deviations (so that
    chance diagonals of an unrelated video are not listed). Each is then trimmed like
    :func:`best_alignment`. The best offset is always returned, so there is at least one.
    """
    values = sim.detach().double().cpu().numpy()
    rows, columns = values.shape
    band = int(np.ceil(max_speed_change * rows / 2))
    banded = values.copy()
    for shift in range(1, band + 1):  # the maximum over columns j-band..j+band, at every cell
        banded[:, shift:] = np.maximum(banded[:, shift:], values[:, :-shift])
        banded[:, :-shift] = np.maximum(banded[:, :-shift], values[:, shift:])
    if min_overlap is None:
        min_overlap = max(1, min(rows, columns) // 2)
    min_overlap = min(min_overlap, rows, columns)
    offsets = np.arange(-(rows - min_overlap), columns - min_overlap + 1)
    scores = diagonal_means(banded, offsets)
    floor = float(np.median(banded))
    order = np.argsort(-scores, kind="stable")
    best = scores[order[0]]
    centre = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - centre))) or 1e-12
    chosen: list[int] = []
    for index in order:
        if chosen and (scores[index] < floor + keep * (best - floor) or scores[index] < centre + min_contrast * spread):
            break
        if all(abs(offsets[index] - offsets[other]) >= rows for other in chosen):
            chosen.append(int(index))
    found = []
    median = float(np.median(values))
    for index in chosen:
        offset = _centred_offset(values, int(offsets[index]), band, offsets)
        diagonal = np.diagonal(banded, offset)
        first, last = _trimmed_run(diagonal, median)
        row, column = max(0, -offset), max(0, offset)
        lo, hi = row + first, row + last - 1
        start, end = _run_columns(values, range(lo, hi + 1), column - row, band, max_speed_change)
        found.append((range(lo, hi + 1), range(start, end), float(diagonal[first:last].mean())))
    return sorted(found, key=lambda item: item[1].start)


def _centred_offset(values: np.ndarray, offset: int, band: int, offsets: np.ndarray) -> int:
    """The diagonal within ``band`` of `offset` with the best plain (unbanded) mean.

    Banded scores tie across the band: every diagonal within it reaches the run's cells, and a
    shifted one, shorter at the video's edge, can win by leaving out a weaker end (an exact copy
    of a 10-minute video would lose its last 45 s). The run's own diagonal, or for a speed-changed
    copy the one crossing it mid-way (the band's assumption), has the best plain mean.
    """
    near = offsets[np.abs(offsets - offset) <= band]
    return int(near[np.argmax(diagonal_means(values, near))])


def _run_columns(values: np.ndarray, rows: range, offset: int, band: int, max_speed_change: float) -> tuple[int, int]:
    """First and one-past-last database column of a matched run of query `rows` near diagonal `offset`.

    A speed-changed copy tilts the run: the line through the run is found by trying every slope in the
    speed range and every crossing within the band of the diagonal's middle (the best mean similarity
    along it), then refitted to each row's best column near it; its ends give the span, which one noisy
    row at either end cannot move much. (Fitting each row's best column in the whole band instead
    pulls a tilted run's slope towards 1: rows that miss scatter around the diagonal.)
    """
    band = min(band, int(np.ceil(max_speed_change * len(rows) / 2)))  # the run drifts by its own length's share
    rows_array = np.asarray(rows, np.float64)
    slope, intercept = _best_line(values, rows_array, offset, band, max_speed_change)
    for _ in range(2 if len(rows) >= 3 else 0):
        slope, intercept = _fit_run(values, rows_array, intercept + slope * rows_array, 2, max_speed_change)
    columns = values.shape[1]
    start = int(np.clip(round(intercept + slope * rows.start), 0, columns - 1))
    end = int(np.clip(round(intercept + slope * (rows.stop - 1)), start, columns - 1)) + 1
    return start, end


def _best_line(values: np.ndarray, rows: np.ndarray, offset: int, band: int, max_speed_change: float,
               grid: int = 41, sample: int = 256) -> tuple[float, float]:
    """The line (slope, intercept) with the best mean similarity over `rows`, among slopes in the speed
    range crossing the middle row within `band` columns of diagonal `offset`: a `grid` × `grid` search
    over at most `sample` of the rows, then a second one around the winner one coarse step each way,
    so the cost does not grow with the run's length."""
    columns = values.shape[1]
    picked = rows[np.unique(np.linspace(0, len(rows) - 1, min(sample, len(rows))).round().astype(np.int64))]
    middle = float(rows.mean())
    slope_range = _slope_bounds(max_speed_change)
    slope_centre, slope_half = sum(slope_range) / 2, (slope_range[1] - slope_range[0]) / 2
    shift_centre, shift_half = 0.0, float(band)
    for _ in range(2):
        slopes = slope_centre + np.linspace(-slope_half, slope_half, grid)
        shifts = shift_centre + np.linspace(-shift_half, shift_half, grid)
        lines = np.rint(middle + offset + shifts[:, None, None]
                        + slopes[None, :, None] * (picked - middle)[None, None, :]).astype(np.int64)
        inside = (lines >= 0) & (lines < columns)
        cells = np.where(inside, values[picked.astype(np.int64)[None, None, :], np.clip(lines, 0, columns - 1)], 0.0)
        counts = inside.sum(axis=2)
        means = cells.sum(axis=2) / np.maximum(counts, 1)
        means[counts < min(len(picked) / 2, counts.max())] = -np.inf  # a line mostly off the matrix scores by chance
        shift, slope = np.unravel_index(int(np.argmax(means)), means.shape)
        slope_centre, shift_centre = float(slopes[slope]), float(shifts[shift])
        slope_half, shift_half = 2 * slope_half / (grid - 1), 2 * shift_half / (grid - 1)
    return slope_centre, middle + offset + shift_centre - slope_centre * middle


def _fit_run(values: np.ndarray, rows: np.ndarray, centres: np.ndarray, half_width: int,
             max_speed_change: float) -> tuple[float, float]:
    """Slope and intercept of the line through each row's best column within ``half_width`` of its
    centre (at least 3 rows)."""
    columns = values.shape[1]
    centres = np.rint(centres).astype(np.int64)
    window = centres[:, None] + np.arange(-half_width, half_width + 1)[None, :]
    inside = (window >= 0) & (window < columns)
    cells = np.where(inside, values[rows.astype(np.int64)[:, None], np.clip(window, 0, columns - 1)], -np.inf)
    best_array = np.where(inside.any(axis=1), window[np.arange(len(rows)), np.argmax(cells, axis=1)],
                          np.clip(centres, 0, columns - 1)).astype(np.float64)
    whole = inside.all(axis=1)
    # A row whose window the matrix's edge cuts can only err inwards, which would flatten the slope and
    # shorten the span; fit on the uncut rows when there are enough.
    fit = whole if whole.sum() >= 3 else np.ones(len(rows), bool)
    slope = float(np.clip(np.polyfit(rows[fit], best_array[fit], 1)[0], *_slope_bounds(max_speed_change)))
    return slope, float(np.mean(best_array[fit] - slope * rows[fit]))


def _slope_bounds(max_speed_change: float) -> tuple[float, float]:
    """Database columns per query row of a copy played up to `max_speed_change` faster or slower."""
    return 1 / (1 + max_speed_change), 1 / (1 - max_speed_change)
