"""Where SMC's particle population lives and where its random numbers come from.

:class:`~samplers.SMC` runs one algorithm on a population of ``N`` particles; the few operations
that depend on how the population is stored go through a *population* object:

- ``blocks``: this process's particles as row ranges ``[lo, hi)`` of its local ``(m, *event)``
  tensors, each with the ``torch.Generator`` that draws every per-particle random number of those
  rows (start points, proposal noise, rejuvenation transitions and step-size searches). SMC runs
  every per-particle computation (energy evaluations, proposals, weight increments, MCMC) block by
  block, so a particle's arithmetic never depends on which other blocks share its process;
- ``gather``: the ``(N,)`` log weights of the whole population from the ``(m,)`` local ones (the
  ESS, the resampling decision and ``log Ẑ`` use them);
- ``ancestors``: the ``(N,)`` global ancestor indices when the population is resampled;
- ``take``: this process's rows of the resampled population (positions, energies, gradients,
  times, momenta, FKC rates: every per-particle tensor moves with its particle).

:class:`OneGenerator` is the single-process population of ``SMC.sample``: one block holding every
particle, one generator for everything (the draws come in the order start, then per level:
proposal noise, resampling uniforms, rejuvenation), ancestors drawn every level and applied where
the ESS is low (no device synchronisation).

:class:`ShardedPopulation` is the population of ``ec.distributed.sample(SMC(...), ...)``
(:meth:`samplers.SMC.sample_sharded`): the ``N`` particles cut into the blocks of an
``ec.distributed.BlockPlan`` (block ``b``: rows ``[b·block, (b+1)·block)``, on rank
``b % world_size``), block ``b`` drawing from ``block_generator(seed, b)``; log weights are
all-gathered, the decision is taken on the gathered weights (one host synchronisation per level),
ancestors come from ``resample_indices`` with ``shared_generator(seed, "resample")`` (identical on
every rank, drawn only at resampling events) and particles move with ``take_rows``. Nothing depends
on the number of processes: ``P = 1`` and ``P = 2`` give bitwise the same population on the CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import ebmcompose as ec

from .base import State
from .ladder import LevelInfo, prior_sample
from .resampling import resample

__all__ = ["Population", "OneGenerator", "ShardedPopulation", "particle_fields", "take_state", "rows", "slice_rows", "cat_states",
           "cat_optional", "STEP_JOIN", "whole", "each_block", "rejuvenate_blocks", "level_info_of_blocks"]

Block = Tuple[int, int, Optional[torch.Generator]]


class Population:
    """The storage-dependent operations of SMC (module notes). Subclasses implement all of them.

    Attributes
    ----------
    sharded : bool
        Whether the population spans several blocks/processes (collectives in :meth:`gather`).
    """

    sharded = False

    def start(self, x0: Optional[Tensor], shape, device, dtype) -> Tensor:
        """``(m, *event)`` this process's starting particles."""
        raise NotImplementedError

    def size(self, local: Tensor) -> int:
        """``N``: particles in the whole population (``local`` is this process's ``(m, *event)``)."""
        raise NotImplementedError

    def blocks(self, local: Tensor) -> Sequence[Block]:
        """``[(lo, hi, generator)]``: this process's row ranges and the generator of each."""
        raise NotImplementedError

    def gather(self, local: Tensor) -> Tensor:
        """``(N,)`` the whole population's values from this process's ``(m,)``."""
        raise NotImplementedError

    def ancestors(self, log_weights: Tensor, do: Tensor, scheme: str) -> Optional[Tensor]:
        """``(N,)`` int64 global ancestors from the gathered log weights ``(G, M)`` of ``G`` populations of
        ``M`` consecutive particles, each resampled within itself where ``do`` ``(G,)`` bool; ``None``
        when nothing moves."""
        raise NotImplementedError

    def take(self, local: Tensor, idx: Optional[Tensor]) -> Tensor:
        """``(m, *rest)`` this process's rows of ``whole[idx]`` (``local`` unchanged when ``idx`` is ``None``)."""
        raise NotImplementedError


