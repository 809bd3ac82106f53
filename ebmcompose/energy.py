"""Energies as energy-gradient objects, and the algebra that composes them.

An :class:`Energy` is an unnormalised negative log-density ``E(x, t)`` (``p_t(x) ∝ exp(-E)``)
together with its gradient ``∇x E``; ``score = -grad``. Leaves wrap something concrete (a Python
function, an ``nn.Module``, a closed-form density, an ε-network); algebra nodes combine leaves:

=====================  ==========================================  ==========================
expression             energy                                      density
=====================  ==========================================  ==========================
``a + b``, ``a & b``   ``E_a + E_b``                               product (AND)
``w * a``              ``w E_a``                                   temperature ``1/w``
``a - b``, ``-a``      ``E_a - E_b``                               division (NOT)
``a | b``              ``-logsumexp(-E_a, -E_b)``                  unnormalised mixture (OR)
=====================  ==========================================  ==========================

Evaluation is two-phase so that a leaf appearing several times in one expression (the
unconditional term of AND/NOT) is evaluated once per call, and so that leaves that share one
network can be evaluated in one batched forward (see :class:`LeafGroup`):

1. ``node._collect(need, plan)`` walks the tree and records, for every leaf, what it must
   provide (energy, gradient or both);
2. every leaf in the plan is evaluated exactly once (grouped leaves jointly);
3. ``node._combine(results, need)`` assembles the expression's energy and gradient.

Shapes: ``x`` is ``(B, *event)``, energies are ``(B,)``, gradients are like ``x``; ``t`` is
``None`` (a static energy), a float, or a tensor broadcastable to ``(B,)`` with values in
``[0, 1]`` (0 = data, 1 = noise).
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import InputError

__all__ = [
    "Energy",
    "EnergyFunction",
    "ScoreFunction",
    "Sum",
    "Mixture",
    "Evaluation",
    "LeafGroup",
    "ScoreOnlyError",
    "conjunction",
    "negation",
    "mixture",
    "as_energy",
]

TimeLike = Union[None, float, int, Tensor]

# What a node must provide. Bit flags: ENERGY | GRAD == BOTH.
ENERGY = 1
GRAD = 2
BOTH = ENERGY | GRAD


class ScoreOnlyError(InputError, TypeError):
    """Raised when an energy value is requested from a score-only model."""

    @classmethod
    def for_energy(cls, energy: "Energy", needed_by: Optional[str] = None) -> "ScoreOnlyError":
        """The error for ``energy`` (naming its score-only leaves and the fix); ``needed_by`` names who asked."""
        only = [leaf.label for leaf in energy.leaves() if not leaf.has_energy]
        who = f"{needed_by} needs energy values, but " if needed_by else ""
        return cls(
            f"{who}{', '.join(only) or energy.label} provides scores only, so energy values are not "
            "available: use a score-based sampler (ULA, AnnealedLangevin, ReverseDiffusion, "
            "PredictorCorrector with a ULA corrector) or an energy-parameterised model; "
            "Metropolis corrections (MALA, HMC) and mixtures (a | b) need energies"
        )


@dataclass(frozen=True)
class Evaluation:
    """Result of :meth:`Energy.evaluate`.

    Attributes
    ----------
    energy : Tensor or None
        ``(B,)`` energies, or ``None`` if not requested.
    grad : Tensor or None
        ``∇x E`` with the shape of ``x``, or ``None`` if not requested.
    nfe : int
        Number of function evaluations this call cost: one per leaf evaluation, one per
        batched forward for grouped leaves (network forwards for learned models).
    """

    energy: Optional[Tensor]
    grad: Optional[Tensor]
    nfe: int


class LeafGroup:
    """Protocol for leaves that can be evaluated together in one batched call.

    A leaf whose :meth:`Energy.leaf_group` returns a ``LeafGroup`` is evaluated jointly with
    the other leaves of the same group (compared by ``==``/``hash``) in one call of
    :meth:`evaluate_leaves`. Used by learned models to run all conditions of one network in a
    single forward pass.
    """

    def evaluate_leaves(
        self,
        leaves: Sequence["Energy"],
        needs: Sequence[int],
        x: Tensor,
        t: Optional[Tensor],
        create_graph: bool,
    ) -> Tuple[List[Tuple[Optional[Tensor], Optional[Tensor]]], int]:
        """Evaluate ``leaves`` at ``(x, t)``; return ``[(energy, grad), ...]`` and the NFE."""
        raise NotImplementedError


def _is_energy(obj) -> bool:
    return isinstance(obj, Energy)


def _as_weight(w) -> float:
    if isinstance(w, Tensor):
        if w.numel() != 1:
            raise TypeError(
                f"an energy can be scaled by a scalar only, got a tensor of shape {tuple(w.shape)}; "
                "to weight individual samples, compose energies first and weight the result"
            )
        w = w.item()
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise TypeError(
            f"an energy can be scaled by a number only, got {type(w).__name__}; "
            "weights are real numbers (e.g. 0.5 * a), and energies combine with a + b, a - b, a | b"
        )
    w = float(w)
    if not math.isfinite(w):
        raise ValueError(f"energy weight must be finite, got {w}")
    return w


def _format_weight(w: float) -> str:
    # 15 significant digits: short for the weights people type (0.5, 2, 7.5) and faithful to
    # float64 precision otherwise, so a printed formula evaluates to the same energy.
    return f"{w:.15g}"


class Energy(nn.Module):
    """Base class: an unnormalised negative log-density ``E(x, t)`` and its gradient.

    Subclass and implement :meth:`_energy` (the gradient then comes from autograd), and
    optionally :meth:`_grad` / :meth:`_energy_and_grad` with closed forms. Score-only models set
    ``has_energy = False`` and implement :meth:`_grad` only.

    Parameters are ordinary ``nn.Module`` parameters/buffers, so ``.to(device)`` moves them.

    Notes
    -----
    Gradients are returned detached unless ``create_graph=True`` is passed, in which case they
    are differentiable with respect to the model's parameters (for training through the score,
    e.g. denoising score matching of an energy-parameterised model).
    """

    #: Whether :meth:`energy` is available (``False`` for score-only models).
    has_energy: bool = True
    #: Whether the energy depends on ``t``; time-dependent energies require ``t``.
    time_dependent: bool = False
    #: Event shape the energy expects (e.g. ``(2,)``), or ``None`` if any shape is fine.
    event_shape: Optional[Tuple[int, ...]] = None
    #: Leaves evaluate themselves; algebra nodes (``Sum``, ``Mixture``) set this to ``False``.
    _is_leaf = True

    # ----------------------------------------------------------------- leaf hooks (override)
    def _energy(self, x: Tensor, t: Optional[Tensor]) -> Tensor:
        """Energies ``(B,)`` at ``x`` ``(B, *event)``; ``t`` is ``None`` or ``(B,)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _energy(x, t)")

    def _grad(self, x: Tensor, t: Optional[Tensor], create_graph: bool = False) -> Tensor:
        """``∇x E`` like ``x``. Default: autograd through :meth:`_energy`."""
        return self._energy_and_grad(x, t, create_graph)[1]

    def _energy_and_grad(
        self, x: Tensor, t: Optional[Tensor], create_graph: bool = False
    ) -> Tuple[Tensor, Tensor]:
        """Energies and gradients in one pass. Default: autograd through :meth:`_energy`."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            e = self._energy(xg, t)
            if e.shape != x.shape[:1]:
                raise ValueError(
                    f"{self._label()} returned energies of shape {tuple(e.shape)}; expected "
                    f"({x.shape[0]},): one energy per sample, summed over event dimensions"
                )
            if e.requires_grad:
                (g,) = torch.autograd.grad(e.sum(), xg, create_graph=create_graph, allow_unused=True)
            else:
                g = None
            if g is None:  # the energy does not depend on x (e.g. a flat prior): zero gradient
                g = torch.zeros_like(x)
        if not create_graph:
            e, g = e.detach(), g.detach()
        return e, g

    def leaf_group(self) -> Optional[LeafGroup]:
        """The group this leaf is evaluated jointly with, or ``None`` (evaluated alone)."""
        return None

    # ----------------------------------------------------------------- tree protocol
    def leaves(self) -> Iterator["Energy"]:
        """Iterate over the distinct leaves of the expression (a leaf yields itself)."""
        seen = set()
        for leaf in self._iter_leaves():
            if id(leaf) not in seen:
                seen.add(id(leaf))
                yield leaf

    def _iter_leaves(self) -> Iterator["Energy"]:
        yield self

    def _collect(self, need: int, plan: Dict[int, List]) -> None:
        entry = plan.get(id(self))
        if entry is None:
            plan[id(self)] = [self, need]
        else:
            entry[1] |= need

    def _combine(self, results: Dict[int, Tuple[Optional[Tensor], Optional[Tensor]]], need: int):
        return results[id(self)]

    def _needs_energy_for(self, need: int) -> bool:
        """Whether computing ``need`` requires leaf energies (true for mixtures)."""
        return bool(need & ENERGY)

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self,
        x: Tensor,
        t: TimeLike = None,
        *,
        energy: bool = True,
        grad: bool = True,
        create_graph: bool = False,
        validate: bool = True,
    ) -> Evaluation:
        """Evaluate the energy and/or gradient at ``x`` in one pass.

        Parameters
        ----------
        x : Tensor
            ``(B, *event)`` points.
        t : float, Tensor or None
            Diffusion time in ``[0, 1]``, scalar or ``(B,)``; ``None`` for a static energy.
        energy, grad : bool
            What to compute.
        create_graph : bool
            Keep the gradient differentiable (for training through the score).
        validate : bool
            Check ``x`` and ``t`` (shape, finiteness, device). Samplers validate once and pass
            ``False`` in their inner loop to avoid a device synchronisation per step.

        Returns
        -------
        Evaluation
            ``energy`` ``(B,)``, ``grad`` like ``x``, and the NFE the call cost.
        """
        need = (ENERGY if energy else 0) | (GRAD if grad else 0)
        if need == 0:
            raise ValueError("evaluate() needs energy=True or grad=True")
        if need & ENERGY and not self.has_energy:
            raise ScoreOnlyError(self._score_only_message())
        if validate:
            t = self._validate(x, t)
        else:
            t = _normalise_t(t, x)
        return Evaluation(*self._evaluate_prepared(x, t, need, create_graph))

    def _evaluate_prepared(self, x: Tensor, t: Optional[Tensor], need: int, create_graph: bool = False):
        """:meth:`evaluate` after its checks: ``t`` is already ``None`` or ``(B,)`` on ``x``'s device.

        Returns ``(energy or None, grad or None, nfe)`` for ``need`` (``ENERGY | GRAD`` bits).
        Samplers call this in their inner loops with a ``t`` they normalised once.
        """
        if self._is_leaf and self.leaf_group() is None:
            # a lone ungrouped leaf: the plan would hold just this leaf, evaluated once
            e, g = _evaluate_leaf(self, need, x, t, create_graph)
            nfe = 1
        else:
            plan: Dict[int, List] = {}
            self._collect(need, plan)
            results, nfe = _evaluate_plan(plan, x, t, create_graph)
            e, g = self._combine(results, need)
        return (e if need & ENERGY else None), (g if need & GRAD else None), nfe

    def energy(self, x: Tensor, t: TimeLike = None) -> Tensor:
        """Unnormalised negative log-density ``E(x, t)``.

        Parameters
        ----------
        x : Tensor
            ``(B, *event)``.
        t : float, Tensor or None
            Diffusion time in ``[0, 1]`` (scalar or ``(B,)``), ``None`` for a static energy.

        Returns
        -------
        Tensor
            ``(B,)``. Differentiable with respect to parameters when grad mode is on.

        Raises
        ------
        ScoreOnlyError
            If the model provides scores only (``has_energy`` is ``False``).
        """
        if not self.has_energy:
            raise ScoreOnlyError(self._score_only_message())
        t = self._validate(x, t)
        plan: Dict[int, List] = {}
        self._collect(ENERGY, plan)
        results, _ = _evaluate_plan(plan, x, t, create_graph=False, energy_only=True)
        return self._combine(results, ENERGY)[0]

    def grad(self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False) -> Tensor:
        """``∇x E(x, t)``, shaped like ``x`` ``(B, *event)``."""
        return self.evaluate(x, t, energy=False, grad=True, create_graph=create_graph).grad

    def score(self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False) -> Tensor:
        """``∇x log p_t(x) = -∇x E(x, t)``, shaped like ``x`` ``(B, *event)``."""
        return -self.grad(x, t, create_graph=create_graph)

    def energy_and_grad(
        self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False
    ) -> Tuple[Tensor, Tensor]:
        """``(E(x, t), ∇x E(x, t))`` in one pass: ``(B,)`` and like ``x``."""
        ev = self.evaluate(x, t, energy=True, grad=True, create_graph=create_graph)
        return ev.energy, ev.grad

    def forward(self, x: Tensor, t: TimeLike = None) -> Tensor:
        """Same as :meth:`energy`."""
        return self.energy(x, t)

    # ----------------------------------------------------------------- validation
    def check_input(self, x: Tensor, t: TimeLike = None) -> Optional[Tensor]:
        """Validate ``x`` ``(B, *event)`` and ``t`` for this energy; return ``t`` as ``(B,)`` (or ``None``).

        Raises :class:`~ebmcompose.InputError` (or ``TypeError``) naming the problem and the fix:
        wrong type, shape or device, NaN/inf in ``x``, a missing or out-of-range ``t``.
        Samplers call it once on their start points and then evaluate with ``validate=False``.
        """
        return self._validate(x, t)

    def _validate(self, x: Tensor, t: TimeLike) -> Optional[Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(
                f"x must be a torch.Tensor of shape (B, *event), got {type(x).__name__}; "
                "convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        if x.dim() < 1:
            raise InputError("x must have a batch dimension: shape (B, *event), got a scalar")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; use x.float()")
        for leaf in self.leaves():
            shape = leaf.event_shape
            if shape is not None and tuple(x.shape[1:]) != tuple(shape):
                raise InputError(
                    f"{leaf._label()} expects points of shape (B, {', '.join(map(str, shape))}), "
                    f"got x of shape {tuple(x.shape)}"
                )
            dev = _module_device(leaf)
            if dev is not None and dev != x.device:
                raise InputError(
                    f"x is on {x.device} but {leaf._label()} lives on {dev}; move one of them, "
                    f"e.g. energy.to({str(x.device)!r}) or x.to({str(dev)!r})"
                )
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten()
            raise InputError(
                f"x contains NaN or inf in {bad.numel()} of {x.shape[0]} samples "
                f"(first at index {int(bad[0])}); check the sampler's step size or the input data"
            )
        if t is None:
            if any(leaf.time_dependent for leaf in self.leaves()):
                names = ", ".join(l._label() for l in self.leaves() if l.time_dependent)
                raise InputError(
                    f"this energy depends on diffusion time ({names}); pass t in [0, 1] "
                    "(0 = data, 1 = noise), e.g. energy.energy(x, t=0.0)"
                )
            return None
        if isinstance(t, Tensor) and t.device != x.device and t.numel() > 1:
            raise InputError(f"t is on {t.device} but x is on {x.device}; use t.to(x.device)")
        tt = _normalise_t(t, x)
        if not bool(torch.isfinite(tt).all()) or bool((tt < 0).any()) or bool((tt > 1).any()):
            raise InputError("t must be finite and in [0, 1] (0 = data, 1 = noise)")
        return tt

    # ----------------------------------------------------------------- algebra
    def __add__(self, other):
        if not _is_energy(other):
            return NotImplemented
        return Sum.of([(1.0, self), (1.0, other)])

    __and__ = __add__

    def __sub__(self, other):
        if not _is_energy(other):
            return NotImplemented
        return Sum.of([(1.0, self), (-1.0, other)])

    def __neg__(self):
        return Sum.of([(-1.0, self)])

    def __mul__(self, w):
        if _is_energy(w):
            raise TypeError(
                "energies multiply as densities by adding them: use a + b (or a & b) for the "
                "product of densities; w * a with a number w sets a weight/temperature"
            )
        # Raise (rather than return NotImplemented) so the user sees what a weight must be,
        # instead of Python's generic "unsupported operand" or "can't multiply sequence".
        w = _as_weight(w)
        return Sum.of([(w, self)])

    __rmul__ = __mul__

    def __truediv__(self, w):
        if _is_energy(w):
            raise TypeError("to divide densities use a - b (energies subtract)")
        w = _as_weight(w)
        if w == 0:
            raise ZeroDivisionError("cannot divide an energy by zero (infinite temperature)")
        return Sum.of([(1.0 / w, self)])

    def __or__(self, other):
        if not _is_energy(other):
            return NotImplemented
        return Mixture.of([self, other])

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented

    # ----------------------------------------------------------------- printing
    @property
    def label(self) -> str:
        """The name printed in formulas and error messages (``name`` if set, else the class name)."""
        name = getattr(self, "name", None)
        return name if name else type(self).__name__

    def _label(self) -> str:
        return self.label

    def _formula(self) -> str:
        return self._label()

    def _precedence(self) -> int:
        return 3  # atoms bind tightest

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return self._formula()

    def _score_only_message(self) -> str:
        return str(ScoreOnlyError.for_energy(self))

    # nn.Module defines __hash__/__eq__ by identity, which is what the cache relies on.


def _module_device(module: nn.Module) -> Optional[torch.device]:
    for p in module.parameters(recurse=True):
        return p.device
    for b in module.buffers(recurse=True):
        return b.device
    return None


def _normalise_t(t: TimeLike, x: Tensor) -> Optional[Tensor]:
    """``t`` as a ``(B,)`` tensor on ``x``'s device and dtype, or ``None``."""
    if t is None:
        return None
    b = x.shape[0]
    if isinstance(t, Tensor):
        t = t.to(device=x.device, dtype=x.dtype)
        if t.dim() == 0:
            return t.expand(b)
        t = t.reshape(-1)
        if t.shape[0] == 1:
            return t.expand(b)
        if t.shape[0] != b:
            raise InputError(f"t has {t.shape[0]} entries but x has batch size {b}; pass a scalar or (B,)")
        return t
    return torch.full((b,), float(t), device=x.device, dtype=x.dtype)


