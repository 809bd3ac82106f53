"""Energy and gradient of a function of ``x`` by automatic differentiation: the one place that takes ``∇x E``.

Eagerly it is :func:`torch.autograd.grad` (differentiable with ``create_graph=True``). Inside
``torch.compile`` it is :func:`torch.func.grad`, which the compiler traces, so a user's autograd
energy (a function or an ``nn.Module``), the sampler's move and the Metropolis test compile into one
graph (``samplers.compile``). Both give the same numbers; ``gradient is None`` means "no autograd path
from ``x``" in both.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["energy_and_grad"]


def energy_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """``(fn(x), ∇x Σ fn(x))`` for ``fn: (B, *event) -> (B,)`` (energies stay per chain).

    Returns the energies (whatever ``fn`` returned, unchecked) and the gradient like ``x``, or
    ``None`` when ``fn``'s output has no autograd path from ``x``. Results carry an autograd graph
    only with ``create_graph=True`` (for training through the score); callers detach otherwise.
    """
    if torch.compiler.is_compiling() and not create_graph:
        return _traced(fn, x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = fn(xg)
        if not (isinstance(e, Tensor) and e.requires_grad):
            return e, None
        (g,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph, allow_unused=True)
    return e, g


def _traced(fn, x):
    """The same under ``torch.compile``: ``torch.func.grad`` with the energies as auxiliary output."""

    def total(xx):
        e = fn(xx)
        return e.sum(), e

    g, e = torch.func.grad(total, has_aux=True)(x.detach())
    return e, g
