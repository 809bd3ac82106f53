"""Algebra nodes: :class:`Sum` (weighted sum of energies) and :class:`Mixture` (OR).

Nodes are immutable values built by the operators of :class:`~ebmcompose.energy.Energy`
(``a + b``, ``w * a``, ``a - b``, ``a | b``). They hold their children as submodules (so
``parameters()`` sees every leaf), but conversions return new expressions (:class:`Node`).
"""

from __future__ import annotations

import copy
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .energy import ENERGY, GRAD, Energy, ScoreOnlyError, _as_weight, _format_weight, _is_energy
from .errors import InputError, InputTypeError

__all__ = ["Node", "Sum", "Mixture"]


class Node(Energy):
    """Base of the algebra nodes: evaluated through their leaves, converted by copy.

    ``.to(...)``, ``.cuda()``, ``.cpu()``, ``.double()``, ``.float()``, ``.half()`` and
    ``.bfloat16()`` return a converted **copy** of the expression and leave the expression and
    its leaves untouched (leaves are often shared between expressions). The copy holds one
    copy of each distinct leaf and module, so a leaf used twice (the base of AND/NOT) or the
    leaves of one network (its conditions) stay shared inside it and are still evaluated in one
    batched forward. Like ``Tensor.to``, tensors already of the target device and dtype are
    shared with the original rather than duplicated.

    An ``nn.Module`` of the user's that holds an expression as a submodule is converted by
    PyTorch's own recursion, in place, like any other submodule.
    """

    _is_leaf = False

    def _converted(self, method: str, *args, **kwargs) -> "Node":
        # Alias every parameter and buffer in the deep-copy memo (no data copied), then let
        # nn.Module's conversion replace the aliases' data in the copy only.
        memo = {}
        for p in self.parameters():
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for b in self.buffers():
            memo[id(b)] = b.detach()
        try:
            clone = copy.deepcopy(self, memo)
        except (TypeError, RuntimeError, copy.Error) as exc:
            raise InputError(
                f"cannot copy the expression {self!r} to convert it: a leaf holds an object that "
                f"cannot be copied ({exc}); convert the leaves in place (leaf.to(...)) and build "
                "the expression from them"
            ) from exc
        getattr(nn.Module, method)(clone, *args, **kwargs)
        return clone

    def to(self, *args, **kwargs) -> "Node":
        """A copy converted like ``nn.Module.to`` (device and/or floating dtype); ``self`` is unchanged."""
        return self._converted("to", *args, **kwargs)

    def cuda(self, device=None) -> "Node":
        """A copy on the GPU; ``self`` is unchanged."""
        return self._converted("cuda", device)

    def cpu(self) -> "Node":
        """A copy on the CPU; ``self`` is unchanged."""
        return self._converted("cpu")

    def double(self) -> "Node":
        """A float64 copy; ``self`` is unchanged."""
        return self._converted("double")

    def float(self) -> "Node":
        """A float32 copy; ``self`` is unchanged."""
        return self._converted("float")

    def half(self) -> "Node":
        """A float16 copy; ``self`` is unchanged."""
        return self._converted("half")

    def bfloat16(self) -> "Node":
        """A bfloat16 copy; ``self`` is unchanged."""
        return self._converted("bfloat16")

class Sum(Node):
    """Weighted sum of energies ``Σ_i w_i E_i`` (product of tempered densities).

    Built by ``a + b``, ``a & b``, ``a - b``, ``-a`` and ``w * a``; ``Sum.of`` flattens nested
    sums so ``a + b + c`` is one node. Immutable: the algebra returns new nodes.
    """

    def __init__(self, terms: Sequence[Tuple[float, Energy]]):
        super().__init__()
        if len(terms) == 0:
            raise InputError("a sum of energies needs at least one term")
        weights = []
        for w, e in terms:
            if not _is_energy(e):
                raise InputTypeError(f"terms of a Sum must be Energy objects, got {type(e).__name__}")
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


class Mixture(Node):
    """Unnormalised mixture ``-logsumexp_i(-E_i + log w_i)`` (OR).

    Built by ``a | b`` (equal weights, so each component enters with its own normalising
    constant, as in Du et al. 2023) or :func:`mixture` with explicit weights. The gradient is
    the posterior-weighted average of the components' gradients, so every component must
    provide energies.
    """

    def __init__(self, components: Sequence[Energy], log_weights: Optional[Sequence[float]] = None):
        super().__init__()
        if len(components) < 1:
            raise InputError("a mixture needs at least one component")
        for e in components:
            if not _is_energy(e):
                raise InputTypeError(f"mixture components must be Energy objects, got {type(e).__name__}")
            if not e.has_energy:
                raise ScoreOnlyError(
                    f"a mixture (a | b) needs the energy of every component, but {e.label} "
                    "provides scores only: the mixture's score weights each component's score by "
                    "its posterior exp(-E_i)/Σ exp(-E_j). Use an energy-parameterised model or an "
                    "analytic energy for each component"
                )
        if log_weights is None:
            log_weights = [0.0] * len(components)
        if len(log_weights) != len(components):
            raise InputError(f"{len(log_weights)} weights for {len(components)} mixture components")
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
