"""ε-prediction networks as (score-only) energies: ``score(x, t) = −ε(x, t) / σ_t``.

:class:`EpsilonModel` wraps any network ``net(x, t[, cond])`` that predicts the noise of a VP
diffusion — a plain ``nn.Module`` or function, or a diffusers ``UNet2DModel`` /
``UNet2DConditionModel`` — as an :class:`~ebmcompose.Energy` leaf with ``grad = ε / σ_t``.

A conditional model hands out leaves, :meth:`EpsilonModel.condition` and
:meth:`EpsilonModel.unconditional`, that compose with the algebra::

    u, c1, c2 = m.unconditional(), m.condition(1), m.condition(2)
    and_ = ec.conjunction(u, [c1, c2], weight=3.0)       # the paper's AND
    cfg = u + 7.5 * (c1 - u)                              # classifier-free guidance

All leaves of one model that appear in an expression are evaluated in **one** forward pass: the
inputs are concatenated along the batch (``L`` leaves → batch ``L·B``), optionally in chunks of
``max_batch`` rows to cap memory. NFE counts network forwards.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .energy import ENERGY, Energy, LeafGroup, ScoreOnlyError
from .schedule import VPSchedule

__all__ = ["EpsilonModel", "ConditionedEpsilon"]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")
_TIMESTEPS = ("continuous", "discrete")

_NO_CONDITION = object()  # marker: call the network without a condition argument


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


def _is_diffusers_model(net) -> bool:
    return type(net).__module__.startswith("diffusers.") and hasattr(net, "config")


class EpsilonModel(Energy, LeafGroup):
    """Wrap an ε-network as a score-only energy, ``grad(x, t) = ε(x, t) / σ_t``.

    The model itself is the unconditional leaf; :meth:`condition` gives conditional leaves.

    Parameters
    ----------
    net : nn.Module or callable
        ``net(x, t)`` or ``net(x, t, cond)`` (or ``net(x, t, **{condition_kwarg: cond})``)
        returning ε shaped like ``x``; a diffusers model's output ``.sample`` is unwrapped, and
        an output with twice the input channels (learned variance) is cut to its first half.
    schedule : VPSchedule
        The noise schedule the network was trained with.
    prediction : {"epsilon", "v_prediction", "sample"}
        What the network predicts; converted to ε with ``ε = α v + σ x`` (v) or
        ``ε = (x − α x̂0) / σ`` (sample).
    timestep : {"continuous", "discrete"}, optional
        What the network takes as time: ``t ∈ [0, 1]`` or the integer step
        ``schedule.to_discrete(t)``. Default: discrete for diffusers models and discrete
        schedules, else continuous.
    time_scale : float
        Multiplies continuous ``t`` before the call (e.g. 1000 for nets trained on ``t·1000``).
    condition_kwarg : str, optional
        Keyword the network takes the condition by (``"encoder_hidden_states"``,
        ``"class_labels"``); default: detected for diffusers models, else passed positionally.
    null_condition : Tensor or int, optional
        The condition meaning "no condition" for classifier-free-guidance models (a null label or
        an empty-prompt embedding). With it, unconditional and conditional leaves share one
        forward; without it the unconditional leaf calls ``net(x, t)``.
    sigma_floor : float
        Lower bound on ``σ_t`` in ``ε / σ_t`` (no division by zero at ``t = 0``).
    max_batch : int, optional
        Largest batch of one forward; bigger joint batches are chunked (more NFE, less memory).
    name : str, optional
        Name in printed formulas.

    Notes
    -----
    ``has_energy`` is ``False``: an ε-network defines a score field, not an energy. Use ULA-type
    samplers, or an energy-parameterised model for Metropolis corrections and mixtures.
    """

    has_energy = False
    time_dependent = True

    def __init__(
        self,
        net: Callable,
        schedule: VPSchedule,
        *,
        prediction: str = "epsilon",
        timestep: Optional[str] = None,
        time_scale: float = 1.0,
        condition_kwarg: Optional[str] = None,
        null_condition: Any = None,
        sigma_floor: float = 1e-4,
        max_batch: Optional[int] = None,
        name: Optional[str] = None,
    ):
        super().__init__()
        if not callable(net):
            raise TypeError(f"EpsilonModel needs a callable network net(x, t[, cond]), got {type(net).__name__}")
        if not isinstance(schedule, VPSchedule):
            raise TypeError(
                f"schedule must be an ec.VPSchedule, got {type(schedule).__name__}; for a diffusers "
                "scheduler use ec.VPSchedule.from_diffusers(scheduler)"
            )
        if prediction not in _PREDICTIONS:
            raise ValueError(f"prediction must be one of {_PREDICTIONS}, got {prediction!r}")
        diffusers_net = _is_diffusers_model(net)
        if timestep is None:
            timestep = "discrete" if (diffusers_net or schedule.is_discrete) else "continuous"
        if timestep not in _TIMESTEPS:
            raise ValueError(f"timestep must be one of {_TIMESTEPS}, got {timestep!r}")
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be a positive integer or None, got {max_batch!r}")
        if not sigma_floor > 0:
            raise ValueError(f"sigma_floor must be > 0, got {sigma_floor}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.timestep = timestep
        self.time_scale = float(time_scale)
        self.condition_kwarg = condition_kwarg or (_diffusers_condition_kwarg(net) if diffusers_net else None)
        self.null_condition = null_condition
        self.sigma_floor = float(sigma_floor)
        self.max_batch = max_batch
        self.name = name or ("EpsilonModel" if not isinstance(net, nn.Module) else type(net).__name__)

    # ------------------------------------------------------------------ leaves
    def condition(self, c: Any, name: Optional[str] = None, per_sample: bool = False) -> "ConditionedEpsilon":
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
        return ConditionedEpsilon(self, c, name=name, per_sample=per_sample)

    def unconditional(self) -> "Energy":
        """The unconditional leaf ``E(x, t)`` (the model itself, or ``condition(null_condition)``)."""
        if self.null_condition is None:
            return self
        return ConditionedEpsilon(self, self.null_condition, name=f"{self.name}[∅]")

    def leaf_group(self) -> LeafGroup:
        return self

    def _condition_of(self, leaf) -> Tuple[Any, bool]:
        """``(condition, per_sample)`` of one of this model's leaves."""
        if leaf is self:
            return (self.null_condition if self.null_condition is not None else _NO_CONDITION), False
        return leaf.cond, leaf.per_sample

    # ------------------------------------------------------------------ evaluation
    def _energy(self, x, t):
        raise ScoreOnlyError(self._score_only_message())

    def _grad(self, x, t, create_graph=False):
        outs, _ = self.evaluate_leaves([self], [2], x, t, create_graph)
        return outs[0][1]

    def _energy_and_grad(self, x, t, create_graph=False):
        raise ScoreOnlyError(self._score_only_message())

    def evaluate_leaves(self, leaves, needs, x, t, create_graph):
        """One forward for all ``leaves`` (chunked by ``max_batch``); returns ``[(None, grad)]`` and NFE."""
        if any(n & ENERGY for n in needs):
            raise ScoreOnlyError(self._score_only_message())
        if t is None:
            raise ValueError(f"{self.name} is a diffusion model: pass t in (0, 1] (0 = data, 1 = noise)")
        b = x.shape[0]
        conds = [self._condition_of(leaf) for leaf in leaves]
        # Leaves without any condition cannot share a batch with conditioned ones.
        plain = [i for i, (c, _) in enumerate(conds) if c is _NO_CONDITION]
        cond = [i for i, (c, _) in enumerate(conds) if c is not _NO_CONDITION]
        grads: List[Optional[Tensor]] = [None] * len(leaves)
        nfe = 0
        sigma = self.schedule.sigma(t, floor=self.sigma_floor)  # (B,)
        inv_sigma = (1.0 / sigma).reshape((b,) + (1,) * (x.dim() - 1))
        for idx in (plain, cond):
            if not idx:
                continue
            n = len(idx)
            xs = x.repeat((n,) + (1,) * (x.dim() - 1))
            ts = t.repeat(n)
            cs = None
            if idx is cond:
                cs = torch.cat([_expand_condition(conds[i][0], b, x.device, conds[i][1]) for i in idx], 0)
            eps, k = self._forward_chunked(xs, ts, cs, create_graph)
            nfe += k
            for j, i in enumerate(idx):
                grads[i] = eps[j * b : (j + 1) * b] * inv_sigma
        return [(None, g) for g in grads], nfe

    def epsilon(self, x: Tensor, t, cond: Any = _NO_CONDITION, per_sample: bool = False) -> Tensor:
        """The network's ε-prediction ``(B, *event)`` at ``(x, t)`` (for debugging / DDIM).

        Parameters
        ----------
        x : Tensor
            ``(B, *event)``.
        t : float or Tensor
            Diffusion time, scalar or ``(B,)``.
        cond : optional
            A condition (as in :meth:`condition`); default unconditional.
        """
        tt = self._validate(x, t)
        cs = None if cond is _NO_CONDITION else _expand_condition(cond, x.shape[0], x.device, per_sample)
        with torch.no_grad():
            return self._forward_chunked(x, tt, cs, False)[0]

    def _forward_chunked(self, x, t, cond, create_graph) -> Tuple[Tensor, int]:
        n = x.shape[0]
        step = self.max_batch or n
        outs = []
        ctx = torch.enable_grad() if create_graph else torch.no_grad()
        with ctx:
            for s in range(0, n, step):
                c = None if cond is None else cond[s : s + step]
                outs.append(self._forward(x[s : s + step], t[s : s + step], c))
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 0)), len(outs)

    def _forward(self, x: Tensor, t: Tensor, cond) -> Tensor:
        if self.timestep == "discrete":
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
        if out.dim() == x.dim() and x.dim() >= 2 and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
            out = out[:, : x.shape[1]]  # learned-variance models: ε is the first half
        if out.shape != x.shape:
            raise ValueError(
                f"{self.name} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; an ε-network "
                "must return a prediction shaped like its input"
            )
        if self.prediction == "epsilon":
            return out
        ab = self.schedule.alpha_bar(t).reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
        alpha, sigma = ab.sqrt(), (1 - ab).clamp_min(self.sigma_floor**2).sqrt()
        if self.prediction == "v_prediction":
            return alpha * out + sigma * x
        return (x - alpha * out) / sigma  # prediction == "sample"

    def _formula(self):
        return self.name