class OneGenerator(Population):
    """The whole population in this process, every random number from ``generator`` (``SMC.sample``)."""

    def __init__(self, generator: Optional[torch.Generator]):
        self.generator = generator

    def start(self, x0, shape, device, dtype) -> Tensor:
        return prior_sample(x0, shape, self.generator, device, dtype, "SMC")

    def size(self, local: Tensor) -> int:
        return local.shape[0]

    def blocks(self, local: Tensor) -> Sequence[Block]:
        return ((0, local.shape[0], self.generator),)

    def gather(self, local: Tensor) -> Tensor:
        return local

    def ancestors(self, log_weights: Tensor, do: Tensor, scheme: str) -> Optional[Tensor]:
        g, m = log_weights.shape
        idx = resample(log_weights, scheme, self.generator)  # drawn every level: no sync for the decision
        own = torch.arange(g * m, device=idx.device).view(g, m)
        return torch.where(do[:, None], idx + own[:, :1], own).reshape(-1)

    def take(self, local: Tensor, idx: Optional[Tensor]) -> Tensor:
        return local if idx is None else local.index_select(0, idx)


class ShardedPopulation(Population):
    """``plan.n`` particles in the blocks of ``plan`` over the ranks of ``session`` (module notes).

    Parameters
    ----------
    plan : ec.distributed.BlockPlan
        The blocks and this rank's share (``plan.rows``, its local row order).
    session : ec.distributed.Session
        The process group (a one-process session runs every block here).
    seed : int
        Block ``b`` draws from ``block_generator(seed, b, device)``; resampling from
        ``shared_generator(seed, "resample")`` (CPU).
    device : torch.device or str
        Where the particles and the block generators live.
    init : callable, optional
        ``init(m, g) -> (m, *event)`` a block's starting particles from its generator (weighted as
        draws from ``N(0, I)``); default ``N(0, I)`` draws of the ``shape`` given to ``start``.
    """

    sharded = True

    def __init__(self, plan, session, seed: int, device="cpu", init: Optional[Callable[[int, torch.Generator], Tensor]] = None):
        from ebmcompose import distributed

        self.plan, self.session, self.device, self.init = plan, session, torch.device(device), init
        self._resample_gen = distributed.shared_generator(seed, "resample")
        self._blocks = []
        offset = 0
        for b in plan.blocks:
            lo, hi = plan.bounds(b)
            self._blocks.append((offset, offset + hi - lo, distributed.block_generator(seed, b, self.device)))
            offset += hi - lo
        if not self._blocks:  # an idle rank (fewer blocks than ranks) still joins every collective
            self._blocks.append((0, 0, torch.Generator(device=self.device)))

    def start(self, x0, shape, device, dtype) -> Tensor:
        if x0 is not None:
            raise ec.InputError("a sharded SMC population draws its start in blocks: pass init=fn(m, g) or shape=(N, *event), not x0")
        if self.init is None:
            if shape is None or len(tuple(shape)) < 1 or int(tuple(shape)[0]) != self.plan.n:
                raise ec.InputError(f"shape must be (N, *event) with N = {self.plan.n} particles, got {shape!r}")
            event = tuple(int(s) for s in tuple(shape)[1:])
        parts = []
        for lo, hi, g in self._blocks:
            if self.init is not None:
                parts.append(self.init(hi - lo, g))
            else:
                parts.append(torch.randn((hi - lo, *event), generator=g, device=device or self.device,
                                         dtype=dtype or torch.get_default_dtype()))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def size(self, local: Tensor) -> int:
        return self.plan.n

    def blocks(self, local: Tensor) -> Sequence[Block]:
        return tuple(self._blocks)

    def gather(self, local: Tensor) -> Tensor:
        from ebmcompose.distributed import gather_rows

        return gather_rows(local, self.plan, self.session)

    def ancestors(self, log_weights: Tensor, do: Tensor, scheme: str) -> Optional[Tensor]:
        from ebmcompose.distributed import resample_indices

        if log_weights.shape[0] != 1:
            raise ec.InputError("a sharded SMC run is one population (populations=1)")
        if not bool(do[0]):  # the same decision on every rank (gathered weights)
            return None
        return resample_indices(log_weights[0], self._resample_gen, scheme).to(log_weights.device)

    def take(self, local: Tensor, idx: Optional[Tensor]) -> Tensor:
        from ebmcompose.distributed import take_rows

        return local if idx is None else take_rows(local, idx, self.plan, self.session)


# ----------------------------------------------------------------------------- per-particle tensors and blocks
def particle_fields(state: State) -> List[str]:
    """Names of the state's per-particle tensors (``x``, energy, gradient, ``t``, HMC momentum)."""
    m = state.x.shape[0]
    return [f.name for f in dataclasses.fields(state) if isinstance(getattr(state, f.name), Tensor)
            and getattr(state, f.name).dim() > 0 and getattr(state, f.name).shape[0] == m]


def take_state(state: State, idx: Optional[Tensor], take: Callable) -> State:
    """The state's per-particle tensors at ancestors ``idx`` (``take(tensor, idx)``; ``None``: unchanged)."""
    if idx is None:
        return state
    return state.replace(**{k: take(getattr(state, k), idx) for k in particle_fields(state)})


