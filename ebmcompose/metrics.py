"""Sample-quality metrics: two-sample distances and comparisons against exact densities.

Two-sample statistics (compare samples ``x`` with samples ``y``):

* :func:`mmd` — unbiased MMD² with a multi-bandwidth RBF kernel;
* :func:`energy_distance` — ``2 E|X−Y| − E|X−X'| − E|Y−Y'|`` (unbiased within terms);
* :func:`sliced_wasserstein` — ``SW_p`` from exact 1-D transport of random projections.

Comparisons with an exact density:

* :func:`histogram_tv` / :func:`histogram_tv_baseline` — total variation between a 2-D
  histogram and exact cell probabilities (via :func:`ebmcompose.grid.grid_density`), and the
  noise floor an exact sample of the same size would reach;
* :func:`mode_weight_error` — mixture mode frequencies against the exact weights;
* :func:`mean_log_likelihood` — mean log density of the samples under an exact density.

Conventions
-----------
Samples are ``(N, D)`` tensors. Inputs with more dimensions ``(N, *event)`` (images) are
flattened to ``(N, -1)``; 1-D inputs are rejected (use ``x[:, None]`` for one-dimensional
data). Every computation runs on the inputs' device and returns tensors there; randomness
(subsampling, projections) comes from an explicit ``torch.Generator``: when ``generator`` is
``None`` a fresh generator seeded with 0 is used, so results are reproducible and no global
random state is touched.

Pairwise statistics (:func:`mmd`, :func:`energy_distance`) are quadratic in the number of
samples. They are computed block-wise (``chunk_size × chunk_size`` blocks, so memory is
``O(chunk_size² + N D)``) on at most ``max_samples`` points per set, drawn without replacement
when a set is larger: with more samples than that the value is a (still unbiased) estimate
from a random subsample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .energy import Energy, TimeLike
from .grid import Bounds, GridDensity, grid_density, parse_bounds

__all__ = [
    "mmd",
    "energy_distance",
    "sliced_wasserstein",
    "histogram_tv",
    "histogram_tv_baseline",
    "cell_probabilities",
    "HistogramTV",
    "TVBaseline",
    "mode_weight_error",
    "ModeWeightError",
    "mean_log_likelihood",
    "median_distance",
]

#: Default cap on points per set for the quadratic statistics.
DEFAULT_MAX_SAMPLES = 4096
#: Default block edge for pairwise sums (a block holds ``chunk_size²`` entries).
DEFAULT_CHUNK_SIZE = 1024
#: Default multiples of the median pairwise distance used as RBF bandwidths.
DEFAULT_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Points used to estimate the median pairwise distance.
MEDIAN_SAMPLES = 1024


# ------------------------------------------------------------------------------- validation
def _as_samples(x, name: str, min_n: int = 1) -> Tensor:
    """Check and return samples as a floating ``(N, D)`` tensor (images flattened)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{name} must be a tensor of shape (N, D), got {type(x).__name__}; convert with "
                f"torch.as_tensor({name}, dtype=torch.float32)"
            ) from exc
    if x.dim() < 2:
        shape = tuple(x.shape)
        raise ValueError(
            f"{name} must be a batch of samples of shape (N, D), got a {x.dim()}-D tensor of shape "
            f"{shape}; for one-dimensional data use {name}[:, None] (shape (N, 1))"
        )
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    x = x.detach().flatten(1)  # (N, *event) -> (N, D); works for N = 0 too
    if x.shape[0] < min_n:
        what = "is empty (0 samples)" if x.shape[0] == 0 else f"has only {x.shape[0]} sample(s)"
        raise ValueError(f"{name} {what}; this metric needs at least {min_n} samples of shape (N, D)")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: samples need at least one feature")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(
            f"{name} contains NaN or inf in {bad.numel()} of {x.shape[0]} samples (first at index "
            f"{int(bad[0])}); fix the sampler (e.g. a smaller step size) or drop them with "
            f"{name}[torch.isfinite({name}).all(dim=1)]"
        )
    return x


