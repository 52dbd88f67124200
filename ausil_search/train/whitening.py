"""PCA whitening of segment descriptors, fitted in one streaming pass with Ledoit–Wolf shrinkage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import AusilError
from ..model.head import l2_normalize
from .reports import WhiteningSummary

# Rows of descriptors per float32 Gram-matrix update in `fit_whitening`.
_WHITENING_CHUNK = 4096


@dataclass
class WhiteningFit:
    """A fitted whitening and the numbers that justify it."""

    mean: np.ndarray  # (dim,) float32
    weights: np.ndarray  # (dim, dim) float32, columns = eigenvectors / sqrt(eigenvalue + eps), by eigenvalue
    eigenvalues: np.ndarray  # (dim,) float64, descending
    eps: float
    shrinkage: float
    n_segments: int
    ledoit_wolf: float | None = None  # the data's Ledoit–Wolf estimate (None when shrinkage was given)

    def summary(self) -> WhiteningSummary:
        total = float(self.eigenvalues.sum())
        cumulative = np.cumsum(self.eigenvalues) / total if total > 0 else np.zeros_like(self.eigenvalues)
        return WhiteningSummary(
            segments=self.n_segments,
            shrinkage=round(self.shrinkage, 6),
            ledoit_wolf=None if self.ledoit_wolf is None else round(self.ledoit_wolf, 6),
            eps=float(self.eps),
            mean_eigenvalue=total / len(self.eigenvalues),
            dims_for_90pct_variance=int(np.searchsorted(cumulative, 0.9) + 1),
        )


def fit_whitening(matrices: Iterable[np.ndarray], shrinkage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pca_mean, pca_weights) for `AuSiLHead`, which applies ``(l2n(x) − mean) · W``; see :func:`fit_whitening_report`."""
    fit = fit_whitening_report(matrices, shrinkage)
    return fit.mean, fit.weights


def fit_whitening_report(matrices: Iterable[np.ndarray], shrinkage: float | None = None) -> WhiteningFit:
    """PCA whitening of L2-normalised segment descriptors, streamed over (N_i, dim) matrices.

    ``W = V · diag(1 / sqrt(λ + eps))`` with the eigenvectors V of the covariance sorted by
    eigenvalue λ. With fewer segments than dimensions the sample covariance is singular and its
    small eigenvalues are mostly noise: plain ``1/sqrt(λ)`` would blow those directions up until
    they dominate every cosine. The covariance is therefore shrunk towards ``μ·I`` (μ the mean
    eigenvalue) by the Ledoit–Wolf amount ``s``, estimated from the data in closed form (it goes
    to 0 as segments outnumber dimensions), but never below ``d / (n + d)`` (see the code for why); the shrunk eigenvalues ``(1 − s)λ + sμ`` equal
    ``(1 − s)(λ + eps)`` with ``eps = sμ / (1 − s)``, and the constant factor is dropped because the
    head L2-normalises after whitening. Pass `shrinkage` to fix ``s`` instead.
    """
    gram = None
    total = None
    weighted_total = None
    sum_sq_norms = sum_fourth = 0.0
    n = 0
    for matrix in matrices:
        x = np.asarray(matrix, dtype=np.float32)
        if x.ndim != 2 or (gram is not None and x.shape[1] != gram.shape[0]):
            raise ValueError(f"descriptor matrices must share one width, got shape {x.shape}")
        if gram is None:
            dim = x.shape[1]
            rows: list[np.ndarray] | None = []  # kept while there are fewer rows than dims
            gram, total, weighted_total = np.zeros((dim, dim)), np.zeros(dim), np.zeros(dim)
        for start in range(0, len(x), _WHITENING_CHUNK):
            chunk = l2_normalize(torch.from_numpy(x[start:start + _WHITENING_CHUNK])).numpy()
            sq_norms = np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)
            gram += chunk.T @ chunk
            total += chunk.sum(axis=0, dtype=np.float64)
            weighted_total += sq_norms @ chunk.astype(np.float64)
            sum_sq_norms += float(sq_norms.sum())
            sum_fourth += float(np.square(sq_norms).sum())
            n += len(chunk)
            if rows is not None:
                rows = rows + [chunk] if n <= dim else None
    if gram is None or n < 2:
        raise AusilError(f"whitening needs at least 2 segments, got {n}")
    dim = gram.shape[0]
    mean = total / n
    covariance = gram / n - np.outer(mean, mean)
    mu = float(np.trace(covariance)) / dim
    ledoit_wolf = None
    if shrinkage is None:
        ledoit_wolf = _ledoit_wolf_shrinkage(covariance, gram, mean, weighted_total, sum_sq_norms, sum_fourth, n, mu)
        shrinkage = ledoit_wolf
        # Ledoit–Wolf minimises the covariance's Frobenius error, which is not what retrieval needs:
        # with n segments and d ≤ n dims whitening makes the n training rows nearly orthogonal, so
        # even matching segments stop resembling each other. eps ≥ μ·d/n (shrinkage d/(n + d))
        # keeps directions whose variance is below the sampling-noise scale of a d-dim covariance
        # from n rows from being blown up; it fades as the data grows (n = 100·d: eps = μ/100).
        shrinkage = max(shrinkage, dim / (n + dim))
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    if rows is not None:
        eigenvalues, vectors = _low_rank_eigh(np.concatenate(rows).astype(np.float64) - mean)
    else:
        # torch's LAPACK eigh runs about 1.4x faster than numpy's here; float64 for the small eigenvalues.
        eigenvalues, vectors = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy(covariance)))
        eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]  # descending
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    # A floor keeps directions with no variance at all (dead channels) finite.
    eps = max(shrinkage * mu / (1.0 - shrinkage), 1e-6 * mu, 1e-12)
    weights = vectors / np.sqrt(eigenvalues + eps)
    return WhiteningFit(mean.astype(np.float32), weights.astype(np.float32), eigenvalues, eps, float(shrinkage), n, ledoit_wolf)


