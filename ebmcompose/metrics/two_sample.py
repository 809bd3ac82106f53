"""Two-sample statistics: compare samples ``x`` with samples ``y`` (any dimension).

* :func:`mmd` — unbiased MMD² with a multi-bandwidth RBF kernel;
* :func:`energy_distance` — ``2 E|X−Y| − E|X−X'| − E|Y−Y'|`` (unbiased within terms);
* :func:`sliced_wasserstein` — ``SW_p`` from exact 1-D transport of random projections;
* :func:`median_distance` — the median pairwise distance (the RBF bandwidth scale).

Pairwise statistics (:func:`mmd`, :func:`energy_distance`) are quadratic in the number of
samples. They are computed block-wise (``chunk_size × chunk_size`` blocks, so memory is
``O(chunk_size² + N D)``) on at most ``max_samples`` points per set, drawn without replacement
when a set is larger: with more samples than that the value is a (still unbiased) estimate
from a random subsample.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..checks import check_positive_int
from ..errors import InputError
from ._inputs import as_pair, as_samples, default_generator, sq_dists

__all__ = ["mmd", "energy_distance", "sliced_wasserstein", "median_distance"]

#: Default cap on points per set for the quadratic statistics.
DEFAULT_MAX_SAMPLES = 4096
#: Default block edge for pairwise sums (a block holds ``chunk_size²`` entries).
DEFAULT_CHUNK_SIZE = 1024
#: Default multiples of the median pairwise distance used as RBF bandwidths.
DEFAULT_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Points used to estimate the median pairwise distance.
MEDIAN_SAMPLES = 1024


def _subsample(x: Tensor, max_samples: Optional[int], generator: torch.Generator) -> Tensor:
    """At most ``max_samples`` rows of ``x``, without replacement (all rows if fewer)."""
    if max_samples is None or x.shape[0] <= max_samples:
        return x
    idx = torch.randperm(x.shape[0], generator=generator, device=generator.device)[:max_samples]
    return x[idx.to(x.device)]


# ------------------------------------------------------------------------------- pairwise sums
def _pairwise_sum(
    a: Tensor,
    b: Tensor,
    fn: Callable[[Tensor], Tensor],
    chunk_size: int,
    same: bool,
) -> Tensor:
    """``Σ_{i, j} fn(|a_i − b_j|²)`` in float64, block by block (``i ≠ j`` when ``same``).

    ``fn`` maps a block of squared distances to a block of kernel values. When ``same`` (``a``
    is ``b``) only blocks on and above the diagonal are evaluated and the diagonal terms are
    left out, as the U-statistics need.
    """
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], chunk_size):
        ai = a[i : i + chunk_size]
        j_start = i if same else 0
        for j in range(j_start, b.shape[0], chunk_size):
            block = fn(_block_sq_dists(ai, b[j : j + chunk_size]))
            s = block.sum(dtype=torch.float64)
            if same and i == j:
                s = s - block.diagonal().sum(dtype=torch.float64)
            elif same:
                s = 2.0 * s
            total = total + s
    return total


def _block_sq_dists(a: Tensor, b: Tensor) -> Tensor:
    # Separate function so tests can check that blocks never exceed chunk_size².
    return sq_dists(a, b)


def median_distance(x, y=None, max_samples: int = MEDIAN_SAMPLES, generator=None) -> Tensor:
    """Median pairwise Euclidean distance (the "median heuristic" bandwidth).

    Parameters
    ----------
    x : Tensor
        ``(N, D)`` samples.
    y : Tensor, optional
        ``(M, D)`` samples pooled with ``x``.
    max_samples : int
        Points drawn (without replacement) from the pool to estimate the median.
    generator : torch.Generator, optional
        Randomness for the subsample (default: a fresh generator seeded with 0).

    Returns
    -------
    Tensor
        Scalar median distance over distinct pairs, on ``x``'s device.
    """
    pool = as_samples(x, "x", 2) if y is None else torch.cat(as_pair(x, y), dim=0)
    pool = _subsample(pool, max_samples, default_generator(generator))
    if pool.shape[0] < 2:
        raise InputError("the median distance needs at least 2 samples")
    pool = pool - pool.mean(0)
    d2 = sq_dists(pool, pool)
    iu = torch.triu_indices(pool.shape[0], pool.shape[0], offset=1, device=pool.device)
    return d2[iu[0], iu[1]].median().sqrt()


# ------------------------------------------------------------------------------- two-sample
def _centred_pair(x, y, max_samples, chunk_size, generator, what: str):
    """Checked, subsampled ``(x, y)`` centred on their joint mean (distances are translation
    invariant and better conditioned there), and the generator used; ``what`` names the metric."""
    x, y = as_pair(x, y, min_n=2)
    if max_samples is not None:
        check_positive_int(max_samples, "max_samples")
        if max_samples < 2:
            raise InputError(f"max_samples must be at least 2 for {what}, got {max_samples}")
    check_positive_int(chunk_size, "chunk_size")
    g = default_generator(generator)
    x, y = _subsample(x, max_samples, g), _subsample(y, max_samples, g)
    center = torch.cat([x, y]).mean(0)
    return x - center, y - center, g


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidths: Optional[Union[Sequence[float], Tensor]] = None,
    max_samples: Optional[int] = DEFAULT_MAX_SAMPLES,
    generator: Optional[torch.Generator] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Unbiased squared maximum mean discrepancy with a multi-bandwidth RBF kernel.

    ``MMD² = E k(X, X') + E k(Y, Y') − 2 E k(X, Y)`` with the within-set terms as U-statistics
    (``i ≠ j``), so it is unbiased: it fluctuates around 0 (and can be slightly negative) when
    ``x`` and ``y`` come from one distribution. The kernel is the average of RBF kernels
    ``k(a, b) = mean_h exp(−|a − b|² / (2 h²))`` over the bandwidths ``h``.

    Parameters
    ----------
    x : Tensor
        ``(N, D)`` samples (``(N, *event)`` is flattened); at least 2.
    y : Tensor
        ``(M, D)`` samples; at least 2.
    bandwidths : sequence of float or Tensor, optional
        RBF length scales ``h``. Default: ``(0.25, 0.5, 1, 2, 4)`` times the median pairwise
        distance of the pooled samples (estimated on up to 1024 points).
    max_samples : int or None
        Use at most this many points of each set (drawn without replacement with
        ``generator``); default 4096. ``None`` uses all: cost is ``O((N + M)²)`` time.
    generator : torch.Generator, optional
        Randomness for subsampling and the median estimate (default: seeded with 0).
    chunk_size : int
        Block edge of the pairwise sums: memory is ``O(chunk_size²)`` (default 1024).

    Returns
    -------
    Tensor
        Scalar MMD², on the inputs' device, in the inputs' (promoted) dtype.
    """
    x, y, g = _centred_pair(x, y, max_samples, chunk_size, generator, "MMD")
    if bandwidths is None:
        med = median_distance(x, y, generator=g)
        if not bool(med > 0):
            raise InputError(
                "the median pairwise distance is 0 (most samples coincide); pass explicit "
                "bandwidths=[...]"
            )
        h = med * torch.tensor(DEFAULT_BANDWIDTH_FACTORS, dtype=x.dtype, device=x.device)
    else:
        h = torch.as_tensor(bandwidths, dtype=x.dtype).to(x.device).reshape(-1)
        if h.numel() == 0 or not bool(torch.isfinite(h).all() & (h > 0).all()):
            raise InputError(f"bandwidths must be positive and finite, got {bandwidths!r}")
    gammas = (0.5 / h.pow(2)).tolist()

    def kernel(d2: Tensor) -> Tensor:
        k = torch.zeros_like(d2)
        for gamma in gammas:
            k += torch.exp(-gamma * d2)
        return k / len(gammas)

    n, m = x.shape[0], y.shape[0]
    kxx = _pairwise_sum(x, x, kernel, chunk_size, same=True) / (n * (n - 1))
    kyy = _pairwise_sum(y, y, kernel, chunk_size, same=True) / (m * (m - 1))
    kxy = _pairwise_sum(x, y, kernel, chunk_size, same=False) / (n * m)
    return (kxx + kyy - 2.0 * kxy).to(x.dtype)


