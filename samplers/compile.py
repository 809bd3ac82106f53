"""``torch.compile`` of a kernel's transition, in one place.

A kernel declares its transition as a pure function ``fn(energy, *tensors, *static)`` (random
draws are passed in, so compiled and eager chains use the same random stream) and calls
:func:`call`. With ``compile=True`` the whole transition, energy evaluation included, runs as
one graph; an energy that cannot be traced into one graph (autograd inside, data-dependent
Python) or a missing compiler makes it run eagerly instead, with one warning naming the reason.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, Dict

import torch
import torch._dynamo.exc as _dynamo_exc  # torch's public home of its compiler errors
import torch._inductor.exc as _inductor_exc

__all__ = ["call", "COMPILE_ERRORS"]

#: What a failed compilation raises: graph breaks under ``fullgraph`` (``Unsupported``), backend
#: failures (``BackendCompilerFailed``, both ``TorchDynamoException``) and inductor's own errors.
COMPILE_ERRORS = (_dynamo_exc.TorchDynamoException, _inductor_exc.InductorError)

_GRAPHS: Dict[Callable, Callable] = {}
#: energies whose transition ``fn`` failed to compile: energy -> set of fn (weakly held).
_FAILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _failed(energy) -> set:
    try:
        return _FAILED.setdefault(energy, set())
    except TypeError:  # not weak-referenceable: remember by class
        return _FAILED.setdefault(type(energy), set())


def call(fn: Callable, compile: bool, energy, *args):
    """``fn(energy, *args)``, compiled as one graph when ``compile`` (static shapes, one graph per
    shape and dtype; pass step sizes as 0-d tensors so a new value does not recompile)."""
    if not compile:
        return fn(energy, *args)
    failed = _failed(energy)
    if fn in failed:
        return fn(energy, *args)
    graph = _GRAPHS.get(fn)
    if graph is None:
        graph = _GRAPHS[fn] = torch.compile(fn, dynamic=False, fullgraph=True)
    try:
        return graph(energy, *args)
    except COMPILE_ERRORS as exc:
        failed.add(fn)
        reason = " ".join(str(exc).split())[:300]  # the message on one line (it may span many)
        warnings.warn(
            f"torch.compile could not compile {fn.__name__} for {type(energy).__name__} "
            f"({type(exc).__name__}: {reason}); running it eagerly instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return fn(energy, *args)
