"""The timed problem of :mod:`benchmarks.sampler_speed`: the 8-Gaussian ring with a closed-form
energy and gradient (two layouts), as an :class:`ebmcompose.Energy` leaf and as plain functions,
and the minimal hand-written ULA/MALA/HMC loops (eager and compiled) the samplers are timed against.
"""

from __future__ import annotations

import math

import torch

import ebmcompose as ec
from samplers.tensors import noise_draw, normal_noise

STEP = {"ULA": 0.01, "MALA": 0.03, "HMC": 0.1}
N_LEAPFROG = 5


def ring_params(device, dtype):
    ang = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = (4.0 * torch.stack([ang.cos(), ang.sin()], -1)).to(device=device, dtype=dtype)
    return means, 0.3**2


def ring_energy_and_grad(x, means, var):
    """Closed-form ``-log (1/K Σ_k N(x; μ_k, var I))`` ``(B,)`` and its gradient ``(B, 2)``.

    Written per coordinate: ``(B, K)`` tables of ``x_d - μ_kd`` reduced over their contiguous last
    dimension, with one ``exp`` shared by the energy (max-shifted log-sum-exp) and the gradient
    (responsibilities). This is the layout ``torch.compile`` handles well on CPU; see
    :func:`ring_energy_and_grad_broadcast` for the one it does not.
    """
    d0 = x[:, :1] - means[:, 0]  # (B, K)
    d1 = x[:, 1:] - means[:, 1]
    logits = (d0 * d0 + d1 * d1) * (-0.5 / var)
    top = logits.amax(-1, keepdim=True)
    w = (logits - top).exp()
    total = w.sum(-1)
    energy = math.log(means.shape[0] * 2 * math.pi * var) - top.squeeze(-1) - total.log()
    # stack, not cat of keepdim sums: torch 2.13's inductor miscompiles the cat form when three or
    # more evaluations share one graph (an HMC leapfrog); tests/benchmarks/test_sampler_speed.py
    grad = torch.stack([(w * d0).sum(-1), (w * d1).sum(-1)], -1) / (total[:, None] * var)
    return energy, grad


def ring_energy_and_grad_broadcast(x, means, var):
    """The same energy and gradient through a ``(B, K, 2)`` broadcast, ``logsumexp`` and ``softmax``.

    The natural way to write it, kept for the ``layout`` rows: with more than one thread, torch
    2.13's inductor turns the ``(B, K, 2) -> (B, 2)`` gradient reduction into an OpenMP region
    opened once per chain (``#pragma omp parallel`` inside the loop over B), and the compiled step
    runs about 5x slower on two threads than on one. The slowdown belongs to the compiled code of
    this energy, not to any sampler: the compiled hand loop shows it as much as the library.
    """
    diff = x[:, None, :] - means  # (B, K, 2)
    logits = -0.5 * diff.square().sum(-1) / var
    energy = -torch.logsumexp(logits, -1) + math.log(means.shape[0] * 2 * math.pi * var)
    resp = torch.softmax(logits, -1)
    grad = (resp[..., None] * diff).sum(1) / var
    return energy, grad


LAYOUTS = {"per-coordinate": ring_energy_and_grad, "broadcast": ring_energy_and_grad_broadcast}


class Ring(ec.Energy):
    """The ring as an Energy leaf with a closed-form ``_energy_and_grad`` (no autograd).

    ``fn`` is one of :data:`LAYOUTS` (default: the per-coordinate form).
    """

    event_shape = (2,)

    def __init__(self, device, dtype, fn=None):
        super().__init__()
        self.means, self.var = ring_params(device, dtype)
        self.fn = fn or ring_energy_and_grad

    def _energy(self, x, t):
        return self.fn(x, self.means, self.var)[0]

    def _energy_and_grad(self, x, t, create_graph=False):
        return self.fn(x, self.means, self.var)

    def _grad(self, x, t, create_graph=False):
        return self.fn(x, self.means, self.var)[1]


# ------------------------------------------------------------------------------- hand loops
def normal_like(x, gen):
    """N(0, 1) noise like ``x`` drawn as ebmcompose's kernels draw it (``torch.randn``; float64 on the
    CPU: uniforms by Box–Muller, ``samplers.tensors.noise_draw``), so a hand loop and a library kernel
    run the same chains from one seed. In the timed float32 runs it is ``torch.randn``."""
    return normal_noise(noise_draw(x, gen), x)


def hand_ula(x, n, h, gen, means, var, fn=ring_energy_and_grad):
    _, g = fn(x, means, var)
    s = math.sqrt(2 * h)
    for _ in range(n):
        x = x - h * g + s * normal_like(x, gen)
        _, g = fn(x, means, var)
    return x