def _as_pair(x, y, min_n: int = 1) -> Tuple[Tensor, Tensor]:
    """Validate two sample sets: same feature dimension, same device, common dtype."""
    x = _as_samples(x, "x", min_n)
    y = _as_samples(y, "y", min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x has D={x.shape[1]} features but y has D={y.shape[1]}; both must be (N, D) with "
            f"the same D (images are flattened: x {tuple(x.shape)}, y {tuple(y.shape)})"
        )
    if x.device != y.device:
        raise ValueError(
            f"x is on {x.device} but y is on {y.device}; move one of them, e.g. y.to(x.device)"
        )
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def _check_positive_int(value, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _default_generator(generator: Optional[torch.Generator]) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _subsample(x: Tensor, max_samples: Optional[int], generator: torch.Generator) -> Tensor:
    """At most ``max_samples`` rows of ``x``, without replacement (all rows if fewer)."""
    if max_samples is None or x.shape[0] <= max_samples:
        return x
    idx = torch.randperm(x.shape[0], generator=generator, device=generator.device)[:max_samples]
    return x[idx.to(x.device)]


# ------------------------------------------------------------------------------- pairwise sums
def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """``(n, m)`` squared Euclidean distances (clamped at 0 against round-off)."""
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)


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
    return _sq_dists(a, b)


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
    pool = _as_samples(x, "x", 2) if y is None else torch.cat(_as_pair(x, y), dim=0)
    pool = _subsample(pool, max_samples, _default_generator(generator))
    if pool.shape[0] < 2:
        raise ValueError("the median distance needs at least 2 samples")
    pool = pool - pool.mean(0)
    d2 = _sq_dists(pool, pool)
    iu = torch.triu_indices(pool.shape[0], pool.shape[0], offset=1, device=pool.device)
    return d2[iu[0], iu[1]].median().sqrt()


# ------------------------------------------------------------------------------- two-sample
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
    x, y = _as_pair(x, y, min_n=2)
    _check_positive_int(max_samples, "max_samples", allow_none=True)
    _check_positive_int(chunk_size, "chunk_size")
    if max_samples is not None and max_samples < 2:
        raise ValueError(f"max_samples must be at least 2 for MMD, got {max_samples}")
    g = _default_generator(generator)
    x, y = _subsample(x, max_samples, g), _subsample(y, max_samples, g)
    center = torch.cat([x, y]).mean(0)
    x, y = x - center, y - center  # translation invariant; better conditioned distances
    if bandwidths is None:
        med = median_distance(x, y, generator=g)
        if not bool(med > 0):
            raise ValueError(
                "the median pairwise distance is 0 (most samples coincide); pass explicit "
                "bandwidths=[...]"
            )
        h = med * torch.tensor(DEFAULT_BANDWIDTH_FACTORS, dtype=x.dtype, device=x.device)
    else:
        h = torch.as_tensor(bandwidths, dtype=x.dtype).to(x.device).reshape(-1)
        if h.numel() == 0 or not bool(torch.isfinite(h).all() & (h > 0).all()):
            raise ValueError(f"bandwidths must be positive and finite, got {bandwidths!r}")
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
    x, y = _as_pair(x, y, min_n=2)
    _check_positive_int(max_samples, "max_samples", allow_none=True)
    _check_positive_int(chunk_size, "chunk_size")
    if max_samples is not None and max_samples < 2:
        raise ValueError(f"max_samples must be at least 2 for the energy distance, got {max_samples}")
    g = _default_generator(generator)
    x, y = _subsample(x, max_samples, g), _subsample(y, max_samples, g)
    center = torch.cat([x, y]).mean(0)
    x, y = x - center, y - center
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
    x, y = _as_pair(x, y, min_n=1)
    _check_positive_int(n_projections, "n_projections")
    _check_positive_int(chunk_size, "chunk_size")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    d = x.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    else:
        g = _default_generator(generator)
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


