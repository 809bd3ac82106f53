"""Checks of what a leaf returned: floating tensors of the right shape, and gradients autograd can see.

Called by :mod:`ebmcompose.energy` on every leaf evaluation; each raises an
:class:`~ebmcompose.InputError` that names the leaf and the fix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import DetachedEnergyError, InputError, InputTypeError

__all__ = ["check_energy_output", "check_grad_output", "check_constant_in_x"]


def check_energy_output(leaf, e, x):
    """A leaf's energies must be a floating ``(B,)`` tensor (not a number, an array or integers)."""
    if not isinstance(e, Tensor):
        raise InputTypeError(
            f"{leaf.label} returned a {type(e).__name__}, not a torch.Tensor: an energy function must "
            f"return a floating tensor of shape ({x.shape[0]},), one energy per sample, computed from x "
            "with torch operations so that its gradient exists, e.g. (x ** 2).sum(-1) / 2"
        )
    if not e.is_floating_point():
        raise InputTypeError(
            f"{leaf.label} returned energies of dtype {e.dtype}: energies must be floating point and "
            "computed from x with torch operations (an integer energy has no gradient)"
        )
    if e.shape != x.shape[:1]:
        raise InputError(
            f"{leaf.label} returned energies of shape {tuple(e.shape)}; expected ({x.shape[0]},): "
            "one energy per sample (sum over the event dimensions)"
        )


def check_grad_output(leaf, g, x):
    """A leaf's gradient/score must be a floating tensor shaped like ``x``."""
    if not isinstance(g, Tensor) or not g.is_floating_point():
        what = type(g).__name__ if not isinstance(g, Tensor) else f"a tensor of dtype {g.dtype}"
        raise InputTypeError(
            f"{leaf.label} returned {what} as its gradient/score: return a floating torch.Tensor "
            f"shaped like x, {tuple(x.shape)}"
        )
    if g.shape != x.shape:
        raise InputError(
            f"{leaf.label} returned a gradient/score of shape {tuple(g.shape)}; expected the "
            f"shape of x, {tuple(x.shape)}"
        )


def check_constant_in_x(leaf, e, x, t):
    """Raise :class:`DetachedEnergyError` when energies without an autograd path from ``x`` still change with ``x``.

    Called only when autograd found no path (a constant energy, or a detached computation): the
    energy is evaluated once more at moved points, and any change means its gradient is not zero.
    """
    try:
        with torch.no_grad():
            moved = leaf._energy(x.detach() * 1.5 + 0.25, t)
    except Exception:  # undefined at the moved points: nothing to conclude, keep the zero gradient
        return
    if not isinstance(moved, Tensor) or moved.shape != e.shape:
        return
    e = e.detach()
    both = torch.isfinite(e) & torch.isfinite(moved)
    if bool((both & (moved != e)).any()):
        raise DetachedEnergyError(
            f"{leaf.label} returned energies that change with x but have no gradient with respect to x "
            "(the output does not require grad although x does), so every gradient would silently be "
            "zero. The energy was computed outside autograd: .detach(), .numpy()/.item()/.tolist(), "
            "torch.no_grad(), or another library. Compute it with torch operations on x itself; for a "
            "gradient you compute yourself, subclass ec.Energy and implement _grad/_energy_and_grad, or "
            "wrap the score in ec.ScoreFunction"
        )