def energy_distance(
    x: Tensor,
    y: Tensor,
    max_samples: Optional[int] = DEFAULT_MAX_SAMPLES,
    generator: Optional[torch.Generator] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Energy distance ``2 E|X − Y| − E|X − X'| − E|Y − Y'|`` (Székely & Rizzo).

    The within-set terms are U-statistics (``i ≠ j``), so the estimate is unbiased and
    fluctuates around 0 for samples from one distribution. The population value is 0 exactly
    when the distributions agree.

    Parameters
    ----------
    x : Tensor
        ``(N, D)`` samples (``(N, *event)`` is flattened); at least 2.
    y : Tensor
        ``(M, D)`` samples; at least 2.
    max_samples : int or None
        Use at most this many points of each set (default 4096); ``None`` uses all.
    generator : torch.Generator, optional
        Randomness for subsampling (default: a fresh generator seeded with 0).
    chunk_size : int
        Block edge of the pairwise sums (default 1024).

    Returns
    -------
    Tensor
        Scalar energy distance, on the inputs' device.
    """
    x, y, g = _centred_pair(x, y, max_samples, chunk_size, generator, "the energy distance")
    n, m = x.shape[0], y.shape[0]
    dxx = _pairwise_sum(x, x, torch.sqrt, chunk_size, same=True) / (n * (n - 1))
    dyy = _pairwise_sum(y, y, torch.sqrt, chunk_size, same=True) / (m * (m - 1))
    dxy = _pairwise_sum(x, y, torch.sqrt, chunk_size, same=False) / (n * m)
    return (2.0 * dxy - dxx - dyy).to(x.dtype)


def _merged_quantile_index(n: int, m: int, device, dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """Exact 1-D optimal transport between ``N`` and ``M`` equally weighted points.

    The quantile functions of the two sorted samples are step functions with breakpoints at
    ``i/N`` and ``j/M``. On the merged grid of breakpoints, interval ``k`` has width
    ``widths[k]`` and both functions are constant there, equal to the sorted values at
    ``ix[k]`` and ``iy[k]``. Returns ``(ix, iy, widths)``, each ``(N + M,)``.
    """
    lev_x = torch.arange(1, n + 1, dtype=torch.float64, device=device) / n
    lev_y = torch.arange(1, m + 1, dtype=torch.float64, device=device) / m
    levels = torch.sort(torch.cat([lev_x, lev_y])).values
    lower = torch.cat([levels.new_zeros(1), levels[:-1]])
    mid = 0.5 * (levels + lower)
    ix = (mid * n).floor().long().clamp_(0, n - 1)
    iy = (mid * m).floor().long().clamp_(0, m - 1)
    return ix, iy, (levels - lower).to(dtype)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 128,
    p: float = 2,
    generator: Optional[torch.Generator] = None,
    chunk_size: int = 32,
) -> Tensor:
    """Sliced Wasserstein distance ``SW_p(x, y) = (E_θ W_p^p(θ·x, θ·y))^{1/p}``.

    Directions ``θ`` are uniform on the unit sphere. Each 1-D distance is the exact optimal
    transport cost between the two projected empirical distributions: both quantile functions
    (step functions of the sorted projections) are evaluated on the merged grid of levels
    ``{i/N} ∪ {j/M}``, which handles ``N ≠ M`` without interpolation error (and reduces to
    matching sorted values when ``N = M``). Cost ``O(P (N + M) log(N + M))``; no subsampling.

    Parameters
    ----------
    x : Tensor
        ``(N, D)`` samples (``(N, *event)`` is flattened).
    y : Tensor
        ``(M, D)`` samples.
    n_projections : int
        Number of random directions ``P`` (default 128). The result is a Monte-Carlo estimate
        over directions (exact for ``D = 1``, where the single direction is used).
    p : float
        Order ``p >= 1`` (default 2).
    generator : torch.Generator, optional
        Randomness for the directions (default: a fresh generator seeded with 0).
    chunk_size : int
        Directions processed at once: memory is ``O((N + M) · chunk_size)`` (default 32).

    Returns
    -------
    Tensor
        Scalar ``SW_p``, on the inputs' device.
    """
    x, y = as_pair(x, y, min_n=1)
    check_positive_int(n_projections, "n_projections")
    check_positive_int(chunk_size, "chunk_size")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise InputError(f"p must be a finite number >= 1, got {p!r}")
    d = x.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    else:
        g = default_generator(generator)
        theta = torch.randn(n_projections, d, generator=g, device=g.device, dtype=torch.float64)
        theta = (theta / theta.norm(dim=1, keepdim=True)).to(device=x.device, dtype=x.dtype)
    n, m = x.shape[0], y.shape[0]
    if n != m:
        ix, iy, widths = _merged_quantile_index(n, m, x.device, x.dtype)
    center = torch.cat([x, y]).mean(0)
    x, y = x - center, y - center
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, theta.shape[0], chunk_size):
        th = theta[start : start + chunk_size]
        px = torch.sort(th @ x.T, dim=1).values  # (P, N): sorting along the last dim is fastest
        py = torch.sort(th @ y.T, dim=1).values  # (P, M)
        if n == m:
            cost = (px - py).abs_().pow_(p)
            total = total + cost.sum(dtype=torch.float64) / n
        else:
            cost = (px[:, ix] - py[:, iy]).abs_().pow_(p)  # (P, N + M)
            total = total + (cost * widths).sum(dtype=torch.float64)
    return (total / theta.shape[0]).pow(1.0 / p).to(x.dtype)
