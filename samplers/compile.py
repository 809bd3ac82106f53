"""``torch.compile`` of a kernel's transition, in one place.

A kernel declares its transition as a pure function ``fn(energy, *tensors, *static)`` (random
draws are passed in, so compiled and eager chains use the same random stream) and calls
:func:`call`. With ``compile=True`` the whole transition, energy evaluation included, runs as
one graph (gradients of autograd energies by ``torch.func``, ``ebmcompose.autodiff``); an energy
that cannot be traced into one graph (data-dependent Python, values read back, calls out of torch)
or a missing compiler makes it run eagerly instead, with one warning naming the reason.

:func:`scan` runs several transitions in one graph call (a ``torch.while_loop``, or torch's
``scan`` when every step's position is kept), so the cost of
entering a compiled graph (guards, wrappers: ~0.1-0.3 ms on a CPU) is paid once per chunk of steps
instead of once per step; the draws of the chunk are made beforehand in the eager order.

On the CPU each graph is built with the options of :func:`inductor_options` (inductor's C++
wrapper, no vectorised loop tails, no tiling heuristic, division by a constant as a product).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
import torch._dynamo.config as _dynamo_config
import torch._dynamo.exc as _dynamo_exc  # torch's public home of its compiler errors
import torch._inductor.exc as _inductor_exc
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

try:  # torch's scan (stacks each step's outputs in place); not public yet in torch 2.13
    from torch._higher_order_ops.scan import scan as _torch_scan
except ImportError:  # an older torch: traced chunks run as a while_loop too (slower, same chains)
    _torch_scan = None

__all__ = ["call", "scan", "inductor_options", "ConstantDivisionAsProduct", "COMPILE_ERRORS"]

#: What a failed compilation raises: graph breaks under ``fullgraph`` (``Unsupported``), backend
#: failures (``BackendCompilerFailed``, both ``TorchDynamoException``) and inductor's own errors.
#: ``AssertionError``: torch's own internal asserts (e.g. "Guard failed on the same frame it was
#: created", an energy that builds a tensor from a numpy array each call); the eager rerun raises a
#: genuine assertion of the energy again.
COMPILE_ERRORS = (_dynamo_exc.TorchDynamoException, _inductor_exc.InductorError, AssertionError)

#: Graphs one transition function may get (one per energy, shape and dtype) before torch stops
#: compiling it (its default, 8, is soon reached in a notebook that tries several energies).
RECOMPILE_LIMIT = 64

_GRAPHS: Dict[Callable, Callable] = {}
#: energies whose transition failed to compile: energy -> names of the transitions (weakly held;
#: by name, so that a kernel's one-step and many-step graphs warn once between them).
_FAILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _failed(energy) -> set:
    try:
        return _FAILED.setdefault(energy, set())
    except TypeError:  # not weak-referenceable: remember by class
        return _FAILED.setdefault(type(energy), set())


#: A compiled call that did not run (the compiler failed; the caller runs its eager path).
_FELL_BACK = object()


class ConstantDivisionAsProduct(CustomGraphPass):
    """Graph pass: ``a / c`` with ``c`` a Python number becomes ``a * (1 / c)``.

    GCC keeps a division by a constant a division (its result can differ from the product by one
    unit in the last place); a product costs a fraction of it, and a division inside a reduction
    keeps the loop scalar. Applied to floating-point ``a`` only, where ``c`` and ``1 / c`` are
    normal numbers of ``a``'s dtype; exact when ``c`` is a power of two. The graph-level form of
    what ``-funsafe-math-optimizations`` would do, without its process-wide flush-to-zero."""

    _DIVISIONS = (torch.ops.aten.div.Tensor, torch.ops.aten.div.Scalar)

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in graph.nodes:
            if node.op != "call_function" or node.target not in self._DIVISIONS or node.kwargs or len(node.args) != 2:
                continue
            a, c = node.args
            val = a.meta.get("val") if isinstance(a, torch.fx.Node) else None
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not isinstance(val, Tensor):
                continue
            if not val.dtype.is_floating_point:
                continue
            info = torch.finfo(val.dtype)  # the range test fails first for 0, inf and NaN: 1 / c is never 1 / 0
            if info.tiny <= abs(c) <= info.max and info.tiny <= abs(1.0 / c) <= info.max:
                node.target, node.args = torch.ops.aten.mul.Tensor, (a, 1.0 / c)

    def uuid(self):
        return get_hash_for_files((__file__,))


#: the one instance given to inductor (graphs are cached under their options)
_DIVISION_PASS = ConstantDivisionAsProduct()


def inductor_options(x: Optional[Tensor]) -> Dict[str, object]:
    """Inductor options of a graph whose chains are ``x`` ``(B, *event)``. On the CPU:

    - the C++ wrapper (the graph's loop and buffers run in C++, not Python);
    - no vectorised loop tails (a row shorter than a vector, e.g. a 10-D event, runs as a scalar
      loop instead of masked vector loads);
    - no tiling heuristic (it leaves a loop scalar when many of its loads are strided, as a whole
      transition's gathers are);
    - division by a constant as a product (:class:`ConstantDivisionAsProduct`, a graph pass);
    - not ``-funsafe-math-optimizations``: it makes GCC link ``crtfastmath.o``, and loading the
      graph then flushes subnormal floats to zero in the whole process.

    Elsewhere torch's defaults. Only the device of ``x`` matters. The compiled rows of
    ``benchmarks/results/peers.md`` run with these options."""
    if x is None or x.device.type != "cpu":
        return {}
    return {"cpp_wrapper": True, "cpp.enable_loop_tail_vec": False, "cpp.enable_tiling_heuristics": False,
            "post_grad_custom_post_pass": _DIVISION_PASS}


def _compiled(cache: Dict, key, fn: Callable, name: str, energy, *args, options: Optional[Dict[str, object]] = None):
    """``torch.compile(fn, options=options)(*args)``, the graph cached under ``(key, options)``;
    :data:`_FELL_BACK` (after one warning naming ``name`` and torch's reason) when ``name`` cannot
    be compiled for ``energy``.

    Runs under ``no_grad``: a sampler's graph never needs autograd (``torch.func.grad`` inside
    ignores it), and parameters that require grad made a looped graph's gradients wrong.
    """
    failed = _failed(energy)
    if name in failed:
        return _FELL_BACK
    options = options or {}
    key = (key, tuple(sorted(options.items())))
    graph = cache.get(key)
    if graph is None:
        graph = cache[key] = torch.compile(fn, dynamic=False, fullgraph=True, options=options or None)
    # the limit is raised for this call only (plain set and restore: config.patch costs ~7 small ops)
    limit = _dynamo_config.recompile_limit
    _dynamo_config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    try:
        with torch.no_grad():
            return graph(*args)
    except COMPILE_ERRORS as exc:
        failed.add(name)
        reason = " ".join(str(exc).split())[:300]  # the message on one line (it may span many)
        warnings.warn(f"torch.compile could not compile {name} for {type(energy).__name__} "
                      f"({type(exc).__name__}: {reason}); running it eagerly instead", RuntimeWarning, stacklevel=4)
        return _FELL_BACK
    finally:
        _dynamo_config.recompile_limit = limit


def _first_tensor(args) -> Optional[Tensor]:
    """The first tensor of ``args`` (tuples searched in order): the chains ``x``, first by convention."""
    for a in args:
        found = _first_tensor(a) if isinstance(a, (tuple, list)) else a if isinstance(a, Tensor) else None
        if found is not None:
            return found
    return None


def call(fn: Callable, compile: bool, energy, *args):
    """``fn(energy, *args)``, compiled as one graph when ``compile`` (static shapes, one graph per
    shape and dtype; pass step sizes as 0-d tensors so a new value does not recompile)."""
    out = _FELL_BACK
    if compile:
        out = _compiled(_GRAPHS, fn, fn, fn.__name__, energy, energy, *args, options=inductor_options(_first_tensor(args)))
    return fn(energy, *args) if out is _FELL_BACK else out


def _step(body: Callable, energy, carry, draws_i, consts, dtype):
    """One transition of :func:`scan` and its ``R`` per-chain outputs stacked ``(R, B)`` in ``dtype``."""
    new, got = body(energy, carry, draws_i, consts)
    return new, torch.stack([v.to(dtype) for v in got])


def _buffers(carry: Tuple[Tensor, ...], k: int, n_outs: int, keep: int):
    """Zero ``means`` ``(K, R)``, ``sums`` ``(R, B)`` and ``kept`` ``(K, ...)`` of the first ``keep`` carries."""
    x = carry[0]
    means = torch.zeros(k, n_outs, dtype=x.dtype, device=x.device)
    sums = torch.zeros(n_outs, x.shape[0], dtype=x.dtype, device=x.device)
    return means, sums, tuple(a.new_zeros((k,) + tuple(a.shape)) for a in carry[:keep])


def _while_loop(body: Callable, energy, n: Tensor, carry: Tuple[Tensor, ...], draws: Tuple[Tensor, ...],
                n_outs: int, keep: int, consts: tuple):
    """:func:`_scan_loop` as a ``torch.while_loop`` of ``n`` (0-d int64) iterations, reducing as it
    goes: faster when nothing is kept (it updates large carries in place), but a kept buffer is
    written functionally, a copy of the whole ``(K, ...)`` buffer every step."""
    c = len(carry)

    def cond(i, *_):
        return i < n

    def step(i, *state):
        j = i.reshape(1)  # buffers are written functionally (index_put): loop carries cannot be mutated
        means_i, sums_i, kept_i = state[c], state[c + 1], state[c + 2:]
        new, vals = _step(body, energy, state[:c], tuple(d.index_select(0, j).squeeze(0) for d in draws), consts, sums_i.dtype)
        kept_i = tuple(b.index_put((j,), v.unsqueeze(0)) for b, v in zip(kept_i, new))
        return (i + 1, *new, means_i.index_put((j,), vals.mean(dim=1).unsqueeze(0)), sums_i + vals, *kept_i)

    means, sums, kept = _buffers(carry, draws[0].shape[0], n_outs, keep)
    done = torch.while_loop(cond, step, (torch.zeros((), dtype=torch.int64, device=n.device), *carry, means, sums, *kept))
    return done[1: 1 + c], done[1 + c], done[2 + c], done[3 + c:]


def _scan_loop(body: Callable, energy, n: Tensor, carry: Tuple[Tensor, ...], draws: Tuple[Tensor, ...],
               n_outs: int, keep: int, consts: tuple):
    """The transitions of :func:`scan` as one torch ``scan`` over the ``K`` rows of ``draws``.

    Rows ``i >= n`` (0-d int64; padding) leave the carry as it is and add nothing. Each step's
    ``R`` per-chain outputs give a row of chain means (stacked ``(K, R)``) and are added to
    per-chain sums carried along (``(R, B)``; stacking them would hold ``K × R × B`` numbers), and
    the first ``keep`` carry entries are stacked ``(K, ...)`` (traces), each row written once.
    """
    c, x = len(carry), carry[0]

    def step(state, xs):
        i, draws_i = xs[0], xs[1:]
        old, sums = state[:c], state[c]
        new, vals = _step(body, energy, old, draws_i, consts, sums.dtype)
        live = i < n
        new = tuple(torch.where(live, a, b) for a, b in zip(new, old))
        vals = torch.where(live, vals, torch.zeros_like(vals))
        return (*new, sums + vals), (vals.mean(dim=1), *(a.clone() for a in new[:keep]))

    sums = torch.zeros(n_outs, x.shape[0], dtype=x.dtype, device=x.device)
    rows = torch.arange(draws[0].shape[0], device=n.device)
    done, stacked = _torch_scan(step, (*carry, sums), (rows, *draws))
    return done[:c], stacked[0], done[c], stacked[1:]


_SCANS: Dict[Callable, Callable] = {}


def scan(body: Callable, compile: bool, energy, n: int, carry: Tuple[Tensor, ...], draws: Tuple[Tensor, ...],
         n_outs: int, consts: tuple = (), keep: int = 0):
    """``n`` transitions ``carry, outs = body(energy, carry, draws_i, consts)``, outputs reduced.

    ``draws`` are ``(K, ...)`` with ``K >= n`` (rows past ``n`` unused: padding lets runs of any
    length share one graph); ``body`` returns ``n_outs`` per-chain ``(B,)`` outputs. Returns
    ``(carry, means, sums, kept)``: ``means`` ``(n, n_outs)`` each step's chain means, ``sums``
    ``(n_outs, B)`` each chain's sums over the steps (in the chains' float dtype), ``kept`` the
    first ``keep`` carry entries after every step, stacked ``(n, ...)``. Compiled, the transitions
    run in one graph (:func:`_while_loop`, or :func:`_scan_loop` when ``keep``); eagerly, or after a failed compilation
    (one warning), in a Python loop of the same iterations.
    """
    k, x = draws[0].shape[0], carry[0]
    out = _FELL_BACK
    if compile:  # traces: scan writes each kept row once; otherwise the while_loop updates carries in place
        loop = _scan_loop if keep and _torch_scan is not None else _while_loop
        n_t = torch.tensor(n, dtype=torch.int64, device=x.device)
        out = _compiled(_SCANS, (body, loop), loop, body.__name__, energy, body, energy, n_t, tuple(carry), tuple(draws),
                        n_outs, keep, tuple(consts), options=inductor_options(x))
    if out is _FELL_BACK:  # the same iterations, buffers written in place
        means, sums, kept = _buffers(tuple(carry), k, n_outs, keep)
        for i in range(n):
            carry, vals = _step(body, energy, tuple(carry), tuple(d[i] for d in draws), consts, x.dtype)
            means[i] = vals.mean(dim=1)
            sums += vals
            for b, v in zip(kept, carry):
                b[i] = v
        out = carry, means, sums, kept
    carry, means, sums, kept = out
    return tuple(carry), means[:n], sums, tuple(b[:n] for b in kept)
