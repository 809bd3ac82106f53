"""Sampling on several processes (``torchrun``) with the same samples whatever their number.

The chain-block scheme (the one place that decides how randomness is split):

- the global batch of ``n`` chains is cut into fixed-size **blocks** of ``block`` chains
  (``ceil(n / block)`` blocks, the last one possibly shorter); the cut does not depend on the
  number of processes;
- block ``b`` draws all its randomness (starting point and every step) from its own
  ``torch.Generator`` seeded with :func:`block_seed` ``(seed, b)``: the first 63 bits of
  ``BLAKE2b("<seed>/<b>", person="ebmc-chain-block")``, so nearby seeds and blocks give
  unrelated streams;
- block ``b`` runs on rank ``b % world_size``; a rank runs its blocks one after another, each as
  one batched ``sampler.sample`` call;
- results are gathered in block order on every rank.

A single process runs the same blocks, so ``P = 1`` and ``P = 2`` give identical samples (on the
same device type: CPU and CUDA generators draw different numbers).

Processes: :func:`session` joins the process group when launched by ``torchrun`` (the
``RANK``/``WORLD_SIZE`` variables are set): NCCL for a CUDA device, gloo for the CPU. Without
them it is a one-process session and nothing here touches ``torch.distributed``.

Failures: :func:`all_or_none` makes every rank agree on an error before anything is written,
so a rank that raises ends every rank with that error (rank 0 writes nothing), also when it
raises in the middle of a run whose ranks exchange data (SMC): :func:`agree`.

SMC: ``sample(SMC(...), energy, n, seed=..., block=..., session=...)`` runs ONE population of
``n`` particles cut into the same blocks (a sampler with a ``sample_sharded`` method): block ``b``
draws its start, proposal noise and rejuvenation moves from its own generator as above, and the
population resamples globally across ranks with :func:`gather_rows` (the log weights),
:func:`resample_indices` (ancestors from :func:`shared_generator` ``(seed, "resample")``, the same
on every rank) and :func:`take_rows` (the particles); see :func:`take_rows` for the recipe and
``samplers.population``. Samples, ``log_z``, per-level ESS and resampling events depend on
``seed`` and ``block``, not on the number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .errors import InputError
from .resampling import SCHEMES, resample
from .sharded_result import EXTRA_KEYS, BlockReport, ShardedResult

__all__ = [
    "DEFAULT_BLOCK", "block_seed", "block_generator", "shared_generator", "launched_by_torchrun", "Session",
    "session", "BlockPlan", "PerBlock", "RankError", "PeerFailed", "agree", "all_or_none", "all_gather_objects", "gather_rows",
    "BlockReport", "ShardedResult", "sample", "resample_indices", "take_rows",
]

#: Chains per block when none is given: big enough for a well-filled batch and a stable
#: step-size adaptation, small enough that a default CLI run (n = 1000) spreads over 2 ranks.
DEFAULT_BLOCK = 512


# ----------------------------------------------------------------------------- seeds
def _hash63(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"ebmc-chain-block").digest()
    return int.from_bytes(digest, "little") >> 1


def block_seed(seed: int, block: int) -> int:
    """The seed of chain block ``block`` of a run seeded with ``seed``: a 63-bit hash of both."""
    return _hash63(f"{int(seed)}/{int(block)}")


def block_generator(seed: int, block: int, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`block_seed` ``(seed, block)``."""
    return torch.Generator(device=device).manual_seed(block_seed(seed, block))


def shared_generator(seed: int, stream: str, device="cpu") -> torch.Generator:
    """A generator every rank builds identically (e.g. ``stream="resample"`` for SMC's global
    resampling); its numbers never coincide with a block's (another hash input)."""
    return torch.Generator(device=device).manual_seed(_hash63(f"{int(seed)}/shared/{stream}"))