def hand_mala(x, n, h, gen, means, var, fn=ring_energy_and_grad):
    e, g = fn(x, means, var)
    s = math.sqrt(2 * h)
    for _ in range(n):
        noise = normal_like(x, gen)
        xp = x - h * g + s * noise
        ep, gp = fn(xp, means, var)
        log_r = e - ep - (x - xp + h * gp).square().sum(1) / (4 * h) + 0.5 * noise.square().sum(1)
        acc = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype) < log_r.clamp(max=0).exp()
        x = torch.where(acc[:, None], xp, x)
        e = torch.where(acc, ep, e)
        g = torch.where(acc[:, None], gp, g)
    return x


def hand_hmc(x, n, h, gen, means, var, fn=ring_energy_and_grad):
    e, g = fn(x, means, var)
    for _ in range(n):
        p0 = normal_like(x, gen)
        u = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype)  # leapfrog draws nothing: same stream
        x, e, g = _hmc_step(x, e, g, p0, u, h, means, var, fn)
    return x


HAND = {"ULA": hand_ula, "MALA": hand_mala, "HMC": hand_hmc}


# ------------------------------------------------------------------- compiled hand loops
# The same transitions as one torch.compile'd function per step (random draws stay eager, as in
# the library's compiled kernels): the apples-to-apples baseline for the compiled rows, and the
# bound on what any compiled kernel can reach on this target and machine.
def _ula_step(x, g, noise, h, means, var, fn):
    x = x - h * g + (2 * h).sqrt() * noise
    return x, fn(x, means, var)[1]


def _mala_step(x, e, g, noise, u, h, means, var, fn):
    xp = x - h * g + (2 * h).sqrt() * noise
    ep, gp = fn(xp, means, var)
    log_r = e - ep - (x - xp + h * gp).square().sum(1) / (4 * h) + 0.5 * noise.square().sum(1)
    acc = u < log_r.clamp(max=0).exp()
    return torch.where(acc[:, None], xp, x), torch.where(acc, ep, e), torch.where(acc[:, None], gp, g)


def _hmc_step(x, e, g, p0, u, h, means, var, fn):
    xp, p = x, p0 - 0.5 * h * g
    for i in range(N_LEAPFROG):
        xp = xp + h * p
        ep, gp = fn(xp, means, var)
        p = p - (0.5 * h if i == N_LEAPFROG - 1 else h) * gp
    d_h = ep + 0.5 * p.square().sum(1) - e - 0.5 * p0.square().sum(1)
    acc = u < (-d_h).clamp(max=0).exp()
    return torch.where(acc[:, None], xp, x), torch.where(acc, ep, e), torch.where(acc[:, None], gp, g)


_COMPILED_STEPS = {}


def _compiled_step(step):
    if step not in _COMPILED_STEPS:
        _COMPILED_STEPS[step] = torch.compile(step, dynamic=False, fullgraph=True)
    return _COMPILED_STEPS[step]


def hand_ula_compiled(x, n, h, gen, means, var, fn=ring_energy_and_grad):
    step, h = _compiled_step(_ula_step), torch.tensor(h, device=x.device, dtype=x.dtype)
    _, g = fn(x, means, var)
    for _ in range(n):
        x, g = step(x, g, normal_like(x, gen), h, means, var, fn)
    return x


def _hand_metropolis_compiled(step_fn, x, n, h, gen, means, var, fn):
    """MALA and HMC as compiled steps: each draws a ``(B, 2)`` normal (noise or momentum), then ``u``."""
    step, h = _compiled_step(step_fn), torch.tensor(h, device=x.device, dtype=x.dtype)
    e, g = fn(x, means, var)
    for _ in range(n):
        z = normal_like(x, gen)
        u = torch.rand(x.shape[:1], generator=gen, device=x.device, dtype=x.dtype)
        x, e, g = step(x, e, g, z, u, h, means, var, fn)
    return x


def hand_mala_compiled(x, n, h, gen, means, var, fn=ring_energy_and_grad):
    return _hand_metropolis_compiled(_mala_step, x, n, h, gen, means, var, fn)


def hand_hmc_compiled(x, n, h, gen, means, var, fn=ring_energy_and_grad):
    return _hand_metropolis_compiled(_hmc_step, x, n, h, gen, means, var, fn)


HAND_COMPILED = {"ULA": hand_ula_compiled, "MALA": hand_mala_compiled, "HMC": hand_hmc_compiled}