def _expand_condition(c: Any, b: int, device, per_sample: bool = False) -> Tensor:
    """A condition as a ``(B, *cond)`` tensor: a shared condition is repeated ``B`` times."""
    c = _as_condition(c)
    c = c.to(device)
    if per_sample:
        if c.dim() == 0 or c.shape[0] != b:
            raise ValueError(
                f"a per-sample condition needs shape (B={b}, ...), got {tuple(c.shape)}; pass "
                "per_sample=False to share one condition across the batch"
            )
        return c
    return c.unsqueeze(0).expand((b,) + tuple(c.shape))


def _as_condition(c: Any) -> Tensor:
    if isinstance(c, int) and not isinstance(c, bool):
        return torch.tensor(c, dtype=torch.long)
    if not isinstance(c, Tensor):
        raise TypeError(f"a condition must be a tensor or an int label, got {type(c).__name__}")
    return c


class ConditionedEpsilon(Energy):
    """A conditional leaf ``E(x, t | c)`` of an :class:`EpsilonModel` (see ``model.condition``).

    Evaluated jointly with the other leaves of the same model in one forward pass.
    """

    has_energy = False
    time_dependent = True

    def __init__(self, model: EpsilonModel, cond: Any, name: Optional[str] = None, per_sample: bool = False):
        super().__init__()
        if not isinstance(model, EpsilonModel):
            raise TypeError("ConditionedEpsilon needs an EpsilonModel; use model.condition(c)")
        self.model = model
        cond = _as_condition(cond)
        self.cond = cond
        self.per_sample = bool(per_sample)
        if name is None:
            label = str(cond.item()) if cond.numel() == 1 else "×".join(map(str, cond.shape))
            name = f"{model.name}[{label}]"
        self.name = name

    def leaf_group(self) -> LeafGroup:
        return self.model

    def _energy(self, x, t):
        raise ScoreOnlyError(self._score_only_message())

    def _grad(self, x, t, create_graph=False):
        outs, _ = self.model.evaluate_leaves([self], [2], x, t, create_graph)
        return outs[0][1]

    def _energy_and_grad(self, x, t, create_graph=False):
        raise ScoreOnlyError(self._score_only_message())