# ----------------------------------------------------------------------------- processes
def launched_by_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class Session:
    """Where this process stands among the ranks of a run.

    Attributes
    ----------
    rank, world_size, local_rank : int
        This process's rank, the number of processes, its rank on its node (``0, 1, 1`` alone).
    device : torch.device
        The device this rank samples on (``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun).
    backend : str or None
        ``"gloo"`` or ``"nccl"`` (``None`` for one process without a process group).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether collectives go through ``torch.distributed``."""
        return self.backend is not None

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be for collectives (NCCL: this rank's GPU; gloo: the CPU)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def session(device="cpu", backend: Optional[str] = None) -> Iterator[Session]:
    """Join the ``torchrun`` process group for the block (one-process session otherwise).

    Parameters
    ----------
    device : str or torch.device
        The run's device; under torchrun a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``.
    backend : str, optional
        ``"gloo"`` or ``"nccl"``; default NCCL for CUDA, gloo for the CPU.

    Yields
    ------
    Session
        The process group is destroyed on exit if this call created it (after a barrier, on a
        clean exit, so that every rank leaves together).
    """
    import torch.distributed as dist

    device = torch.device(device)
    if not launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        yield Session(device=device)
        return
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if dist.is_initialized():  # joined by the caller: use it, leave it
        yield _session_of(device, dist.get_backend())
        return
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise InputError(f"backend must be 'gloo' (CPU) or 'nccl' (CUDA), got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise InputError("the nccl backend needs a CUDA device; use backend='gloo' on the CPU")
    dist.init_process_group(backend=backend)
    try:
        yield _session_of(device, backend)
        dist.barrier()  # leave together: no rank tears its connections down under a peer's last collective
    finally:
        dist.destroy_process_group()


def _session_of(device: torch.device, backend: str) -> Session:
    import torch.distributed as dist

    return Session(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=device, backend=backend)


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class BlockPlan:
    """How ``n`` chains are cut into blocks and which blocks a rank runs.

    Attributes
    ----------
    n : int
        Chains in all.
    block : int
        Chains per block (the last block may be shorter).
    world_size, rank : int
        Processes, and the rank this plan is for.
    """

    n: int
    block: int = DEFAULT_BLOCK
    world_size: int = 1
    rank: int = 0

    def __post_init__(self):
        for name in ("n", "block", "world_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"rank must be in [0, {self.world_size}), got {self.rank!r}")

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n / self.block)

    def bounds(self, b: int) -> Tuple[int, int]:
        """Global rows ``[start, stop)`` of block ``b``."""
        return b * self.block, min(self.n, (b + 1) * self.block)

    def blocks_of(self, rank: int) -> Tuple[int, ...]:
        """The blocks ``rank`` runs (``b % world_size == rank``), in order."""
        return tuple(range(rank, self.n_blocks, self.world_size))

    @property
    def blocks(self) -> Tuple[int, ...]:
        """This rank's blocks."""
        return self.blocks_of(self.rank)

    def rows_of(self, rank: int) -> Tensor:
        """``(m,)`` int64 global rows held by ``rank``, in its local order (its blocks one after another)."""
        parts = [torch.arange(*self.bounds(b)) for b in self.blocks_of(rank)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    @property
    def rows(self) -> Tensor:
        """``(m,)`` global rows of this rank."""
        return self.rows_of(self.rank)

    def for_rank(self, rank: int) -> "BlockPlan":
        return BlockPlan(self.n, self.block, self.world_size, rank)

    @classmethod
    def of(cls, n: int, block: int, s: Session) -> "BlockPlan":
        return cls(n, block, s.world_size, s.rank)


# ----------------------------------------------------------------------------- agreement
class RankError(RuntimeError):
    """Another rank raised an error that cannot be rebuilt here; the message names rank and error."""


def all_gather_objects(obj: Any, s: Session) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (small picklable objects only).

    The objects travel pickled between the run's own processes, never through a file.
    """
    if not s.distributed:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * s.world_size
    dist.all_gather_object(out, obj)
    return out


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`RankError` with its type and message."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RankError(f"{type(exc).__name__}: {exc}")


class PeerFailed(RuntimeError):
    """Raised by a collective (:func:`gather_rows`) on the ranks that did not fail, when another rank
    failed before reaching it; :func:`agree` then raises that rank's error everywhere."""


def _check_in(s: Session, failed: bool) -> int:
    """Collective: the lowest rank that reports ``failed``, or ``-1`` when none does (one all-reduce)."""
    import torch.distributed as dist

    flag = torch.tensor([s.rank if failed else s.world_size], dtype=torch.int64, device=s.comm_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    rank = int(flag)
    return -1 if rank == s.world_size else rank


def agree(s: Session, error: Optional[BaseException]) -> None:
    """Collective: every rank passes its error (or ``None``); if any rank failed, every rank raises.

    A failed rank raises its own error; the others raise the error of the lowest failed rank,
    with a note naming that rank. The ranks first check in (one all-reduce: did any rank fail?);
    only then are the errors themselves gathered. Collectives inside a guarded run check in the same
    way (:func:`gather_rows`), so a rank that fails between two of them releases the others at their
    next one (they raise :class:`PeerFailed`, which is not an error of their own) instead of leaving
    them waiting.
    """
    if not s.distributed:
        if error is not None:
            raise error
        return
    peer = isinstance(error, PeerFailed)
    if not peer and _check_in(s, error is not None) < 0:  # a PeerFailed rank has checked in already
        return
    errors = all_gather_objects(None if error is None or peer else _portable(error), s)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if error is not None and not peer:
        raise error
    rank, remote = failed[0]
    remote.add_note(f"(raised on rank {rank} of {s.world_size}; every rank stopped and nothing was written)")
    raise remote


@contextlib.contextmanager
def all_or_none(s: Session) -> Iterator[None]:
    """Run the block on every rank, then :func:`agree`: an error on any rank is raised on all."""
    try:
        yield
    except Exception as exc:
        agree(s, exc)
        raise
    agree(s, None)


# ----------------------------------------------------------------------------- gathering rows
def gather_rows(local: Tensor, plan: BlockPlan, s: Session) -> Tensor:
    """Collective: the ``(n, *rest)`` tensor whose rows each rank holds part of, on every rank.

    Parameters
    ----------
    local : Tensor
        ``(m, *rest)`` this rank's rows in its local order (``plan.rows``); every rank passes the
        same ``rest``, dtype and device.
    plan : BlockPlan
        The run's blocks.

    Returns
    -------
    Tensor
        ``(n, *rest)`` in global (block) order, on ``local``'s device.
    """
    if local.shape[0] != plan.rows.numel():
        raise InputError(f"rank {plan.rank} holds {plan.rows.numel()} rows but passed {local.shape[0]}")
    if not s.distributed:
        return local
    import torch.distributed as dist

    failed = _check_in(s, False)
    if failed >= 0:
        raise PeerFailed(f"rank {failed} failed before this collective; this rank stopped here")
    counts = [plan.rows_of(r).numel() for r in range(plan.world_size)]
    width = max(counts)
    send = local.detach().to(s.comm_device)
    if send.dtype == torch.bool:
        send = send.to(torch.uint8)
    pad = send.new_zeros((width - send.shape[0],) + tuple(send.shape[1:]))
    send = torch.cat([send, pad]).contiguous()
    parts = [torch.empty_like(send) for _ in range(plan.world_size)]
    dist.all_gather(parts, send)
    out = send.new_empty((plan.n,) + tuple(send.shape[1:]))
    for r, part in enumerate(parts):
        out[plan.rows_of(r).to(out.device)] = part[:counts[r]]
    return out.to(device=local.device, dtype=local.dtype)


# ----------------------------------------------------------------------------- the driver
class PerBlock:
    """An energy that differs between blocks: ``build(lo, hi)`` the energy of global chains ``[lo, hi)``.

    For batches whose rows carry their own conditions (each image its own request): pass
    ``PerBlock(lambda lo, hi: compose(conditions[lo:hi]))`` as the energy of :func:`sample`, and each
    block is sampled with the energy of its own rows.
    """

    def __init__(self, build: Callable[[int, int], Any]):
        if not callable(build):
            raise InputError(f"PerBlock needs a function build(lo, hi) -> Energy, got {type(build).__name__}")
        self.build = build

    def for_rows(self, lo: int, hi: int):
        """The energy of global rows ``[lo, hi)``."""
        return self.build(lo, hi)


def sample(sampler, energy, n: int, *, seed: int, event_shape: Optional[Sequence[int]] = None,
           init: Optional[Callable[[int, torch.Generator], Tensor]] = None, block: int = DEFAULT_BLOCK,
           session: Optional[Session] = None, device=None, dtype: Optional[torch.dtype] = None,
           progress: bool = False, **kwargs) -> ShardedResult:
    """Collective: ``n`` chains of ``sampler`` on ``energy``, split into blocks over the ranks.

    Every rank calls it with the same arguments; the samples depend on ``seed`` and ``block``,
    never on the number of processes.

    Parameters
    ----------
    sampler
        Any sampler (``sampler.sample(energy, x0, ..., generator=g)``): ULA, MALA, HMC,
        reverse diffusion, annealed Langevin, predictor–corrector: each block is an independent
        run. A sampler with a ``sample_sharded(energy, plan, session, seed=..., event_shape=...,
        init=..., device=..., dtype=..., progress=..., **kwargs)`` method (``samplers.SMC``) runs
        instead as ONE population of ``n`` particles spread over the blocks (SMC resamples
        globally: see :func:`take_rows`); its result's ``population`` holds ``log_z`` and the
        resampling events of the whole population.
    energy : Energy or PerBlock
        The target, on the run's device; a :class:`PerBlock` gives each block the energy of its own
        rows (not with a ``sample_sharded`` sampler: one population has one target).
    n : int
        Chains in all.
    seed : int
        The run's seed; block ``b`` draws from :func:`block_generator` ``(seed, b)``.
    event_shape : sequence of int, optional
        Shape of one sample; a block of ``m`` chains calls
        ``sampler.sample(energy, shape=(m, *event_shape), generator=g, device=device)``.
    init : callable, optional
        Instead of ``event_shape``: ``init(m, g) -> x0`` ``(m, *event)``, the block's starting
        points (drawn from the block's generator ``g``), passed as ``sampler.sample(energy, x0, ...)``.
    block : int
        Chains per block (part of what the samples depend on, like the seed).
    session : Session, optional
        From :func:`session`; default: one process.
    device, dtype
        Where ``event_shape`` starting points are drawn (default: the session's device).
    progress : bool
        Progress bars (on rank 0 only).
    **kwargs
        Passed to every ``sampler.sample`` call (e.g. ``t=``, ``on_divergence=``).

    Returns
    -------
    ShardedResult
        Gathered samples ``(n, *event)`` and per-block reports, identical on every rank (a
        population run reports each block's acceptance, the run's NFE, and each rank's
        divergences and warnings on its first block).

    Raises
    ------
    Exception
        Whatever a block raised on any rank, raised on every rank (see :func:`agree`).
    """
    s = session or Session()
    if (event_shape is None) == (init is None):
        raise InputError("pass exactly one of event_shape=(...) (start from the sampler's prior) or init=fn(m, g) -> x0")
    plan = BlockPlan.of(n, block, s)
    dev = torch.device(device) if device is not None else s.device
    per_block = isinstance(energy, PerBlock)
    if callable(getattr(sampler, "sample_sharded", None)):  # one population over every block (SMC)
        if per_block:
            raise InputError("a sharded SMC population has one target: pass one energy, not PerBlock")
        return _sample_population(sampler, energy, plan, s, seed=seed, event_shape=event_shape, init=init,
                                  device=dev, dtype=dtype, progress=progress and s.is_main, **kwargs)
    results = []
    with all_or_none(s):
        for b in plan.blocks:
            start, stop = plan.bounds(b)
            g = block_generator(seed, b, dev)
            show = progress and s.is_main
            target = energy.for_rows(start, stop) if per_block else energy
            if init is not None:
                res = sampler.sample(target, init(stop - start, g), generator=g, progress=show, **kwargs)
            else:
                extra = {} if dtype is None else {"dtype": dtype}
                res = sampler.sample(target, shape=(stop - start, *event_shape), generator=g, device=dev,
                                     progress=show, **extra, **kwargs)
            results.append((b, res))
    reports = [BlockReport.of(b, res) for b, res in results]
    like = results[0][1].samples if results else None
    meta = all_gather_objects((reports, None if like is None else (tuple(like.shape[1:]), like.dtype)), s)
    blocks = tuple(sorted((r for rs, _ in meta for r in rs), key=lambda r: r.block))
    rest, dt = next(m for _, m in meta if m is not None)
    if results:
        local = torch.cat([res.samples.detach() for _, res in results])
    else:
        local = torch.zeros((0,) + rest, dtype=dt, device=dev)
    return ShardedResult(samples=gather_rows(local, plan, s), blocks=blocks, plan=plan)


def _sample_population(sampler, energy, plan: BlockPlan, s: Session, *, seed: int, **kwargs) -> ShardedResult:
    """:func:`sample` for a sampler that runs one population over the blocks (``sampler.sample_sharded``)."""
    with all_or_none(s):
        res = sampler.sample_sharded(energy, plan, s, seed=seed, **kwargs)
    info = res.info
    per_chain = info.get("acceptance_per_chain")
    extra = tuple((k, float(info.get(k))) for k in EXTRA_KEYS if info.get(k) is not None)
    reports, offset = [], 0
    for k, b in enumerate(plan.blocks):
        lo, hi = plan.bounds(b)
        acc = None if per_chain is None else float(per_chain[offset:offset + hi - lo].double().mean())
        reports.append(BlockReport(block=b, n=hi - lo, nfe=int(info["nfe"]), acceptance=acc,
                                   divergences=int(info.get("divergences", 0) or 0) if k == 0 else 0, step_size=None,
                                   warnings=tuple(getattr(res, "warnings", ())) if k == 0 else (), extra=extra))
        offset += hi - lo
    meta = all_gather_objects(reports, s)
    blocks = tuple(sorted((r for rs in meta for r in rs), key=lambda r: r.block))
    population = dict(log_z=float(info["log_z"]), n_resampled=int(info["n_resampled"]),
                      ess=info["ess"].clone(), resampled=info["resampled"].clone())
    return ShardedResult(samples=gather_rows(res.samples.detach(), plan, s), blocks=blocks, plan=plan,
                         population=population)


# ----------------------------------------------------------------------------- SMC collectives
def resample_indices(log_weights: Tensor, generator: torch.Generator, method: str = "systematic") -> Tensor:
    """``(N,)`` int64 ancestor indices from ``(N,)`` global log-weights.

    Computed in float64 on the CPU, so every rank that passes the same weights and an identically
    seeded generator (:func:`shared_generator`) gets the same indices.

    Parameters
    ----------
    log_weights : Tensor
        ``(N,)`` unnormalised log-weights (``-inf`` allowed, not all).
    generator : torch.Generator
        A CPU generator in the same state on every rank.
    method : {"systematic", "stratified", "multinomial"}
        Systematic: one uniform, particle ``i`` gets ``floor`` or ``ceil`` of ``N w_i`` copies;
        stratified: one uniform in each of the ``N`` strata; multinomial: ``N`` independent draws
        (the schemes of :mod:`ebmcompose.resampling`, which ``samplers.SMC`` uses too).
    """
    lw = log_weights.detach().to("cpu", torch.float64).flatten()
    if lw.numel() == 0 or not bool(torch.isfinite(lw).any()) or bool(torch.isnan(lw).any()) or bool((lw == math.inf).any()):
        raise InputError("log_weights must be non-empty, without NaN or +inf, with at least one finite entry")
    if method not in SCHEMES:
        raise InputError(f"method must be one of {', '.join(map(repr, SCHEMES))}, got {method!r}")
    return resample(lw, method, generator)


def take_rows(local: Tensor, indices: Tensor, plan: BlockPlan, s: Session) -> Tensor:
    """Collective: this rank's rows of the resampled population ``global[indices]``.

    Every rank gathers the whole population (``O(N · event)`` traffic per rank) and keeps the
    rows it holds, ``global[indices[plan.rows]]``.

    How SMC resamples globally, on every rank at each resampling step::

        lw = gather_rows(local_log_weights, plan, s)           # (N,) same on every rank
        if ess(lw) < threshold * N:                            # same decision everywhere
            idx = resample_indices(lw, resample_gen)           # resample_gen = shared_generator(seed, "resample")
            x_local = take_rows(x_local, idx, plan, s)         # and any other per-particle tensor
            local_log_weights = zeros like before

    and mutates each block with its own :func:`block_generator`, so that the population does not
    depend on the number of ranks.

    Parameters
    ----------
    local : Tensor
        ``(m, *rest)`` this rank's rows (``plan.rows``).
    indices : Tensor
        ``(N,)`` ancestor indices, the same on every rank.
    """
    indices = indices.to(torch.long).cpu()
    if indices.shape != (plan.n,):
        raise InputError(f"indices must have shape ({plan.n},), got {tuple(indices.shape)}")
    whole = gather_rows(local, plan, s)
    return whole[indices[plan.rows].to(whole.device)]