def _evaluate_plan(plan, x, t, create_graph, energy_only=False):
    """Evaluate every leaf of ``plan`` once; grouped leaves in one call per group."""
    results: Dict[int, Tuple[Optional[Tensor], Optional[Tensor]]] = {}
    groups: Dict[LeafGroup, List] = {}
    nfe = 0
    for key, (leaf, need) in plan.items():
        group = leaf.leaf_group()
        if group is not None:
            groups.setdefault(group, []).append((leaf, need))
            continue
        results[key] = _evaluate_leaf(leaf, need, x, t, create_graph, energy_only)
        nfe += 1
    for group, members in groups.items():
        outs, n = group.evaluate_leaves(
            [m[0] for m in members], [m[1] for m in members], x, t, create_graph
        )
        for (leaf, _), out in zip(members, outs):
            results[id(leaf)] = out
        nfe += n
    return results, nfe


def _evaluate_leaf(leaf, need, x, t, create_graph, energy_only=False):
    if need == ENERGY:
        if energy_only:
            # Plain energy call: keep the graph to the parameters (for training an energy).
            e = leaf._energy(x, t)
        else:
            with torch.no_grad() if not create_graph else _nullcontext():
                e = leaf._energy(x, t)
        _check_energy_shape(leaf, e, x)
        return e, None
    if need == GRAD:
        g = leaf._grad(x, t, create_graph)
        _check_grad_shape(leaf, g, x)
        return None, g
    e, g = leaf._energy_and_grad(x, t, create_graph)
    _check_energy_shape(leaf, e, x)
    _check_grad_shape(leaf, g, x)
    return e, g


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _check_energy_shape(leaf, e, x):
    if e.shape != x.shape[:1]:
        raise ValueError(
            f"{leaf._label()} returned energies of shape {tuple(e.shape)}; expected ({x.shape[0]},): "
            "one energy per sample (sum over the event dimensions)"
        )


