"""``torch.compile`` of a kernel's transition, in one place.

A kernel declares its transition as a pure function ``fn(energy, *tensors, *static)`` (random
draws are passed in, so compiled and eager chains use the same random stream) and calls
:func:`call`. With ``compile=True`` the whole transition, energy evaluation included, runs as
one graph; an energy that cannot be traced into one graph (autograd inside, data-dependent
Python) or a missing compiler makes it run eagerly instead, with one warning naming the reason.

:func:`scan` runs several transitions in one graph call (a ``torch.while_loop``), so the cost of
entering a compiled graph (guards, wrappers: ~0.1-0.3 ms on a CPU) is paid once per chunk of steps
instead of once per step; the draws of the chunk are made beforehand in the eager order.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor
import torch._dynamo.exc as _dynamo_exc  # torch's public home of its compiler errors
import torch._inductor.exc as _inductor_exc

__all__ = ["call", "scan", "COMPILE_ERRORS"]

#: What a failed compilation raises: graph breaks under ``fullgraph`` (``Unsupported``), backend
#: failures (``BackendCompilerFailed``, both ``TorchDynamoException``) and inductor's own errors.
#: ``AssertionError``: torch's own internal asserts (e.g. "Guard failed on the same frame it was
#: created", an energy that builds a tensor from a numpy array each call); the eager rerun raises a
#: genuine assertion of the energy again.
COMPILE_ERRORS = (_dynamo_exc.TorchDynamoException, _inductor_exc.InductorError, AssertionError)

_GRAPHS: Dict[Callable, Callable] = {}
#: energies whose transition failed to compile: energy -> names of the transitions (weakly held;
#: by name, so that a kernel's one-step and many-step graphs warn once between them).
_FAILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _failed(energy) -> set:
    try:
        return _FAILED.setdefault(energy, set())
    except TypeError:  # not weak-referenceable: remember by class
        return _FAILED.setdefault(type(energy), set())


def _warn(fn, energy, exc) -> None:
    reason = " ".join(str(exc).split())[:300]  # the message on one line (it may span many)
    warnings.warn(
        f"torch.compile could not compile {fn.__name__} for {type(energy).__name__} "
        f"({type(exc).__name__}: {reason}); running it eagerly instead",
        RuntimeWarning,
        stacklevel=4,
    )


def call(fn: Callable, compile: bool, energy, *args):
    """``fn(energy, *args)``, compiled as one graph when ``compile`` (static shapes, one graph per
    shape and dtype; pass step sizes as 0-d tensors so a new value does not recompile)."""
    if not compile:
        return fn(energy, *args)
    failed = _failed(energy)
    if fn.__name__ in failed:
        return fn(energy, *args)
    graph = _GRAPHS.get(fn)
    if graph is None:
        graph = _GRAPHS[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    try:
        return graph(energy, *args)
    except COMPILE_ERRORS as exc:
        failed.add(fn.__name__)
        _warn(fn, energy, exc)
        return fn(energy, *args)


def _loop(body: Callable, energy, n: Tensor, carry: Tuple[Tensor, ...], draws: Tuple[Tensor, ...],
          means: Tensor, sums: Tensor, consts: tuple):
    """``n`` (0-d int64) iterations of ``body`` as one ``torch.while_loop``, reducing its outputs as it goes.

    Each step's outputs (``R`` per-chain ``(B,)`` values) become a row of chain means ``means[i]``
    (``(K, R)``) and are added to the per-chain sums ``sums`` (``(R, B)``): a loop that stacked
    per-chain outputs would copy its whole ``(K, ..., B)`` buffer every iteration.
    """

    def cond(i, *_):
        return i < n

    def step(i, *state):
        j = i.reshape(1)
        carry_i, means_i, sums_i = state[: len(carry)], state[len(carry)], state[len(carry) + 1]
        new, got = body(energy, carry_i, tuple(d.index_select(0, j).squeeze(0) for d in draws), consts)
        vals = torch.stack([v.to(sums_i.dtype) for v in got])
        return (i + 1, *new, means_i.index_put((j,), vals.mean(dim=1).unsqueeze(0)), sums_i + vals)

    i0 = torch.zeros((), dtype=torch.int64, device=n.device)
    done = torch.while_loop(cond, step, (i0, *carry, means, sums))
    return done[1: 1 + len(carry)], done[1 + len(carry)], done[2 + len(carry)]


_SCANS: Dict[Callable, Callable] = {}


def scan(body: Callable, compile: bool, energy, n: int, carry: Tuple[Tensor, ...], draws: Tuple[Tensor, ...],
         n_outs: int, consts: tuple = ()):
    """``n`` transitions ``carry, outs = body(energy, carry, draws_i, consts)``, outputs reduced.

    ``draws`` are ``(K, ...)`` with ``K >= n`` (rows past ``n`` unused: padding lets runs of any
    length share one graph); ``body`` returns ``n_outs`` per-chain ``(B,)`` outputs. Returns
    ``(carry, means, sums)``: ``means`` ``(n, n_outs)`` each step's chain means, ``sums``
    ``(n_outs, B)`` each chain's sums over the steps (in the chains' float dtype). Compiled, the
    ``n`` transitions run in one graph (``torch.while_loop``); eagerly, or after a failed
    compilation (one warning), in a Python loop.
    """
    k, x = draws[0].shape[0], carry[0]
    means = torch.zeros(k, n_outs, dtype=x.dtype, device=x.device)
    sums = torch.zeros(n_outs, x.shape[0], dtype=x.dtype, device=x.device)
    if compile and body.__name__ not in _failed(energy):
        graph = _SCANS.get(body)
        if graph is None:
            graph = _SCANS[body] = torch.compile(_loop, dynamic=False, fullgraph=True)
        n_t = torch.tensor(n, dtype=torch.int64, device=x.device)
        try:
            carry, means, sums = graph(body, energy, n_t, tuple(carry), tuple(draws), means, sums, tuple(consts))
            return tuple(carry), means[:n], sums
        except COMPILE_ERRORS as exc:
            _failed(energy).add(body.__name__)
            _warn(body, energy, exc)
    for i in range(n):
        carry, got = body(energy, tuple(carry), tuple(d[i] for d in draws), consts)
        vals = torch.stack([v.to(x.dtype) for v in got])
        means[i] = vals.mean(dim=1)
        sums += vals
    return tuple(carry), means[:n], sums
