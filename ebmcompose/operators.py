"""The papers' operators as functions: :func:`conjunction` (AND), :func:`negation` (NOT), :func:`mixture` (OR).

Each builds an expression of :mod:`ebmcompose.nodes` from leaves; ``a & b``, ``a - b`` and
``a | b`` are the unweighted special cases.
"""

from __future__ import annotations

import collections.abc
import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from .energy import Energy, _as_weight, _is_energy
from .errors import InputError, InputTypeError
from .nodes import Mixture, Sum

__all__ = ["conjunction", "negation", "mixture"]

def _weights_for(weight, n: int, what: str) -> List[float]:
    if isinstance(weight, (list, tuple)):
        if len(weight) != n:
            raise InputError(f"{len(weight)} {what} weights for {n} concepts; give one per concept or a scalar")
        return [_as_weight(w) for w in weight]
    return [_as_weight(weight)] * n


def _as_list(concepts, what: str) -> List[Energy]:
    if _is_energy(concepts):
        return [concepts]
    concepts = list(concepts)
    if not concepts:
        raise InputError(f"{what} needs at least one concept energy")
    for c in concepts:
        if not _is_energy(c):
            raise InputTypeError(f"{what} concepts must be Energy objects, got {type(c).__name__}")
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
            raise InputTypeError(f"negation concepts must be Energy objects, got {type(c).__name__}")
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
        raise InputTypeError(f"mixture weights must be a sequence of positive numbers, got {type(weights).__name__}")
    ws = []
    for w in weights:
        try:
            ws.append(_as_weight(w))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"mixture weights must be positive finite numbers: {exc}") from None
    if any(not (w > 0 and math.isfinite(w)) for w in ws):
        raise InputError(f"mixture weights must be positive and finite, got {ws}")
    return Mixture(components, [math.log(w) for w in ws])
