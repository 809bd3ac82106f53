"""Leaves that wrap a user's function: :class:`EnergyFunction`, :class:`ScoreFunction`, :func:`as_energy`.

A leaf evaluates itself (see :class:`~ebmcompose.energy.Energy`); the wrapped function takes
``x`` ``(B, *event)`` and, if its signature has a second parameter, ``t`` ``(B,)``. A second
parameter with a default (``fn(x, t=None)``) makes ``t`` optional: the leaf is static unless a
``t`` is given, and ``fn(x)`` is called without one.
Conversions (``.to``, ``.double``, ...) of a leaf are ``nn.Module``'s: a wrapped ``nn.Module``
is converted in place (plain functions have nothing to convert).
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .energy import Energy, ScoreOnlyError
from .errors import InputTypeError

__all__ = ["EnergyFunction", "ScoreFunction", "as_energy"]

def _accepts_t(fn: Callable) -> bool:
    """Whether ``fn`` takes a second positional argument ``t``.

    A second positional parameter counts when it is required or is named ``t``: ``fn(x, t)``
    and ``fn(x, t=None)`` take ``t``; ``fn(x, radius=2.0)`` is a static energy with an option.
    """
    return _t_parameter(fn)[0]


def _t_parameter(fn: Callable):
    """``(takes_t, optional)``: whether ``fn`` takes ``t`` (see :func:`_accepts_t`) and whether it has a default."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins: assume fn(x)
        return False, False
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if len(positional) < 2:
        return has_varargs, False
    second = positional[1]
    required = second.default is inspect.Parameter.empty
    return required or second.name == "t" or has_varargs, not required


def _fn_name(fn: Callable) -> str:
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__name__", type(fn).__name__)


class _FunctionLeaf(Energy):
    """A leaf wrapping a user function ``fn(x)`` or ``fn(x, t)`` (see the two subclasses)."""

    _expects = "fn(x) or fn(x, t)"

    def __init__(
        self,
        fn: Callable,
        name: Optional[str] = None,
        event_shape: Optional[Sequence[int]] = None,
        time_dependent: Optional[bool] = None,
    ):
        super().__init__()
        if not callable(fn):
            raise InputTypeError(f"{type(self).__name__} needs a callable {self._expects}, got {type(fn).__name__}")
        self.fn = fn  # nn.Module fns are registered as submodules by nn.Module.__setattr__
        self._takes_t, self._optional_t = _t_parameter(fn)
        self.name = name or _fn_name(fn)
        self.event_shape = tuple(event_shape) if event_shape is not None else None
        if time_dependent is None:  # a required t: time-dependent; an optional one: read when given
            self.time_dependent = self._takes_t and not self._optional_t
            self._reads_t = self._takes_t
        else:
            self.time_dependent = self._reads_t = bool(time_dependent)

    def _call(self, x, t):
        if not self._takes_t or (t is None and self._optional_t):
            return self.fn(x)
        return self.fn(x, t)


class EnergyFunction(_FunctionLeaf):
    """An energy given by a function ``fn(x) -> (B,)`` or ``fn(x, t) -> (B,)``.

    The gradient is taken by autograd. ``fn`` may be an ``nn.Module`` (its parameters are
    registered, so ``.to(device)`` and optimisers see them).

    Parameters
    ----------
    fn : callable
        ``fn(x)`` or ``fn(x, t)`` with ``x`` ``(B, *event)`` and ``t`` ``(B,)``, returning a
        floating tensor of energies ``(B,)`` computed with torch operations on ``x`` (a detached
        computation raises :class:`~ebmcompose.errors.DetachedEnergyError`). A function of ``x``
        alone is static: ``t`` is ignored. ``fn(x, t=None)`` makes ``t`` optional: ``fn(x)`` is
        called when no ``t`` is given.
    name : str, optional
        Name used when printing formulas (default: the function's name).
    event_shape : tuple of int, optional
        Expected event shape, checked on input (e.g. ``(2,)``).
    time_dependent : bool, optional
        Whether ``fn`` needs ``t`` (default: whether it takes a second argument without a default).

    Examples
    --------
    >>> ring = ec.EnergyFunction(lambda x: (x.norm(dim=-1) - 2.0) ** 2 / 0.1, name="ring")
    """

    def _energy(self, x, t):
        return self._call(x, t)


class ScoreFunction(_FunctionLeaf):
    """A score-only model ``fn(x, t) -> ∇x log p_t(x)`` (``has_energy`` is ``False``).

    Composes with ``+``, ``-`` and weights; samplers that need energy values (MALA, HMC) and
    mixtures raise :class:`ScoreOnlyError` naming the fix.

    Parameters
    ----------
    fn : callable
        ``fn(x)`` or ``fn(x, t)`` returning the score, shaped like ``x``. It runs under
        ``torch.no_grad()`` (unless a gradient with ``create_graph=True`` is asked for), so a
        score function that differentiates internally wraps that part in ``torch.enable_grad()``.
    name, event_shape, time_dependent
        As for :class:`EnergyFunction`.
    """

    has_energy = False
    _expects = "fn(x, t) returning the score"

    def _energy(self, x, t):
        raise ScoreOnlyError.for_energy(self)

    def _grad(self, x, t, create_graph=False):
        with torch.enable_grad() if create_graph else torch.no_grad():
            s = self._call(x, t)
        return -s

    def _energy_and_grad(self, x, t, create_graph=False):
        raise ScoreOnlyError.for_energy(self)


def as_energy(obj, name: Optional[str] = None) -> Energy:
    """Return ``obj`` if it is an :class:`Energy`, else wrap a callable as :class:`EnergyFunction`."""
    if isinstance(obj, Energy):
        return obj
    if callable(obj):
        return EnergyFunction(obj, name=name)
    raise InputTypeError(f"expected an ebmcompose.Energy or a callable energy fn(x), got {type(obj).__name__}")