# ------------------------------------------------------------------------------- exact 2-D
@dataclass(frozen=True)
class HistogramTV:
    """Result of :func:`histogram_tv`.

    Attributes
    ----------
    tv : Tensor
        Scalar total variation in ``[0, 1]``, including the mass outside the bounds.
    outside : Tensor
        Scalar fraction of samples outside the bounds (already counted in ``tv``).
    histogram : Tensor
        ``(R, R)`` empirical cell frequencies (count / N, so it sums to ``1 − outside``);
        ``[i, j]`` is x-cell ``i``, y-cell ``j`` as in :class:`~ebmcompose.grid.GridDensity`.
    probs : Tensor
        ``(R, R)`` exact cell probabilities.
    n : int
        Number of samples ``N``.

    ``float(result)`` is ``tv``.
    """

    tv: Tensor
    outside: Tensor
    histogram: Tensor
    probs: Tensor
    n: int

    def __float__(self) -> float:
        return float(self.tv)


@dataclass(frozen=True)
class TVBaseline:
    """Result of :func:`histogram_tv_baseline`: TV of exact samples of a given size.

    Attributes
    ----------
    mean : Tensor
        Scalar mean TV over the repeats (the noise floor).
    std : Tensor
        Scalar standard deviation of the TV over the repeats.
    values : Tensor
        ``(n_repeats,)`` individual TVs.

    ``float(result)`` is ``mean``.
    """

    mean: Tensor
    std: Tensor
    values: Tensor

    def __float__(self) -> float:
        return float(self.mean)


def cell_probabilities(
    energy: Energy,
    bounds: Bounds,
    resolution: int = 64,
    t: TimeLike = None,
    oversample: int = 8,
) -> GridDensity:
    """Exact probabilities of the cells of a ``resolution × resolution`` histogram.

    The energy is normalised on a grid ``oversample`` times finer per axis (so ``(R·k)²``
    energy evaluations) and the fine cells are summed into the coarse ones, so each cell
    probability is an integral over the cell rather than a single midpoint value.

    Parameters
    ----------
    energy : Energy
        A 2-D energy providing energy values.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
        The histogram's region; the density is normalised over it.
    resolution : int
        Cells per axis ``R`` (default 64).
    t : float, Tensor or None
        Diffusion time for time-dependent energies.
    oversample : int
        Fine cells per coarse cell per axis ``k`` (default 8).

    Returns
    -------
    GridDensity
        ``probs`` ``(R, R)``, edges ``(R + 1,)``, ``log_z`` of the fine grid.
    """
    _check_positive_int(resolution, "resolution")
    _check_positive_int(oversample, "oversample")
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    fine = grid_density(energy, bounds, resolution=resolution * oversample, t=t)
    k = oversample
    probs = fine.probs.reshape(resolution, k, resolution, k).sum(dim=(1, 3))
    return GridDensity(probs, fine.x_edges[::k].contiguous(), fine.y_edges[::k].contiguous(), fine.log_z)


def _histogram(samples: Tensor, x_edges: Tensor, y_edges: Tensor) -> Tuple[Tensor, Tensor]:
    """``(R, R)`` counts of ``samples`` ``(N, 2)`` on the grid, and the count outside it."""
    r = x_edges.shape[0] - 1
    xl, xh = float(x_edges[0]), float(x_edges[-1])
    yl, yh = float(y_edges[0]), float(y_edges[-1])
    s = samples.to(torch.float64)
    inside = (s[:, 0] >= xl) & (s[:, 0] <= xh) & (s[:, 1] >= yl) & (s[:, 1] <= yh)
    s = s[inside]
    ix = ((s[:, 0] - xl) / (xh - xl) * r).floor().long().clamp_(0, r - 1)
    iy = ((s[:, 1] - yl) / (yh - yl) * r).floor().long().clamp_(0, r - 1)
    counts = torch.bincount(ix * r + iy, minlength=r * r).reshape(r, r)
    return counts, samples.shape[0] - inside.sum()