def _check_grad_shape(leaf, g, x):
    if g.shape != x.shape:
        raise ValueError(
            f"{leaf._label()} returned a gradient/score of shape {tuple(g.shape)}; expected the "
            f"shape of x, {tuple(x.shape)}"
        )


# --------------------------------------------------------------------------------------- leaves
def _accepts_t(fn: Callable) -> bool:
    """Whether ``fn`` takes a second positional argument ``t``.

    A second positional parameter counts when it is required or is named ``t``: ``fn(x, t)``
    and ``fn(x, t=None)`` take ``t``; ``fn(x, radius=2.0)`` is a static energy with an option.
    """
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins: assume fn(x)
        return False
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if has_varargs:
        return True
    if len(positional) < 2:
        return False
    second = positional[1]
    return second.default is inspect.Parameter.empty or second.name == "t"


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
            raise TypeError(f"{type(self).__name__} needs a callable {self._expects}, got {type(fn).__name__}")
        self.fn = fn  # nn.Module fns are registered as submodules by nn.Module.__setattr__
        self._takes_t = _accepts_t(fn)
        self.name = name or _fn_name(fn)
        self.event_shape = tuple(event_shape) if event_shape is not None else None
        self.time_dependent = self._takes_t if time_dependent is None else bool(time_dependent)

    def _call(self, x, t):
        return self.fn(x, t) if self._takes_t else self.fn(x)