def _low_rank_eigh(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of ``YᵀY/n`` for n ≤ d centred rows, in O(n²d + d²n) instead of O(d³).

    The non-zero eigenpairs come from the n×n matrix ``YYᵀ/n``; the rest of the basis (eigenvalue
    0) is the orthogonal complement, from a complete QR of the leading eigenvectors.
    """
    n, dim = centred.shape
    small_values, small_vectors = np.linalg.eigh(centred @ centred.T / n)
    order = np.argsort(small_values)[::-1]
    small_values, small_vectors = small_values[order], small_vectors[:, order]
    keep = small_values > small_values[0] * 1e-10
    values = small_values[keep]
    leading = centred.T @ small_vectors[:, keep] / np.sqrt(n * values)
    basis, _ = np.linalg.qr(leading, mode="complete")
    vectors = np.concatenate([leading, basis[:, len(values):]], axis=1)
    return np.concatenate([values, np.zeros(dim - len(values))]), vectors


def _ledoit_wolf_shrinkage(covariance, gram, mean, weighted_total, sum_sq_norms, sum_fourth, n, mu) -> float:
    """Ledoit & Wolf (2004): s = min(β̄², δ²) / δ² from running sums, without a second pass.

    δ² = ‖S − μI‖²/d and β̄² = Σᵢ‖yᵢyᵢᵀ − S‖² / (n² d) with yᵢ = xᵢ − m. Using ΣᵢyᵢᵀSyᵢ = n‖S‖²,
    Σᵢ‖yᵢyᵢᵀ − S‖² = Σᵢ‖yᵢ‖⁴ − n‖S‖², and ‖yᵢ‖² = aᵢ − 2bᵢ + c with aᵢ = ‖xᵢ‖², bᵢ = xᵢ·m,
    c = ‖m‖² expands into sums that were accumulated.
    """
    dim = len(mean)
    frobenius_sq = float(np.square(covariance).sum())
    delta_sq = (frobenius_sq - dim * mu * mu) / dim
    if delta_sq <= 0:
        return 0.0
    c = float(mean @ mean)
    sum_b = n * c  # Σ xᵢ·m = n‖m‖²
    sum_b_sq = float(mean @ gram @ mean)
    sum_ab = float(weighted_total @ mean)
    sum_y4 = (sum_fourth + 4 * sum_b_sq + n * c * c - 4 * sum_ab + 2 * c * sum_sq_norms - 4 * c * sum_b)
    beta_sq = max(sum_y4 - n * frobenius_sq, 0.0) / (n * n * dim)
    return float(min(beta_sq, delta_sq) / delta_sq)