def histogram_tv(
    samples: Tensor,
    energy: Energy,
    bounds: Bounds,
    resolution: int = 64,
    t: TimeLike = None,
    oversample: int = 8,
) -> HistogramTV:
    """Total variation between the 2-D histogram of ``samples`` and the exact cell probabilities.

    ``TV = ½ (Σ_cells |n_c / N − p_c| + n_out / N)``: the exact density is normalised over the
    bounds (see :func:`cell_probabilities`), so every sample outside the bounds counts fully as
    mismatched mass. Choose bounds that hold essentially all of the target's mass.

    A finite sample has a positive TV even when drawn exactly (roughly
    ``½ Σ_c sqrt(2 p_c / (π N))``, up to ``sqrt(R² / N)``): compare against
    :func:`histogram_tv_baseline` with the same ``N`` and ``resolution``.

    Parameters
    ----------
    samples : Tensor
        ``(N, 2)`` samples.
    energy : Energy
        The exact target (a 2-D energy providing energy values).
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
        The histogram's region.
    resolution : int
        Cells per axis (default 64, i.e. 4096 cells).
    t : float, Tensor or None
        Diffusion time for time-dependent energies.
    oversample : int
        Sub-cells per cell per axis for the exact probabilities (default 8).

    Returns
    -------
    HistogramTV
        ``tv`` and ``outside`` (scalars on the samples' device), the histogram and the exact
        probabilities.
    """
    samples = _as_samples(samples, "samples")
    if samples.shape[1] != 2:
        raise ValueError(
            f"histogram_tv compares 2-D samples with a 2-D density; got samples of shape "
            f"{tuple(samples.shape)}"
        )
    parse_bounds(bounds)
    grid = cell_probabilities(energy, bounds, resolution, t, oversample)
    probs = grid.probs.to(samples.device)
    counts, n_out = _histogram(samples, grid.x_edges.to(samples.device), grid.y_edges.to(samples.device))
    n = samples.shape[0]
    freq = counts.to(torch.float64) / n
    outside = n_out.to(torch.float64) / n
    tv = 0.5 * ((freq - probs).abs().sum() + outside)
    return HistogramTV(tv=tv, outside=outside, histogram=freq, probs=probs, n=n)


def histogram_tv_baseline(
    energy: Energy,
    bounds: Bounds,
    n: int,
    resolution: int = 64,
    t: TimeLike = None,
    n_repeats: int = 8,
    generator: Optional[torch.Generator] = None,
    oversample: int = 8,
) -> TVBaseline:
    """Expected :func:`histogram_tv` of an *exact* sample of size ``n``: the noise floor.

    Draws ``n_repeats`` histograms of ``n`` samples from the exact cell probabilities
    (multinomial) and reports the mean and spread of their TV. A sampler is as good as exact
    sampling at this resolution when its TV is within a few ``std`` of ``mean``.

    Parameters
    ----------
    energy : Energy
        The exact 2-D target.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
        The histogram's region.
    n : int
        Sample size ``N`` (use the size of the sample being judged).
    resolution, t, oversample
        As for :func:`histogram_tv` (use the same values).
    n_repeats : int
        Number of simulated exact histograms (default 8).
    generator : torch.Generator, optional
        Randomness (default: a fresh CPU generator seeded with 0). The simulation runs on the
        generator's device.

    Returns
    -------
    TVBaseline
        ``mean``, ``std`` (scalars) and ``values`` ``(n_repeats,)``.
    """
    _check_positive_int(n, "n")
    _check_positive_int(n_repeats, "n_repeats")
    g = _default_generator(generator)
    grid = cell_probabilities(energy, bounds, resolution, t, oversample)
    probs = grid.probs.reshape(-1).to(g.device)
    cells = probs.numel()
    values = []
    for _ in range(n_repeats):
        idx = torch.multinomial(probs, n, replacement=True, generator=g)
        freq = torch.bincount(idx, minlength=cells).to(torch.float64) / n
        values.append(0.5 * (freq - probs).abs().sum())
    v = torch.stack(values)
    std = v.std() if n_repeats > 1 else torch.zeros((), dtype=v.dtype, device=v.device)
    return TVBaseline(mean=v.mean(), std=std, values=v)


