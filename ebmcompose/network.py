"""Shared machinery for learned diffusion models as energies: conditions and batched forwards.

:class:`NetworkModel` is the base of :class:`~ebmcompose.EpsilonModel` (ε-prediction, score
only) and :class:`~ebmcompose.DiffusionEnergy` (a network that outputs a scalar energy). It

* maps continuous ``t ∈ [0, 1]`` to what the network takes (continuous or the integer step of a
  diffusers scheduler),
* hands out leaves: the model itself (unconditional) and :meth:`NetworkModel.condition`,
* evaluates **all leaves of one model in an expression in one forward pass** by concatenating
  their inputs along the batch (``L`` leaves → batch ``L·B``), chunked by ``max_batch``.

Subclasses implement :meth:`NetworkModel._outputs`: energies and/or gradients of a joint batch.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .checks import check_positive_int
from .energy import ENERGY, GRAD, Energy, LeafGroup
from .errors import InputError, InputTypeError
from .schedule import VPSchedule

__all__ = ["NetworkModel", "Conditioned", "NO_CONDITION"]

_TIMESTEPS = ("continuous", "discrete")

#: Marker: call the network without a condition argument.
NO_CONDITION = object()


def _diffusers_condition_kwarg(net) -> Optional[str]:
    """How a diffusers model takes its condition, from its class and config."""
    cls = type(net).__name__
    cfg = getattr(net, "config", None)
    if cls == "UNet2DConditionModel":
        return "encoder_hidden_states"
    if cfg is not None and (
        getattr(cfg, "num_class_embeds", None) is not None or getattr(cfg, "class_embed_type", None) is not None
    ):
        return "class_labels"
    return None


def is_diffusers_model(net) -> bool:
    """Whether ``net`` is a diffusers model (its outputs carry ``.sample``)."""
    return type(net).__module__.startswith("diffusers.") and hasattr(net, "config")


def as_condition(c: Any) -> Tensor:
    """A condition as a tensor (ints become ``long`` labels)."""
    if isinstance(c, int) and not isinstance(c, bool):
        return torch.tensor(c, dtype=torch.long)
    if not isinstance(c, Tensor):
        raise InputTypeError(f"a condition must be a tensor or an int label, got {type(c).__name__}")
    return c


def requires_condition(net, kwarg: Optional[str]) -> bool:
    """Whether ``net`` cannot be called without its condition keyword ``kwarg`` (no default)."""
    if kwarg is None:
        return False
    try:
        params = inspect.signature(net.forward if isinstance(net, nn.Module) else net).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(kwarg)
    return p is not None and p.default is inspect.Parameter.empty


def expand_condition(c: Any, b: int, device, per_sample: bool = False, dtype=None) -> Tensor:
    """A condition as a ``(B, *cond)`` tensor: a shared condition is repeated ``B`` times.

    A floating condition is cast to ``dtype`` when given (the samples' dtype); labels stay ints.
    """
    c = as_condition(c)
    c = c.to(device=device, dtype=dtype) if dtype is not None and c.is_floating_point() else c.to(device)
    if per_sample:
        if c.dim() == 0 or c.shape[0] != b:
            raise InputError(
                f"a per-sample condition needs shape (B={b}, ...), got {tuple(c.shape)}; pass "
                "per_sample=False to share one condition across the batch"
            )
        return c
    return c.unsqueeze(0).expand((b,) + tuple(c.shape))


class NetworkModel(Energy, LeafGroup):
    """Base class: a (conditional) network of ``(x, t[, cond])`` as a family of energy leaves.

    Parameters
    ----------
    net : nn.Module or callable
        The network. Called as ``net(x, t)``, ``net(x, t, cond)`` or
        ``net(x, t, **{condition_kwarg: cond})``; diffusers outputs are unwrapped (``.sample``).
    schedule : VPSchedule
        The noise schedule the network was trained with.
    timestep : {"continuous", "discrete"}, optional
        What the network takes as time: ``t ∈ [0, 1]`` (times ``time_scale``) or the integer
        step ``schedule.to_discrete(t)``. Default: discrete for diffusers models and discrete
        schedules, else continuous.
    time_scale : float
        Multiplies continuous ``t`` before the call.
    condition_kwarg : str, optional
        Keyword for the condition (``"encoder_hidden_states"``, ``"class_labels"``); default:
        detected for diffusers models, else passed positionally.
    null_condition : Tensor or int, optional
        The condition meaning "no condition" (a null label, an empty-prompt embedding
        ``(seq, dim)`` or ``(1, seq, dim)``) for models trained with condition dropout. With it,
        unconditional and conditional leaves share one forward; without it the unconditional
        leaf calls ``net(x, t)``, which a cross-attention UNet cannot do (a clear error says so).
        Registered as a (non-persistent) buffer, so ``.to()`` moves and casts it.
    sigma_floor : float
        Lower bound on ``σ_t`` wherever it divides (no division by zero at ``t = 0``).
    max_batch : int, optional
        Largest batch of one forward; bigger joint batches are chunked (more NFE, less memory).
    name : str, optional
        Name in printed formulas.
    """

    time_dependent = True

    def __init__(
        self,
        net: Callable,
        schedule: VPSchedule,
        *,
        timestep: Optional[str] = None,
        time_scale: float = 1.0,
        condition_kwarg: Optional[str] = None,
        null_condition: Any = None,
        sigma_floor: float = 1e-4,
        max_batch: Optional[int] = None,
        name: Optional[str] = None,
    ):
        super().__init__()
        kind = type(self).__name__
        if not callable(net):
            raise InputTypeError(f"{kind} needs a callable network net(x, t[, cond]), got {type(net).__name__}")
        if not isinstance(schedule, VPSchedule):
            raise InputTypeError(
                f"schedule must be an ec.VPSchedule, got {type(schedule).__name__}; for a diffusers "
                "scheduler use ec.VPSchedule.from_diffusers(scheduler)"
            )
        diffusers_net = is_diffusers_model(net)
        if timestep is None:
            timestep = "discrete" if (diffusers_net or schedule.is_discrete) else "continuous"
        if timestep not in _TIMESTEPS:
            raise InputError(f"timestep must be one of {_TIMESTEPS}, got {timestep!r}")
        if max_batch is not None:
            check_positive_int(max_batch, "max_batch")
        if not sigma_floor > 0:
            raise InputError(f"sigma_floor must be > 0, got {sigma_floor}")
        self.net = net
        self.schedule = schedule
        self.timestep = timestep
        self.time_scale = float(time_scale)
        self.condition_kwarg = condition_kwarg or (_diffusers_condition_kwarg(net) if diffusers_net else None)
        # diffusers models take float timesteps: fractional ones (LMS, Euler) are passed as they are
        self._fractional_timesteps = diffusers_net and schedule.is_discrete
        self._condition_required = requires_condition(net, self.condition_kwarg)
        null = None if null_condition is None else self.shared_condition(as_condition(null_condition))
        self.register_buffer("null_condition", null, persistent=False)
        self.sigma_floor = float(sigma_floor)
        self.max_batch = max_batch
        self.name = name or (type(net).__name__ if isinstance(net, nn.Module) else kind)

    # ------------------------------------------------------------------ leaves
    def shared_condition(self, c: Tensor, per_sample: bool = False) -> Tensor:
        """``c`` as one shared condition: a cross-attention model's ``(1, seq, dim)`` embedding
        (what a text encoder returns for one prompt) becomes ``(seq, dim)``."""
        if per_sample or self.condition_kwarg != "encoder_hidden_states" or c.dim() != 3:
            return c
        if c.shape[0] != 1:
            raise InputError(
                f"{self.name}: a shared prompt embedding is (seq, dim) or (1, seq, dim), got "
                f"{tuple(c.shape)}; for one embedding per sample pass per_sample=True, or make one "
                "leaf per prompt with model.condition(embedding[i])"
            )
        return c[0]

    def check_unconditional(self) -> None:
        """Raise a clear error if the network cannot run without a condition and has no null_condition."""
        if self._condition_required and self.null_condition is None:
            raise InputError(
                f"{self.name} needs {self.condition_kwarg} on every call (a cross-attention network), so "
                "its unconditional leaf needs a null_condition: pass EpsilonModel(..., null_condition=E) "
                "with E the text encoder's embedding of the empty prompt \"\" ((seq, dim) or (1, seq, dim)), "
                "or use ebmcompose.pipelines.ComposablePipeline, which makes it"
            )

    def condition(self, c: Any, name: Optional[str] = None, per_sample: bool = False) -> "Conditioned":
        """The conditional leaf ``E(x, t | c)``.

        Parameters
        ----------
        c : Tensor or int
            One condition shared by all samples (``(*cond)``: a label, an embedding ``(L, D)``);
            ints become label tensors. With ``per_sample=True``, one per sample ``(B, *cond)``.
        name : str, optional
            Name in printed formulas (default: ``model[c]``).
        per_sample : bool
            Whether ``c`` holds one condition per sample.
        """
        return Conditioned(self, c, name=name, per_sample=per_sample)

    def unconditional(self) -> Energy:
        """The unconditional leaf ``E(x, t)``: the model itself, or ``condition(null_condition)``."""
        if self.null_condition is None:
            return self
        return Conditioned(self, self.null_condition, name=f"{self.name}[∅]")

    def leaf_group(self) -> LeafGroup:
        return self

    def _condition_of(self, leaf) -> Tuple[Any, bool]:
        """``(condition, per_sample)`` of one of this model's leaves."""
        if leaf is self:
            return (self.null_condition if self.null_condition is not None else NO_CONDITION), False
        return leaf.cond, leaf.per_sample

    # ------------------------------------------------------------------ leaf hooks (alone)
    def _energy(self, x, t):
        return self.evaluate_leaves([self], [ENERGY], x, t, False)[0][0][0]

    def _grad(self, x, t, create_graph=False):
        return self.evaluate_leaves([self], [GRAD], x, t, create_graph)[0][0][1]

    def _energy_and_grad(self, x, t, create_graph=False):
        return self.evaluate_leaves([self], [ENERGY | GRAD], x, t, create_graph)[0][0]

    # ------------------------------------------------------------------ joint evaluation
    def evaluate_leaves(self, leaves, needs, x, t, create_graph):
        """One forward for all ``leaves`` (chunked by ``max_batch``); ``[(energy, grad)]`` and NFE."""
        if t is None:
            raise InputError(f"{self.name} is a diffusion model: pass t in (0, 1] (0 = data, 1 = noise)")
        need = 0
        for n in needs:
            need |= n
        b = x.shape[0]
        conds = [self._condition_of(leaf) for leaf in leaves]
        plain = [i for i, (c, _) in enumerate(conds) if c is NO_CONDITION]
        if plain:
            self.check_unconditional()
        conditioned = [i for i, (c, _) in enumerate(conds) if c is not NO_CONDITION]
        results: List[Tuple[Optional[Tensor], Optional[Tensor]]] = [(None, None)] * len(leaves)
        nfe = 0
        for idx in (plain, conditioned):
            if not idx:
                continue
            n = len(idx)
            xs = x if n == 1 else x.repeat((n,) + (1,) * (x.dim() - 1))
            ts = t if n == 1 else t.repeat(n)
            cs = None
            if idx is conditioned:
                parts = [expand_condition(conds[i][0], b, x.device, conds[i][1], x.dtype) for i in idx]
                cs = parts[0] if n == 1 else torch.cat(parts, 0)
            e, g, k = self._chunked(xs, ts, cs, need, create_graph)
            nfe += k
            for j, i in enumerate(idx):
                sl = slice(j * b, (j + 1) * b)
                results[i] = (None if e is None else e[sl], None if g is None else g[sl])
        return results, nfe

    def _chunked(self, x, t, cond, need, create_graph):
        n = x.shape[0]
        step = self.max_batch or n
        es, gs = [], []
        for s in range(0, n, step):
            c = None if cond is None else cond[s : s + step]
            e, g = self._outputs(x[s : s + step], t[s : s + step], c, need, create_graph)
            es.append(e)
            gs.append(g)
        cat = lambda v: None if v[0] is None else (v[0] if len(v) == 1 else torch.cat(v, 0))
        return cat(es), cat(gs), len(es)

    def _outputs(self, x: Tensor, t: Tensor, cond, need: int, create_graph: bool):
        """Energies ``(N,)`` (or ``None``) and gradients like ``x`` (or ``None``) of a joint batch."""
        raise NotImplementedError

    def _call_net(self, x: Tensor, t: Tensor, cond) -> Tensor:
        """The raw network output at ``(x, t[, cond])`` (diffusers outputs unwrapped)."""
        if self.timestep == "discrete" and self._fractional_timesteps:
            tin = self.schedule.to_timestep(t).to(x.device)
        elif self.timestep == "discrete":
            tin = self.schedule.to_discrete(t).to(x.device)
        else:
            tin = t * self.time_scale if self.time_scale != 1.0 else t
        if cond is None:
            out = self.net(x, tin)
        elif self.condition_kwarg is not None:
            out = self.net(x, tin, **{self.condition_kwarg: cond})
        else:
            out = self.net(x, tin, cond)
        if hasattr(out, "sample") and not isinstance(out, Tensor):
            out = out.sample
        elif isinstance(out, tuple):
            out = out[0]
        return out

    def _sigma(self, t: Tensor, like: Tensor) -> Tensor:
        """``σ_t`` floored, shaped to broadcast against ``like``."""
        s = self.schedule.sigma(t, floor=self.sigma_floor).to(like.dtype)
        return s.reshape((-1,) + (1,) * (like.dim() - 1))

    def _formula(self):
        return self.name


class Conditioned(Energy):
    """A conditional leaf ``E(x, t | c)`` of a :class:`NetworkModel` (see ``model.condition``).

    Evaluated jointly with the other leaves of the same model in one forward pass. The condition
    is a (non-persistent) buffer, so ``.to()`` moves and casts it with the expression.
    """

    time_dependent = True

    def __init__(self, model: NetworkModel, cond: Any, name: Optional[str] = None, per_sample: bool = False):
        super().__init__()
        if not isinstance(model, NetworkModel):
            raise InputTypeError("a conditional leaf needs an EpsilonModel or DiffusionEnergy; use model.condition(c)")
        self.model = model
        self.register_buffer("cond", model.shared_condition(as_condition(cond), per_sample), persistent=False)
        self.per_sample = bool(per_sample)
        if name is None:
            c = self.cond
            label = str(c.item()) if c.numel() == 1 else "×".join(map(str, c.shape))
            name = f"{model.name}[{label}]"
        self.name = name

    @property
    def has_energy(self) -> bool:  # type: ignore[override]
        return self.model.has_energy

    def leaf_group(self) -> LeafGroup:
        return self.model

    def _energy(self, x, t):
        return self.model.evaluate_leaves([self], [ENERGY], x, t, False)[0][0][0]

    def _grad(self, x, t, create_graph=False):
        return self.model.evaluate_leaves([self], [GRAD], x, t, create_graph)[0][0][1]

    def _energy_and_grad(self, x, t, create_graph=False):
        return self.model.evaluate_leaves([self], [ENERGY | GRAD], x, t, create_graph)[0][0]
