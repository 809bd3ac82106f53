"""The compilers' floor: the time of one batched gradient evaluation, ``torch.compile`` vs ``jax.jit``.

Both sides run the same loop of ``n`` steps ``x ← x - ε ∇E(x)`` (``ε`` tiny: the points stay where
they start) as one compiled loop: ``torch.while_loop`` of ``torch.func.grad`` under ``torch.compile``
with ebmcompose's inductor options, ``jax.lax.fori_loop`` of ``jax.vmap(jax.grad)`` under ``jax.jit``.
Nothing of a sampler is in it. A run's gradient evaluations times torch's time per gradient is
about what a ``torch.compile`` sampler would take if everything else were free (``peers.md``'s
``bound``); only about, since the loop's per-iteration cost is paid once per gradient here and
once per L gradients in an HMC transition.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import numpy as np
import torch

from samplers.compile import inductor_options

from .peer_targets import TORCH, jax_log_densities, load_jax

__all__ = ["torch_gradient_loop", "jax_gradient_loop", "gradient_floor"]

EPS = 1e-9


def torch_gradient_loop(name: str, x0: np.ndarray, n: int = 2000) -> Callable[[], object]:
    """A call that runs ``n`` batched gradients of target ``name`` at the chains ``x0`` ``(B, D)``."""
    fn = TORCH[name]

    def loop(x, steps):
        def body(i, y):
            return i + 1, y - EPS * torch.func.grad(lambda z: fn(z).sum())(y)

        return torch.while_loop(lambda i, y: i < steps, body, (torch.zeros((), dtype=torch.int64), x))[1]

    x = torch.from_numpy(x0)
    graph = torch.compile(loop, fullgraph=True, dynamic=False, options=inductor_options(x) or None)
    steps = torch.tensor(n)

    def call():
        with torch.no_grad():
            return graph(x, steps)

    return call


def jax_gradient_loop(name: str, x0: np.ndarray, threads: int = 1, n: int = 2000) -> Optional[Callable[[], object]]:
    """The same with ``jax.jit``; ``None`` when jax is not installed."""
    jax = load_jax(threads)
    if jax is None:
        return None
    grad = jax.vmap(jax.grad(jax_log_densities()[name]))  # of log p: the step adds it
    loop = jax.jit(lambda x: jax.lax.fori_loop(0, n, lambda i, y: y + EPS * grad(y), x))
    x = jax.numpy.asarray(x0)
    return lambda: jax.block_until_ready(loop(x))


def gradient_floor(name: str, x0: np.ndarray, threads: int = 1, n: int = 2000, repeats: int = 5) -> dict:
    """``{target, chains, torch_us, jax_us, ratio}``: microseconds per batched gradient of target
    ``name`` at the chains ``x0``, medians of ``repeats`` interleaved timings (compilation apart)."""
    calls = {"torch": torch_gradient_loop(name, x0, n), "jax": jax_gradient_loop(name, x0, threads, n)}
    calls = {k: c for k, c in calls.items() if c is not None}
    times = {k: [] for k in calls}
    for c in calls.values():
        c()  # compiles
    for r in range(repeats):
        for k in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            t0 = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t0)
    us = {k: statistics.median(v) / n * 1e6 for k, v in times.items()}
    j = us.get("jax")
    return dict(target=name, chains=int(x0.shape[0]), torch_us=us["torch"], jax_us=j,
                ratio=None if j is None else statistics.median(a / b for a, b in zip(times["torch"], times["jax"])))
