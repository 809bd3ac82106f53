"""HMC and MALA written by hand in plain torch: the ``torch-loop`` peer of :mod:`benchmarks.peers`.

What a careful user writes without a library: per-chain energies and gradients by
``torch.func.grad``, each transition one graph of ``torch.compile`` with the inductor options
ebmcompose uses (:func:`samplers.compile.inductor_options`), the random draws made beforehand by
``torch.randn`` / ``torch.rand``, a Python loop over the transitions that records the trace (as in ``benchmarks.sampler_speed``'s
compiled baseline). No validation, no divergence bookkeeping: ``ebmcompose-compiled / torch-loop``
says what the library adds or saves over a user's own compiled loop.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from samplers.compile import inductor_options

__all__ = ["value_and_grad", "hmc_step", "mala_step", "run_transitions", "compiled_run"]

Energy = Callable[[Tensor], Tensor]


def value_and_grad(fn: Energy, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``E(x)`` ``(B,)`` and ``∇E(x)`` ``(B, D)`` of a batched energy ``fn`` by ``torch.func.grad``."""
    def total(y):
        e = fn(y)
        return e.sum(), e

    g, e = torch.func.grad(total, has_aux=True)(x)
    return e, g


def hmc_step(fn: Energy, x: Tensor, e: Tensor, g: Tensor, p0: Tensor, u: Tensor, h: float, n_leapfrog: int):
    """One HMC transition with unit mass from momentum ``p0`` ``(B, D)`` and uniforms ``u`` ``(B,)``."""
    p, y = p0 - 0.5 * h * g, x
    for i in range(n_leapfrog):
        y = y + h * p
        ey, gy = value_and_grad(fn, y)
        p = p - (0.5 * h if i == n_leapfrog - 1 else h) * gy
    log_ratio = e - ey + 0.5 * (p0.square().sum(-1) - p.square().sum(-1))
    return _accept(x, e, g, y, ey, gy, log_ratio, u)


def mala_step(fn: Energy, x: Tensor, e: Tensor, g: Tensor, xi: Tensor, u: Tensor, h: float):
    """One MALA transition ``y = x - h ∇E(x) + sqrt(2h) ξ`` (ebmcompose's and BlackJAX's step)."""
    y = x - h * g + math.sqrt(2.0 * h) * xi
    ey, gy = value_and_grad(fn, y)
    back = x - y + h * gy  # x minus the mean of the reverse proposal
    log_ratio = e - ey + 0.5 * xi.square().sum(-1) - back.square().sum(-1) / (4.0 * h)
    return _accept(x, e, g, y, ey, gy, log_ratio, u)


def _accept(x, e, g, y, ey, gy, log_ratio, u):
    ok = torch.log(u) < log_ratio  # a NaN ratio compares False: rejected
    keep = ok[:, None]
    return torch.where(keep, y, x), torch.where(ok, ey, e), torch.where(keep, gy, g), ok


def run_transitions(fn: Energy, step: Callable, x: Tensor, noise: Tensor, u: Tensor, trace: Tensor, warmup: int,
                    consts: tuple, transition: Optional[Callable] = None):
    """All ``len(noise)`` transitions, one call of ``transition`` (default: ``step`` itself) each;
    the kept steps' states are written to ``trace`` ``(T, B, D)``. Returns ``(trace, accepted)``,
    ``accepted`` ``(B,)`` each chain's count over the kept steps."""
    transition = transition or (lambda *a: step(fn, *a, *consts))
    e, g = value_and_grad(fn, x)
    accepted = torch.zeros_like(e)
    for i in range(noise.shape[0]):
        x, e, g, ok = transition(x, e, g, noise[i], u[i])
        if i >= warmup:
            trace[i - warmup] = x
            accepted += ok
    return trace, accepted


def compiled_run(fn: Energy, algo: str, step_size: float, n_leapfrog: int = 1) -> Callable:
    """``run(x0, warmup, steps, generator) -> (trace (steps, B, D), mean acceptance, gradient evaluations)``.

    Each transition one compiled graph (built on the first call), called from a Python loop that
    records the trace; ``algo`` is ``"hmc"`` or ``"mala"``.
    """
    if algo == "hmc":
        step, consts, per_step = hmc_step, (float(step_size), int(n_leapfrog)), int(n_leapfrog)
    elif algo == "mala":
        step, consts, per_step = mala_step, (float(step_size),), 1
    else:
        raise ValueError(f"algo must be 'hmc' or 'mala', got {algo!r}")
    graph = []

    def run(x0: Tensor, warmup: int, steps: int, generator: torch.Generator):
        n = warmup + steps
        noise = torch.randn((n,) + tuple(x0.shape), generator=generator, dtype=x0.dtype)
        u = torch.rand((n, x0.shape[0]), generator=generator, dtype=x0.dtype)
        if not graph:
            graph.append(torch.compile(lambda *a: step(fn, *a, *consts), fullgraph=True, dynamic=False,
                                       options=inductor_options(x0) or None))
        with torch.no_grad():
            trace, accepted = run_transitions(fn, step, x0, noise, u, x0.new_empty((steps,) + tuple(x0.shape)), warmup, consts, graph[0])
        return trace, float(accepted.mean()) / steps, 1 + n * per_step

    return run
