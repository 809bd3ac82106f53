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

This module holds the base class and its one evaluation path; the leaves are in
:mod:`ebmcompose.leaves`, the algebra nodes in :mod:`ebmcompose.nodes` and the papers' operators
in :mod:`ebmcompose.operators` (all re-exported here).

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

import math
import numbers
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .autodiff import energy_and_grad
from .checks import as_batch_t
from .errors import InputError, InputTypeError
from .leaf_output import check_constant_in_x, check_energy_output, check_grad_output

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
            raise InputTypeError(
                f"an energy can be scaled by a scalar only, got a tensor of shape {tuple(w.shape)}; "
                "to weight individual samples, compose energies first and weight the result"
            )
        w = w.item()
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise InputTypeError(
            f"an energy can be scaled by a number only, got {type(w).__name__}; "
            "weights are real numbers (e.g. 0.5 * a), and energies combine with a + b, a - b, a | b"
        )
    w = float(w)
    if not math.isfinite(w):
        raise InputError(f"energy weight must be finite, got {w}")
    return w


def _format_weight(w: float) -> str:
    # 15 significant digits: short for typed weights, exact enough that a printed formula re-parses
    return f"{w:.15g}"


class Energy(nn.Module):
    """Base class: an unnormalised negative log-density ``E(x, t)`` and its gradient.

    Subclass and implement :meth:`_energy` (the gradient then comes from autograd), and
    optionally :meth:`_grad` / :meth:`_energy_and_grad` with closed forms. Score-only models set
    ``has_energy = False`` and implement :meth:`_grad` only.

    Parameters are ordinary ``nn.Module`` parameters/buffers. Conversions (``.to``, ``.cuda``,
    ``.cpu``, ``.double``, ``.float``, ``.half``) differ by kind:

    * on a **leaf** they are ``nn.Module``'s: the leaf (and the module it wraps, e.g. the user's
      network) is converted in place and returned, so every expression using it sees the change;
    * on an **expression** (``a + b``, ``a | b``, ...) they return a converted copy and leave the
      expression and its leaves untouched (see :class:`~ebmcompose.nodes.Node`).

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
    #: Whether the leaf reads ``t`` when given one (``None``: same as ``time_dependent``); a
    #: function ``fn(x, t=None)`` reads an optional ``t`` without requiring it.
    _reads_t: Optional[bool] = None
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
        e, g = energy_and_grad(lambda xx: self._energy(xx, t), x, create_graph)
        check_energy_output(self, e, x)
        if g is None:  # no autograd path from x: a constant energy (zero gradient), or a detached one
            check_constant_in_x(self, e, x, t)
            g = torch.zeros_like(x)
        if not create_graph:
            e, g = e.detach(), g.detach()
        return e, g

    def leaf_group(self) -> Optional[LeafGroup]:
        """The group this leaf is evaluated jointly with, or ``None`` (evaluated alone)."""
        return None

    @property
    def reads_t(self) -> bool:
        """Whether this leaf uses ``t`` when given one (time-dependent, or a function with an optional ``t``)."""
        return self.time_dependent if self._reads_t is None else bool(self._reads_t)

    @property
    def is_static(self) -> bool:
        """Whether no leaf of the expression reads ``t``: the same energy at every diffusion time.

        Diffusion samplers refuse static energies unless told ``static_ok=True``: a static energy
        is the data density at every noise level, not the noised density they step through.
        """
        return not any(leaf.reads_t for leaf in self.leaves())

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
        """Evaluate the energy and/or gradient at ``x`` in one pass: the one evaluation path.

        :meth:`energy`, :meth:`grad`, :meth:`score` and :meth:`energy_and_grad` call it.

        Parameters
        ----------
        x : Tensor
            ``(B, *event)`` points.
        t : float, Tensor or None
            Diffusion time in ``[0, 1]``, scalar or ``(B,)``; ``None`` for a static energy.
        energy, grad : bool
            What to compute.
        create_graph : bool
            Keep the results differentiable: the gradient for training through the score, the
            energy for training on energy values. Without it, results are detached and an
            energy-only call records no autograd graph.
        validate : bool
            Check ``x`` and ``t`` with :meth:`check_input`. Samplers check once and pass
            ``False`` in their loops (no device synchronisation per step); ``t`` is then only
            broadcast to ``(B,)``.

        Returns
        -------
        Evaluation
            ``energy`` ``(B,)``, ``grad`` like ``x``, and the NFE the call cost.

        Raises
        ------
        ScoreOnlyError
            If ``energy=True`` and the expression has a score-only leaf.
        InputError
            For bad ``x`` or ``t`` (with ``validate=True``; see :meth:`check_input`).
        """
        need = (ENERGY if energy else 0) | (GRAD if grad else 0)
        if need == 0:
            raise InputError("evaluate() needs energy=True or grad=True")
        if need & ENERGY and not self.has_energy:
            raise ScoreOnlyError.for_energy(self)
        t = self.check_input(x, t) if validate else as_batch_t(t, x)
        if need == ENERGY and not create_graph:
            with torch.no_grad():
                return Evaluation(*self._run(x, t, need, False))
        return Evaluation(*self._run(x, t, need, create_graph))

    def _run(self, x: Tensor, t: Optional[Tensor], need: int, create_graph: bool = False):
        """Plan, evaluate each leaf (group) once, combine; ``t`` is ``None`` or ``(B,)`` on ``x``'s device."""
        if self._is_leaf and self.leaf_group() is None:
            e, g = _evaluate_leaf(self, need, x, t, create_graph)  # the plan would be this leaf alone
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
        return self.evaluate(x, t, energy=True, grad=False, create_graph=torch.is_grad_enabled()).energy

    def grad(self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False) -> Tensor:
        """``∇x E(x, t)``, shaped like ``x`` ``(B, *event)``."""
        return self.evaluate(x, t, energy=False, grad=True, create_graph=create_graph).grad

    def score(self, x: Tensor, t: TimeLike = None, *, create_graph: bool = False) -> Tensor:
        """``∇x log p_t(x) = -∇x E(x, t)``, shaped like ``x`` ``(B, *event)``."""
        return -self.evaluate(x, t, energy=False, grad=True, create_graph=create_graph).grad

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

        Raises :class:`~ebmcompose.InputError` naming the problem and the fix: wrong shape or
        device, NaN/inf in ``x``, a missing or out-of-range ``t``, a ``t`` of the wrong size
        (:class:`~ebmcompose.errors.InputTypeError`, also a ``TypeError``, for a wrong type).
        Samplers call it once on their start points and then evaluate with ``validate=False``.
        """
        if not isinstance(x, Tensor):
            raise InputTypeError(
                f"x must be a torch.Tensor of shape (B, *event), got {type(x).__name__}; "
                "convert with torch.as_tensor(x, dtype=torch.float32)"
            )
        if x.dim() < 1:
            raise InputError("x must have a batch dimension: shape (B, *event), got a scalar")
        if x.shape[0] == 0:
            raise InputError(
                f"x is an empty batch (shape {tuple(x.shape)}): pass at least one point, shape (B, *event) with B >= 1"
            )
        if not x.is_floating_point():
            raise InputTypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; use x.float()")
        for leaf in self.leaves():
            shape = leaf.event_shape
            if shape is not None and tuple(x.shape[1:]) != tuple(shape):
                raise InputError(
                    f"{leaf.label} expects points of shape (B, {', '.join(map(str, shape))}), "
                    f"got x of shape {tuple(x.shape)}"
                )
            dev = _module_device(leaf)
            if dev is not None and dev != x.device:
                raise InputError(
                    f"x is on {x.device} but {leaf.label} lives on {dev}; move one of them, "
                    f"e.g. energy = energy.to({str(x.device)!r}) or x.to({str(dev)!r})"
                )
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten()
            raise InputError(
                f"x contains NaN or inf in {bad.numel()} of {x.shape[0]} samples "
                f"(first at index {int(bad[0])}); check the sampler's step size or the input data"
            )
        if t is None:
            if any(leaf.time_dependent for leaf in self.leaves()):
                names = ", ".join(l.label for l in self.leaves() if l.time_dependent)
                raise InputError(
                    f"this energy depends on diffusion time ({names}); pass t in [0, 1] "
                    "(0 = data, 1 = noise), e.g. energy.energy(x, t=0.0)"
                )
            return None
        if isinstance(t, Tensor) and t.device != x.device and t.numel() > 1:
            raise InputError(f"t is on {t.device} but x is on {x.device}; use t.to(x.device)")
        if not isinstance(t, (Tensor, numbers.Real)) or isinstance(t, bool):
            raise InputTypeError(f"t must be a number or a tensor of shape (B,), got {type(t).__name__}")
        tt = as_batch_t(t, x)
        if not bool(torch.isfinite(tt).all()) or bool((tt < 0).any()) or bool((tt > 1).any()):
            raise InputError("t must be finite and in [0, 1] (0 = data, 1 = noise)")
        return tt

    # ----------------------------------------------------------------- algebra
    # The nodes live in .nodes, which imports this module: imported at call time.
    def __add__(self, other):
        from .nodes import Sum

        if not _is_energy(other):
            return NotImplemented
        return Sum.of([(1.0, self), (1.0, other)])

    __and__ = __add__

    def __sub__(self, other):
        from .nodes import Sum

        if not _is_energy(other):
            return NotImplemented
        return Sum.of([(1.0, self), (-1.0, other)])

    def __neg__(self):
        from .nodes import Sum

        return Sum.of([(-1.0, self)])

    def __mul__(self, w):
        from .nodes import Sum

        if _is_energy(w):
            raise TypeError(
                "energies multiply as densities by adding them: use a + b (or a & b) for the "
                "product of densities; w * a with a number w sets a weight/temperature"
            )
        # raise (not NotImplemented) so the message says what a weight must be
        w = _as_weight(w)
        return Sum.of([(w, self)])

    __rmul__ = __mul__

    def __truediv__(self, w):
        from .nodes import Sum

        if _is_energy(w):
            raise TypeError("to divide densities use a - b (energies subtract)")
        w = _as_weight(w)
        if w == 0:
            raise ZeroDivisionError("cannot divide an energy by zero (infinite temperature)")
        return Sum.of([(1.0 / w, self)])

    def __or__(self, other):
        from .nodes import Mixture

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

    # nn.Module's identity __hash__/__eq__ is what the evaluation plan relies on.


def _module_device(module: nn.Module) -> Optional[torch.device]:
    for p in module.parameters(recurse=True):
        return p.device
    for b in module.buffers(recurse=True):
        return b.device
    return None


def _evaluate_plan(plan, x, t, create_graph):
    """Evaluate every leaf of ``plan`` once; grouped leaves in one call per group."""
    results: Dict[int, Tuple[Optional[Tensor], Optional[Tensor]]] = {}
    groups: Dict[LeafGroup, List] = {}
    nfe = 0
    for key, (leaf, need) in plan.items():
        group = leaf.leaf_group()
        if group is not None:
            groups.setdefault(group, []).append((leaf, need))
            continue
        results[key] = _evaluate_leaf(leaf, need, x, t, create_graph)
        nfe += 1
    for group, members in groups.items():
        outs, n = group.evaluate_leaves(
            [m[0] for m in members], [m[1] for m in members], x, t, create_graph
        )
        for (leaf, _), out in zip(members, outs):
            results[id(leaf)] = out
        nfe += n
    return results, nfe


def _evaluate_leaf(leaf, need, x, t, create_graph):
    """One leaf's ``(energy, grad)`` for ``need``; an energy-only call keeps the ambient grad mode."""
    if need == ENERGY:
        e = leaf._energy(x, t)
        check_energy_output(leaf, e, x)
        return e, None
    if need == GRAD:
        g = leaf._grad(x, t, create_graph)
        check_grad_output(leaf, g, x)
        return None, g
    e, g = leaf._energy_and_grad(x, t, create_graph)
    check_energy_output(leaf, e, x)
    check_grad_output(leaf, g, x)
    return e, g


# Re-exported so that ``ebmcompose.energy.Sum`` etc. keep working (they import Energy from here).
from .leaves import EnergyFunction, ScoreFunction, as_energy  # noqa: E402
from .nodes import Mixture, Sum  # noqa: E402
from .operators import conjunction, mixture, negation  # noqa: E402
