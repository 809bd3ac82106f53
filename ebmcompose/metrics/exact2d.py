"""Comparisons of 2-D samples with an exact density (quadrature on a grid).

* :func:`histogram_tv` / :func:`histogram_tv_baseline` — total variation between a 2-D
  histogram and exact cell probabilities (via :func:`ebmcompose.grid.grid_density`), and the
  noise floor an exact sample of the same size would reach;
* :func:`cell_probabilities` — exact probabilities of histogram cells;
* :func:`mode_weight_error` — mixture mode frequencies against the exact weights;
* :func:`mean_log_likelihood` — mean log density of the samples under an exact density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from ..checks import check_positive_int
from ..energy import Energy, TimeLike
from ..errors import InputError, InputTypeError
from ..grid import Bounds, GridDensity, grid_density, parse_bounds
from ._inputs import as_samples, default_generator, sq_dists

__all__ = [
    "histogram_tv",
    "histogram_tv_baseline",
    "cell_probabilities",
    "HistogramTV",
    "TVBaseline",
    "mode_weight_error",
    "ModeWeightError",
    "mean_log_likelihood",
]

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
    check_positive_int(resolution, "resolution")
    check_positive_int(oversample, "oversample")
    if resolution < 2:
        raise InputError(f"resolution must be at least 2, got {resolution}")
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
    samples = as_samples(samples, "samples")
    if samples.shape[1] != 2:
        raise InputError(
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
    check_positive_int(n, "n")
    check_positive_int(n_repeats, "n_repeats")
    g = default_generator(generator)
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
    samples = as_samples(samples, "samples")
    check_positive_int(chunk_size, "chunk_size")
    dev, dtype = samples.device, torch.promote_types(samples.dtype, torch.float32)
    samples = samples.to(dtype)
    means = torch.as_tensor(means).to(device=dev, dtype=dtype)
    if means.dim() != 2 or means.shape[1] != samples.shape[1] or means.shape[0] == 0:
        raise InputError(
            f"means must be (K, D) with D={samples.shape[1]} like the samples, got shape "
            f"{tuple(means.shape)}"
        )
    k, d = means.shape
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=dtype, device=dev)
    else:
        w = torch.as_tensor(weights).to(device=dev, dtype=dtype).reshape(-1)
        if w.shape[0] != k:
            raise InputError(f"{w.shape[0]} weights for {k} means; give one weight per mode")
        if not bool(torch.isfinite(w).all() & (w >= 0).all()) or not bool(w.sum() > 0):
            raise InputError(f"weights must be non-negative, finite and not all 0, got {w.tolist()}")
        w = w / w.sum()
    chol = logdet = None
    if covs is not None:
        c = torch.as_tensor(covs).to(device=dev, dtype=dtype)
        if c.shape == (k,):
            c = c.pow(2)[:, None, None] * torch.eye(d, dtype=dtype, device=dev)
        if c.shape != (k, d, d):
            raise InputError(
                f"covs must be (K, D, D) covariances or (K,) standard deviations with K={k}, "
                f"D={d}; got shape {tuple(c.shape)}"
            )
        chol, info = torch.linalg.cholesky_ex(c)
        if bool((info != 0).any()):
            raise InputError("covs must be symmetric positive definite")
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    log_w = torch.log(w)
    assign = []
    for start in range(0, samples.shape[0], chunk_size):
        xs = samples[start : start + chunk_size]
        if chol is None:
            score = -sq_dists(xs, means)  # (n, K)
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
    as_samples(samples, "samples")  # validation only; callables get the original shape
    check_positive_int(chunk_size, "chunk_size")
    if (log_prob is None) == (energy is None):
        raise InputError(
            "give exactly one of log_prob (a normalised log density) or energy= (with log_z= "
            "or bounds=)"
        )
    if isinstance(log_prob, Energy):
        raise InputTypeError(
            "log_prob must be a normalised log density, but an Energy (unnormalised −log p) was "
            "given; pass it as energy=..., with log_z=... or bounds=..."
        )
    if energy is not None:
        if log_z is None:
            if bounds is None:
                raise InputError(
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
                raise InputError(
                    f"the log density returned shape {tuple(lp.shape)} for {xs.shape[0]} samples; "
                    f"expected ({xs.shape[0]},)"
                )
            total = total + lp.to(torch.float64).sum().to(samples.device)
    return total / samples.shape[0]