# ------------------------------------------------------------------------------- mixtures
@dataclass(frozen=True)
class ModeWeightError:
    """Result of :func:`mode_weight_error`.

    Attributes
    ----------
    tv : Tensor
        Scalar total variation ``½ Σ_k |f_k − w_k|`` (half the L1 error), in ``[0, 1]``.
    frequencies : Tensor
        ``(K,)`` fraction of samples assigned to each mode.
    weights : Tensor
        ``(K,)`` exact weights, normalised to sum to 1.
    assignments : Tensor
        ``(N,)`` mode index of each sample.

    ``float(result)`` is ``tv``.
    """

    tv: Tensor
    frequencies: Tensor
    weights: Tensor
    assignments: Tensor

    def __float__(self) -> float:
        return float(self.tv)


def mode_weight_error(
    samples: Tensor,
    means: Tensor,
    weights: Optional[Tensor] = None,
    covs: Optional[Tensor] = None,
    chunk_size: int = 65536,
) -> ModeWeightError:
    """Compare a mixture's empirical mode frequencies with its exact weights.

    Each sample is assigned to the nearest mean (Euclidean), or, when ``covs`` is given, to the
    component of largest responsibility ``log w_k + log N(x | μ_k, Σ_k)``.

    Parameters
    ----------
    samples : Tensor
        ``(N, D)`` samples.
    means : Tensor
        ``(K, D)`` component means.
    weights : Tensor, optional
        ``(K,)`` non-negative weights (normalised here); default equal.
    covs : Tensor, optional
        ``(K, D, D)`` covariances, or ``(K,)`` standard deviations of isotropic components.
    chunk_size : int
        Samples assigned at once (memory ``O(chunk_size · K)``; default 65536).

    Returns
    -------
    ModeWeightError
        ``tv`` (scalar), ``frequencies`` and ``weights`` ``(K,)``, ``assignments`` ``(N,)``.
    """
    samples = _as_samples(samples, "samples")
    _check_positive_int(chunk_size, "chunk_size")
    dev, dtype = samples.device, torch.promote_types(samples.dtype, torch.float32)
    samples = samples.to(dtype)
    means = torch.as_tensor(means).to(device=dev, dtype=dtype)
    if means.dim() != 2 or means.shape[1] != samples.shape[1] or means.shape[0] == 0:
        raise ValueError(
            f"means must be (K, D) with D={samples.shape[1]} like the samples, got shape "
            f"{tuple(means.shape)}"
        )
    k, d = means.shape
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=dtype, device=dev)
    else:
        w = torch.as_tensor(weights).to(device=dev, dtype=dtype).reshape(-1)
        if w.shape[0] != k:
            raise ValueError(f"{w.shape[0]} weights for {k} means; give one weight per mode")
        if not bool(torch.isfinite(w).all() & (w >= 0).all()) or not bool(w.sum() > 0):
            raise ValueError(f"weights must be non-negative, finite and not all 0, got {w.tolist()}")
        w = w / w.sum()
    chol = logdet = None
    if covs is not None:
        c = torch.as_tensor(covs).to(device=dev, dtype=dtype)
        if c.shape == (k,):
            c = c.pow(2)[:, None, None] * torch.eye(d, dtype=dtype, device=dev)
        if c.shape != (k, d, d):
            raise ValueError(
                f"covs must be (K, D, D) covariances or (K,) standard deviations with K={k}, "
                f"D={d}; got shape {tuple(c.shape)}"
            )
        chol, info = torch.linalg.cholesky_ex(c)
        if bool((info != 0).any()):
            raise ValueError("covs must be symmetric positive definite")
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    log_w = torch.log(w)
    assign = []
    for start in range(0, samples.shape[0], chunk_size):
        xs = samples[start : start + chunk_size]
        if chol is None:
            score = -_sq_dists(xs, means)  # (n, K)
        else:
            diff = xs[None, :, :] - means[:, None, :]  # (K, n, D)
            z = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (K, D, n)
            maha = z.pow(2).sum(1)  # (K, n)
            score = (log_w[:, None] - 0.5 * logdet[:, None] - 0.5 * maha).T
        assign.append(score.argmax(dim=1))
    a = torch.cat(assign)
    freq = torch.bincount(a, minlength=k).to(dtype) / samples.shape[0]
    tv = 0.5 * (freq - w).abs().sum()
    return ModeWeightError(tv=tv, frequencies=freq, weights=w, assignments=a)


