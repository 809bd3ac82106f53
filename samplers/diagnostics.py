"""MCMC diagnostics from traces ``(T, B, *event)`` (T draws of B chains): ESS, split-R̂, MCSE, AIS weights.

ESS and R̂ follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
folding, and localization: an improved R̂" (the classic, non-rank-normalised versions):
autocorrelations by FFT, combined across chains, summed with Geyer's (1992) initial monotone
sequence estimator.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

import ebmcompose as ec

from .run import run_steps

__all__ = ["autocovariance", "ess", "rhat", "mcse_mean", "ais_log_weights", "ais", "log_mean_exp"]


def _as_trace(samples: Tensor) -> Tensor:
    if not isinstance(samples, Tensor) or samples.dim() < 2:
        raise ValueError("samples must be a (T, B, *event) trace: T draws of B chains")
    if samples.shape[0] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {samples.shape[0]}")
    return samples.to(torch.float64) if samples.dtype != torch.float64 else samples


def autocovariance(samples: Tensor) -> Tensor:
    """Per-chain autocovariance ``(T, B, *event)`` at lags ``0..T-1`` (biased, ``1/T`` normalised) via FFT."""
    x = _as_trace(samples)
    n = x.shape[0]
    x = x - x.mean(dim=0, keepdim=True)
    size = 2 ** math.ceil(math.log2(2 * n))
    f = torch.fft.rfft(x, n=size, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=size, dim=0)[:n]
    return acov / n


def ess(samples: Tensor) -> Tensor:
    """Effective sample size per dimension ``(*event,)`` from a ``(T, B, *event)`` trace (Geyer initial monotone sequence).

    ``ρ_t = 1 - (W - mean_chains(acov_t)) / var⁺``, ``var⁺ = (T-1)/T · W + B_between/T``;
    ``τ = -1 + 2 Σ_k P_k`` with ``P_k = ρ_{2k} + ρ_{2k+1}`` kept while positive and made
    monotone; ``ESS = T·B / τ`` (capped at ``T·B·log10(T·B)``).
    """
    x = _as_trace(samples)
    n, m = x.shape[0], x.shape[1]
    acov = autocovariance(x)  # (T, B, *event)
    chain_mean = x.mean(dim=0)
    chain_var = acov[0] * n / (n - 1.0)
    w = chain_var.mean(dim=0)
    var_plus = w * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + chain_mean.var(dim=0)
    rho = 1.0 - (w - acov.mean(dim=1)) / var_plus  # (T, *event)
    rho[0] = 1.0
    n_pairs = n // 2
    pairs = rho[: 2 * n_pairs].reshape((n_pairs, 2) + rho.shape[1:]).sum(dim=1)  # (K, *event)
    positive = pairs > 0
    keep = torch.cumprod(positive.to(torch.int64), dim=0).bool()  # initial positive sequence
    mono = torch.cummin(torch.where(keep, pairs, torch.zeros_like(pairs)), dim=0).values  # monotone
    tau = -1.0 + 2.0 * torch.where(keep, mono, torch.zeros_like(mono)).sum(dim=0)
    tau = tau.clamp(min=1.0 / math.log10(max(n * m, 10)))
    out = n * m / tau
    return torch.where(torch.isfinite(out), out, torch.full_like(out, float(n * m)))


def rhat(samples: Tensor) -> Tensor:
    """Split-R̂ per dimension ``(*event,)`` from a ``(T, B, *event)`` trace (Gelman et al. BDA3, eq. 11.4, chains split in half)."""
    x = _as_trace(samples)
    half = x.shape[0] // 2
    x = torch.cat([x[:half], x[x.shape[0] - half :]], dim=1)  # (T/2, 2B, *event)
    n = x.shape[0]
    w = x.var(dim=0).mean(dim=0)
    b = n * x.mean(dim=0).var(dim=0)
    var_plus = (n - 1.0) / n * w + b / n
    return (var_plus / w).sqrt()


def mcse_mean(samples: Tensor) -> Tensor:
    """Monte-Carlo standard error of the mean per dimension ``(*event,)``: ``sd / sqrt(ESS)``."""
    x = _as_trace(samples)
    sd = x.reshape((-1,) + x.shape[2:]).std(dim=0)
    return sd / ess(x).sqrt()


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``, stably (the AIS estimate of ``log Z_L/Z_0``)."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def ais_log_weights(energy_increments: Tensor) -> Tensor:
    """Annealed importance sampling log weights (Neal 2001) from per-level energy increments.

    For a ladder ``E_0, …, E_L`` with transitions ``T_l`` leaving ``exp(-E_l)`` invariant and
    ``x_0 ~ exp(-E_0)/Z_0``: before each transition to level ``l+1``,
    ``log w += -(E_{l+1}(x) - E_l(x))``. Then ``E[w] = Z_L / Z_0`` and
    ``log_mean_exp(log w)`` estimates ``log Z_L - log Z_0``.

    Parameters
    ----------
    energy_increments : Tensor
        ``(L, B)``: ``E_{l+1}(x_l) - E_l(x_l)`` at the state entering level ``l+1``.

    Returns
    -------
    Tensor
        ``(B,)`` log weights.
    """
    if energy_increments.dim() != 2:
        raise ValueError("energy_increments must be (L, B): one row per level transition")
    return -energy_increments.sum(dim=0)


def ais(
    energies: Sequence[ec.Energy],
    x0: Tensor,
    kernel,
    step_size,
    n_steps: int = 1,
    generator: Optional[torch.Generator] = None,
):
    """Run annealed importance sampling down a ladder of energies with an MCMC kernel.

    Parameters
    ----------
    energies : sequence of Energy
        ``E_0 … E_L`` (static); ``x0`` must be exact draws from ``exp(-E_0)``.
    x0 : Tensor
        ``(B, *event)``.
    kernel : MCMCKernel
        e.g. ``MALA()`` or ``HMC()``, run for ``n_steps`` transitions per level.
    step_size : float or callable
        Step size, or ``step_size(l)`` per level.

    Returns
    -------
    (Tensor, Tensor)
        Final positions ``(B, *event)`` and log weights ``(B,)``; ``log_mean_exp(log_w)``
        estimates ``log Z_L - log Z_0``.
    """
    x = x0
    increments = []
    e_prev = energies[0].evaluate(x, None, energy=True, grad=False).energy
    for l in range(1, len(energies)):
        state = kernel.init(energies[l], x)
        increments.append(state.energy - e_prev)
        h = step_size(l) if callable(step_size) else step_size
        state = run_steps(kernel.with_step_size(h), energies[l], state, n_steps, generator)
        x = state.x
        if l + 1 < len(energies):
            e_prev = state.energy
    return x, ais_log_weights(torch.stack(increments))