class EnergyFunction(_FunctionLeaf):
    """An energy given by a function ``fn(x) -> (B,)`` or ``fn(x, t) -> (B,)``.

    The gradient is taken by autograd. ``fn`` may be an ``nn.Module`` (its parameters are
    registered, so ``.to(device)`` and optimisers see them).

    Parameters
    ----------
    fn : callable
        ``fn(x)`` or ``fn(x, t)`` with ``x`` ``(B, *event)`` and ``t`` ``(B,)`` (or ``None``),
        returning energies ``(B,)``. A function of ``x`` alone is static: ``t`` is ignored.
    name : str, optional
        Name used when printing formulas (default: the function's name).
    event_shape : tuple of int, optional
        Expected event shape, checked on input (e.g. ``(2,)``).
    time_dependent : bool, optional
        Whether ``fn`` needs ``t`` (default: whether it takes a second argument).

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
        raise ScoreOnlyError(self._score_only_message())

    def _grad(self, x, t, create_graph=False):
        with torch.enable_grad() if create_graph else torch.no_grad():
            s = self._call(x, t)
        return -s

    def _energy_and_grad(self, x, t, create_graph=False):
        raise ScoreOnlyError(self._score_only_message())


def as_energy(obj, name: Optional[str] = None) -> Energy:
    """Return ``obj`` if it is an :class:`Energy`, else wrap a callable as :class:`EnergyFunction`."""
    if isinstance(obj, Energy):
        return obj
    if callable(obj):
        return EnergyFunction(obj, name=name)
    raise TypeError(f"expected an ebmcompose.Energy or a callable energy fn(x), got {type(obj).__name__}")


# --------------------------------------------------------------------------------- algebra nodes
class Sum(Energy):
    """Weighted sum of energies ``Σ_i w_i E_i`` (product of tempered densities).

    Built by ``a + b``, ``a & b``, ``a - b``, ``-a`` and ``w * a``; ``Sum.of`` flattens nested
    sums so ``a + b + c`` is one node. Immutable: the algebra returns new nodes.
    """

    _is_leaf = False

    def __init__(self, terms: Sequence[Tuple[float, Energy]]):
        super().__init__()
        if len(terms) == 0:
            raise ValueError("a sum of energies needs at least one term")
        weights = []
        for w, e in terms:
            if not _is_energy(e):
                raise TypeError(f"terms of a Sum must be Energy objects, got {type(e).__name__}")
            weights.append(_as_weight(w))
        self.weights: Tuple[float, ...] = tuple(weights)
        self.terms = nn.ModuleList([e for _, e in terms])

    @staticmethod
    def of(terms: Sequence[Tuple[float, Energy]]) -> "Sum":
        """Build a sum, flattening child sums that appear with weight 1 and folding the weight
        of single-term sums, so formulas print the way they were written."""
        flat: List[Tuple[float, Energy]] = []
        for w, e in terms:
            w = _as_weight(w)
            if isinstance(e, Sum) and len(e.terms) == 1:
                flat.append((w * e.weights[0], e.terms[0]))
            elif isinstance(e, Sum) and w == 1.0:
                flat.extend(zip(e.weights, e.terms))
            else:
                flat.append((w, e))
        return Sum(flat)

    @property
    def has_energy(self) -> bool:  # type: ignore[override]
        return all(e.has_energy for e in self.terms)

    @property
    def time_dependent(self) -> bool:  # type: ignore[override]
        return any(e.time_dependent for e in self.terms)

    def _iter_leaves(self):
        for e in self.terms:
            yield from e._iter_leaves()

    def _collect(self, need, plan):
        for e in self.terms:
            e._collect(need, plan)

    def _combine(self, results, need):
        energy = grad = None
        for w, e in zip(self.weights, self.terms):
            ce, cg = e._combine(results, need)
            if need & ENERGY:
                term = ce if w == 1.0 else w * ce
                energy = term if energy is None else energy + term
            if need & GRAD:
                term = cg if w == 1.0 else w * cg
                grad = term if grad is None else grad + term
        return energy, grad

    def _precedence(self):
        return 1 if len(self.terms) > 1 or self.weights[0] < 0 else 2

    def _formula(self):
        parts = []
        for i, (w, e) in enumerate(zip(self.weights, self.terms)):
            inner = e._formula()
            if e._precedence() < 3 and (abs(w) != 1.0 or e._precedence() < 2 or w < 0):
                inner = f"({inner})"
            mag = abs(w)
            body = inner if mag == 1.0 else f"{_format_weight(mag)}*{inner}"
            if i == 0:
                parts.append(("-" if w < 0 else "") + body)
            else:
                parts.append((" - " if w < 0 else " + ") + body)
        return "".join(parts)


class Mixture(Energy):
    """Unnormalised mixture ``-logsumexp_i(-E_i + log w_i)`` (OR).

    Built by ``a | b`` (equal weights, so each component enters with its own normalising
    constant, as in Du et al. 2023) or :func:`mixture` with explicit weights. The gradient is
    the posterior-weighted average of the components' gradients, so every component must
    provide energies.
    """

    _is_leaf = False

    def __init__(self, components: Sequence[Energy], log_weights: Optional[Sequence[float]] = None):
        super().__init__()
        if len(components) < 1:
            raise ValueError("a mixture needs at least one component")
        for e in components:
            if not _is_energy(e):
                raise TypeError(f"mixture components must be Energy objects, got {type(e).__name__}")
            if not e.has_energy:
                raise ScoreOnlyError(
                    f"a mixture (a | b) needs the energy of every component, but {e._label()} "
                    "provides scores only: the mixture's score weights each component's score by "
                    "its posterior exp(-E_i)/Σ exp(-E_j). Use an energy-parameterised model or an "
                    "analytic energy for each component"
                )
        if log_weights is None:
            log_weights = [0.0] * len(components)
        if len(log_weights) != len(components):
            raise ValueError(f"{len(log_weights)} weights for {len(components)} mixture components")
        self.log_weights: Tuple[float, ...] = tuple(float(w) for w in log_weights)
        self.components = nn.ModuleList(components)

    @staticmethod
    def of(components: Sequence[Energy]) -> "Mixture":
        """Build an equal-weight mixture, flattening nested equal-weight mixtures (exact)."""
        flat: List[Energy] = []
        logw: List[float] = []
        for e in components:
            if isinstance(e, Mixture):
                flat.extend(e.components)
                logw.extend(e.log_weights)
            else:
                flat.append(e)
                logw.append(0.0)
        return Mixture(flat, logw)

    @property
    def time_dependent(self) -> bool:  # type: ignore[override]
        return any(e.time_dependent for e in self.components)

    def _iter_leaves(self):
        for e in self.components:
            yield from e._iter_leaves()

    def _collect(self, need, plan):
        child_need = ENERGY | (need & GRAD)
        for e in self.components:
            e._collect(child_need, plan)

    def _combine(self, results, need):
        child_need = ENERGY | (need & GRAD)
        outs = [e._combine(results, child_need) for e in self.components]
        energies = torch.stack([o[0] for o in outs], dim=0)  # (K, B)
        logw = torch.tensor(self.log_weights, dtype=energies.dtype, device=energies.device)
        logits = -energies + logw[:, None]
        energy = -torch.logsumexp(logits, dim=0)
        grad = None
        if need & GRAD:
            post = torch.softmax(logits, dim=0)  # (K, B) posterior responsibilities
            grad = None
            for k, o in enumerate(outs):
                p = post[k].reshape((-1,) + (1,) * (o[1].dim() - 1))
                grad = p * o[1] if grad is None else grad + p * o[1]
        return energy, grad

    def _precedence(self):
        return 0

    def _formula(self):
        parts = []
        for lw, e in zip(self.log_weights, self.components):
            inner = e._formula()
            if e._precedence() < 1:
                inner = f"({inner})"
            if lw != 0.0:
                inner = f"{_format_weight(math.exp(lw))}:{inner}"
            parts.append(inner)
        return " | ".join(parts)


# ------------------------------------------------------------------------ the papers' operators
def _weights_for(weight, n: int, what: str) -> List[float]:
    if isinstance(weight, (list, tuple)):
        if len(weight) != n:
            raise ValueError(f"{len(weight)} {what} weights for {n} concepts; give one per concept or a scalar")
        return [_as_weight(w) for w in weight]
    return [_as_weight(weight)] * n


def _as_list(concepts, what: str) -> List[Energy]:
    if _is_energy(concepts):
        return [concepts]
    concepts = list(concepts)
    if not concepts:
        raise ValueError(f"{what} needs at least one concept energy")
    for c in concepts:
        if not _is_energy(c):
            raise TypeError(f"{what} concepts must be Energy objects, got {type(c).__name__}")
    return concepts


def conjunction(base: Energy, concepts: Union[Energy, Iterable[Energy]], weight=1.0) -> Energy:
    """The AND of Liu et al. 2022: ``ε* = ε(x,t) + α Σ_i (ε(x,t|c_i) − ε(x,t))``.

    Since ``ε = σ_t ∇x E``, the same linear formula holds for energies:
    ``E* = E_base + α Σ_i (E_i − E_base)``. The base (unconditional) leaf is evaluated once per
    call however many concepts there are.

    Parameters
    ----------
    base : Energy
        The unconditional model ``E(x, t)``.
    concepts : Energy or iterable of Energy
        Conditional models ``E(x, t | c_i)``.
    weight : float or sequence of float
        ``α`` (guidance scale), one for all concepts or one per concept.

    Returns
    -------
    Energy
        The composed expression (prints as a formula).
    """
    concepts = _as_list(concepts, "conjunction")
    ws = _weights_for(weight, len(concepts), "conjunction")
    terms: List[Tuple[float, Energy]] = [(1.0, base)]
    for w, c in zip(ws, concepts):
        if w != 0.0:
            terms.append((w, Sum([(1.0, c), (-1.0, base)])))
    return Sum(terms)


def negation(
    base: Energy,
    concepts: Union[Energy, Iterable[Energy], None],
    negated: Union[Energy, Iterable[Energy]],
    weight=1.0,
    neg_weight=1.0,
) -> Energy:
    """The NOT of Liu et al. 2022:
    ``ε* = ε + α [ Σ_i (ε(c_i) − ε) − β (ε(c̃) − ε) ]``.

    Parameters
    ----------
    base : Energy
        Unconditional model.
    concepts : Energy, iterable of Energy, or None
        Concepts to keep (``c_i``); ``None`` or empty for pure negation.
    negated : Energy or iterable of Energy
        Concepts to negate (``c̃_j``); several are each subtracted with ``β``.
    weight : float
        ``α``, the overall guidance scale.
    neg_weight : float or sequence of float
        ``β``, the negation strength (one for all negated concepts or one each).
    """
    alpha = _as_weight(weight)
    keep = [] if concepts is None else (
        [concepts] if _is_energy(concepts) else list(concepts)
    )
    negs = _as_list(negated, "negation")
    betas = _weights_for(neg_weight, len(negs), "negation")
    inner: List[Tuple[float, Energy]] = []
    for c in keep:
        if not _is_energy(c):
            raise TypeError(f"negation concepts must be Energy objects, got {type(c).__name__}")
        inner.append((1.0, Sum([(1.0, c), (-1.0, base)])))
    for b, n in zip(betas, negs):
        inner.append((-b, Sum([(1.0, n), (-1.0, base)])))
    return Sum([(1.0, base), (alpha, Sum(inner))])


def mixture(components: Sequence[Energy], weights: Optional[Sequence[float]] = None) -> Mixture:
    """Mixture (OR) of energies with optional weights: ``-log Σ_i w_i exp(-E_i)``.

    Parameters
    ----------
    components : sequence of Energy
        Components (each must provide energies).
    weights : sequence of float, optional
        Positive weights ``w_i`` (need not sum to one); default equal.
    """
    components = list(components)
    if weights is None:
        return Mixture(components)
    if isinstance(weights, (str, bytes)) or not isinstance(weights, collections.abc.Iterable):
        raise TypeError(f"mixture weights must be a sequence of positive numbers, got {type(weights).__name__}")
    ws = []
    for w in weights:
        try:
            ws.append(_as_weight(w))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"mixture weights must be positive finite numbers: {exc}") from None
    if any(not (w > 0 and math.isfinite(w)) for w in ws):
        raise ValueError(f"mixture weights must be positive and finite, got {ws}")
    return Mixture(components, [math.log(w) for w in ws])