# ------------------------------------------------------------------------------- likelihood
def mean_log_likelihood(
    samples: Tensor,
    log_prob: Optional[Callable[[Tensor], Tensor]] = None,
    *,
    energy: Optional[Energy] = None,
    log_z: Optional[Union[float, Tensor]] = None,
    bounds: Optional[Bounds] = None,
    t: TimeLike = None,
    resolution: int = 512,
    chunk_size: int = 65536,
) -> Tensor:
    """Mean log density ``(1/N) Σ_i log p(x_i)`` of the samples under an exact density.

    Give either a normalised ``log_prob`` callable, or an ``energy`` with its log normaliser:
    ``log p = −E(x, t) − log_z``. For a 2-D energy without ``log_z``, pass ``bounds`` and
    ``log_z`` is computed by :func:`~ebmcompose.grid.grid_density` (quadrature over the bounds,
    so the density must have negligible mass outside them).

    Parameters
    ----------
    samples : Tensor
        ``(N, *event)`` samples (passed to ``log_prob`` / ``energy`` in their own shape).
    log_prob : callable, optional
        ``log_prob(x) -> (B,)`` normalised log density. Not an :class:`~ebmcompose.Energy`
        (an energy is a *negative unnormalised* log density: pass it as ``energy=``).
    energy : Energy, optional
        Unnormalised ``E`` with ``p ∝ exp(−E)``.
    log_z : float or Tensor, optional
        ``log ∫ exp(−E)``; required with ``energy`` unless ``bounds`` is given.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)), optional
        Region for the grid normaliser of a 2-D ``energy``.
    t : float, Tensor or None
        Diffusion time for time-dependent energies.
    resolution : int
        Grid cells per axis for the normaliser (default 512).
    chunk_size : int
        Samples evaluated at once (default 65536).

    Returns
    -------
    Tensor
        Scalar mean log-likelihood (float64), on the samples' device.
    """
    if not isinstance(samples, Tensor):
        samples = torch.as_tensor(samples)
    _as_samples(samples, "samples")  # validation only; callables get the original shape
    _check_positive_int(chunk_size, "chunk_size")
    if (log_prob is None) == (energy is None):
        raise ValueError(
            "give exactly one of log_prob (a normalised log density) or energy= (with log_z= "
            "or bounds=)"
        )
    if isinstance(log_prob, Energy):
        raise TypeError(
            "log_prob must be a normalised log density, but an Energy (unnormalised −log p) was "
            "given; pass it as energy=..., with log_z=... or bounds=..."
        )
    if energy is not None:
        if log_z is None:
            if bounds is None:
                raise ValueError(
                    "energy= needs its normaliser: pass log_z=..., or bounds=... to compute it "
                    "on a grid for a 2-D energy (ebmcompose.grid.grid_density)"
                )
            log_z = grid_density(energy, bounds, resolution=resolution, t=t).log_z
        lz = float(log_z)

        def fn(x: Tensor) -> Tensor:
            return -energy.energy(x, t) - lz

    else:
        fn = log_prob
    total = torch.zeros((), dtype=torch.float64, device=samples.device)
    with torch.no_grad():
        for start in range(0, samples.shape[0], chunk_size):
            xs = samples[start : start + chunk_size]
            lp = fn(xs)
            if lp.shape != xs.shape[:1]:
                raise ValueError(
                    f"the log density returned shape {tuple(lp.shape)} for {xs.shape[0]} samples; "
                    f"expected ({xs.shape[0]},)"
                )
            total = total + lp.to(torch.float64).sum().to(samples.device)
    return total / samples.shape[0]