def slice_rows(v: Optional[Tensor], lo: int, hi: int) -> Optional[Tensor]:
    return None if v is None else v[lo:hi]


def rows(state: State, lo: int, hi: int) -> State:
    """Rows ``[lo, hi)`` of the state's per-particle tensors."""
    return state.replace(**{k: getattr(state, k)[lo:hi] for k in particle_fields(state)})


def cat_states(states: Sequence[State]) -> State:
    """The states' per-particle tensors concatenated (the rest from the first)."""
    if len(states) == 1:
        return states[0]
    return states[0].replace(**{k: torch.cat([getattr(s, k) for s in states]) for k in particle_fields(states[0])})


def cat_optional(vs: Sequence[Optional[Tensor]]) -> Optional[Tensor]:
    """The tensors concatenated, or ``None`` when the first is (a per-particle value a run has not)."""
    return None if vs[0] is None else torch.cat(list(vs))


#: How each output of a block's step is joined over the blocks: ``(state, log weights, FKC rate, nfe)``
#: (NFE: the most any block's particles went through).
STEP_JOIN = (cat_states, cat_optional, cat_optional, max)


def whole(blocks) -> bool:
    """Whether one block holds every local row (the blocks cover them all): nothing to slice or copy."""
    return len(blocks) == 1


def each_block(blocks, fn: Callable, args: tuple, split: tuple, join: tuple):
    """``fn(generator, *args)`` on each block's rows, its outputs joined in block order.

    ``split[k](args[k], lo, hi)`` cuts argument ``k`` (:func:`rows` for a state, :func:`slice_rows`
    for a tensor or ``None``); ``join[k](values)`` joins output ``k`` over the blocks (e.g.
    :data:`STEP_JOIN`). One block holding every row calls ``fn`` once on the arguments as they are.
    """
    if whole(blocks):
        return fn(blocks[0][2], *args)
    outs = [fn(g, *(cut(v, lo, hi) for cut, v in zip(split, args))) for lo, hi, g in blocks]
    return tuple(j([o[k] for o in outs]) for k, j in enumerate(join))


def level_info_of_blocks(t: float, nfe: int, parts) -> LevelInfo:
    """One :class:`LevelInfo` from each block's ``(recorder, step size, extra nfe, rows)``: size-weighted
    mean acceptance and step size, per-chain sums in row order, summed divergences, the largest NFE."""
    done = [(rec, h, n, m) for rec, h, n, m in parts if rec is not None and rec.n_steps]
    if not done:
        return LevelInfo(t=t, nfe=nfe)
    rows = sum(m for *_, m in done)
    acc = sum(rec.mean_acceptance().to(torch.float64) * m for rec, _, _, m in done) / rows
    h = sum(float(torch.as_tensor(h).double().mean()) * m for _, h, _, m in done) / rows
    return LevelInfo(t=t, nfe=nfe + max(rec.nfe + n for rec, _, n, _ in done), n_transitions=done[0][0].n_steps,
                     acceptance=acc, step_size=h, acc_sum=torch.cat([rec.acc_sum for rec, *_ in done]),
                     divergences=sum(torch.cat(rec.divergences).sum() for rec, *_ in done))


def rejuvenate_blocks(blocks, fn: Callable, st: State, rate: Optional[Tensor], carry, t: float, nfe: int, adapted: bool):
    """A level's MCMC moves block by block: ``fn(g, state, rate, carry) -> (state, rate, carry, recorder,
    step size, nfe)`` on each non-empty block with its generator and carried step size (``carry``: one
    per block, ``None`` before the first adaptation). Returns ``(state, rate, carries, LevelInfo)``."""
    carries = carry if carry is not None else (None,) * len(blocks)
    parts, new_carries = [], []
    for (lo, hi, g), c in zip(blocks, carries):
        if hi == lo:  # an idle rank's empty block: nothing to move
            parts.append((rows(st, lo, hi), slice_rows(rate, lo, hi), None, None, 0))
            new_carries.append(c)
            continue
        sub, r, c, rec, h, n = fn(g, rows(st, lo, hi), slice_rows(rate, lo, hi), c)
        parts.append((sub, r, rec, h, n))
        new_carries.append(c)
    st = cat_states([p[0] for p in parts])
    rate = None if rate is None else torch.cat([p[1] for p in parts])
    info = level_info_of_blocks(t, nfe, [(p[2], p[3], p[4], hi - lo) for p, (lo, hi, _) in zip(parts, blocks)])
    return st, rate, tuple(new_carries) if adapted else carry, info
