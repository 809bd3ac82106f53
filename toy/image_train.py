"""One resumable trainer for conditional image diffusion models (ε- or energy-parameterised).

Any data source with ``sample(n, generator) -> (images, cond, ...)`` (images ``(n, 3, H, W)`` in
``[0, 1]``, conditions ``(n, cond_dim)``; e.g. :class:`toy.scenes.PositionScenes`) trains a
:class:`~toy.scene_nets.SceneUNet` by denoising score matching on images scaled to ``[-1, 1]``:
``x_t = sqrt(alpha_bar_t) x_0 + σ_t ε``, ``t ~ U[t_min, 1]`` on a continuous cosine schedule,
and the loss (mean squared error per pixel)

* ``"epsilon"``: ``ε̂(x_t, t, c) − ε`` (an :class:`ebmcompose.EpsilonModel`, score only);
* ``"energy"``: ``σ_t ∇x E(x_t, t | c) − ε`` with ``E = ½‖g‖²`` (an
  :class:`ebmcompose.DiffusionEnergy` around :class:`~toy.scene_nets.ImageResidualDenoiser`),
  taken *through* the gradient (``create_graph=True``).

With probability ``cond_dropout`` a condition is replaced by the null condition (zeros), so one
network gives the conditional and the unconditional leaf. AdamW with linear warm-up and a cosine
decay, gradient clipping, and an EMA of the weights (what the model checkpoint holds).

**Resumable**: every ``checkpoint_every`` steps (and when stopping) the run folder gets
``resume.safetensors/.json`` (weights, EMA, optimiser moments, the generator's state, the losses,
the step) and ``model.safetensors/.json`` (the EMA net, loadable with :func:`load_model`), both
written atomically. ``train(..., resume=True)`` continues bit-identically (same machine, torch
build and thread count): ``N`` steps in one go equal ``N/2``, stop, resume, ``N/2``.

All checkpoint reading and writing goes through :func:`write_checkpoint` / :func:`read_checkpoint`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

import ebmcompose as ec
from ebmcompose import checkpoint as ckpt

from .scene_nets import FAMILIES, SceneUNet, build_model
from .train import schedule_config, schedule_from_config

__all__ = [
    "TrainConfig",
    "FAMILY_DEFAULTS",
    "TrainResult",
    "SIZES",
    "config_for",
    "make_source",
    "train",
    "save_model",
    "load_model",
    "write_checkpoint",
    "read_checkpoint",
    "MODEL_KINDS",
]

#: Checkpoint kinds of model files, by parameterisation, and of resume files.
MODEL_KINDS = {"epsilon": "toy.SceneUNet/epsilon", "energy": "toy.SceneUNet/energy"}
RESUME_KIND = "toy.SceneUNet/resume"
PARAMETERISATIONS = ("epsilon", "energy")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (JSON-able; stored in every checkpoint).

    Attributes
    ----------
    family : {"position", "attribute", "joint"}
        Condition family (data source and condition encoder).
    parameterisation : {"epsilon", "energy"}
    resolution : int
        Image side.
    channels, layers_per_block, norm_groups : net size (see :class:`~toy.scene_nets.SceneUNet`).
    steps, batch_size : int
        Optimiser steps and images per step.
    lr, lr_final, warmup, weight_decay : AdamW learning rate (linear warm-up over ``warmup``
        steps, cosine decay to ``lr_final``) and weight decay.
    ema_decay : float
        EMA decay per step (warmed up as ``min(ema_decay, (1 + k) / (10 + k))``).
    cond_dropout : float
        Probability of replacing a condition by the null condition.
    t_min : float
        Smallest training time.
    grad_clip : float
        Max global gradient norm (0: none).
    seed : int
        Seeds the initialisation and the one generator of data, dropout, ``t`` and ``ε``.
    checkpoint_every : int
        Steps between resume checkpoints (when a run folder is given).
    n_objects : (int, int)
        Objects per scene for the position and joint families.
    condition_map : bool
        Give position and joint nets the position map input (see :class:`~toy.scene_nets.SceneUNet`);
        ignored for attributes.
    attribute_labels : {"one", "multi"}
        How the attribute family labels its images (:class:`toy.scenes.AttributeScenes`).
    scale_shift : bool
        FiLM conditioning of the net's ResNet blocks (see :class:`~toy.scene_nets.SceneUNet`).
    prediction : {"v", "epsilon"}, optional
        What the net's output means (default ``"v"``, see :class:`~toy.scene_nets.SceneUNet`). An
        ε-model's loss is then ``‖v̂ − v‖²`` (``v = α_t ε − σ_t x_0``); an energy model's is always
        ``‖σ_t ∇E − ε‖²``, with ``E = ½‖σ_t x + α_t g‖²`` for a velocity net.
    """

    family: str = "position"
    parameterisation: str = "epsilon"
    resolution: int = 32
    channels: Tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    norm_groups: int = 8
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    lr_final: float = 2e-5
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.995
    cond_dropout: float = 0.15
    t_min: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    n_objects: Tuple[int, int] = (1, 5)
    condition_map: bool = True
    attribute_labels: str = "one"
    prediction: Optional[str] = None
    scale_shift: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ec.InputError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ec.InputError(f"parameterisation must be 'epsilon' or 'energy', got {self.parameterisation!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "resolution"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ec.InputError(f"{name} must be a positive integer, got {v!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ec.InputError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not 0.0 < self.t_min < 1.0:
            raise ec.InputError(f"t_min must be in (0, 1), got {self.t_min}")
        if self.attribute_labels not in ("one", "multi"):
            raise ec.InputError(f"attribute_labels must be 'one' or 'multi', got {self.attribute_labels!r}")
        if not isinstance(self.scale_shift, bool):
            raise ec.InputError(f"scale_shift must be True or False, got {self.scale_shift!r}")
        if self.prediction is None:
            object.__setattr__(self, "prediction", "v")
        if self.prediction not in ("epsilon", "v"):
            raise ec.InputError(f"prediction must be 'v' or 'epsilon', got {self.prediction!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "n_objects", tuple(int(c) for c in self.n_objects))

    def to_json(self) -> Dict[str, Any]:
        """A JSON-able dict (tuples as lists)."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["n_objects"] = list(self.n_objects)
        return d

    def net_config(self) -> Dict[str, Any]:
        """Keyword arguments of the :class:`~toy.scene_nets.SceneUNet`."""
        return dict(
            family=self.family,
            resolution=self.resolution,
            channels=list(self.channels),
            layers_per_block=self.layers_per_block,
            norm_groups=self.norm_groups,
            condition_map=self.condition_map and self.family != "attribute",
            prediction=self.prediction,
            seed=self.seed,
            scale_shift=self.scale_shift,
        )


#: Named sizes: ``quick`` trains in seconds (tests); ``default`` is what ships (position models
#: ≤ 45 min on one quiet CPU thread; energy models cost ~2.5× per step, hence fewer steps). The
#: attribute family's 6000 steps (:data:`FAMILY_DEFAULTS`) take ~35 min for ε and, not keyed by
#: parameterisation, ~2.5× that for an energy model (none ships).
SIZES: Dict[str, Dict[str, Any]] = {
    "quick": dict(resolution=32, channels=(8, 16), norm_groups=4, steps=30, batch_size=16, warmup=5, checkpoint_every=10, ema_decay=0.9),
    "default": dict(),
}
#: Steps of the default size by parameterisation (see :data:`SIZES`).
DEFAULT_STEPS = {"epsilon": 2400, "energy": 1600}
#: What the default size changes by family: the attribute model conditions by FiLM (an added bias
#: moved colours and sizes but not shapes) and trains longer (shapes are learned last).
FAMILY_DEFAULTS: Dict[str, Dict[str, Any]] = {"attribute": dict(steps=6000, scale_shift=True)}


def config_for(family: str = "position", parameterisation: str = "epsilon", size: str = "default", **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of a named size, with ``overrides`` applied.

    Raises
    ------
    ebmcompose.InputError
        For an unknown size, family or parameterisation.
    """
    if size not in SIZES:
        raise ec.InputError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    kw: Dict[str, Any] = dict(family=family, parameterisation=parameterisation)
    if size == "default":
        kw["steps"] = DEFAULT_STEPS.get(parameterisation, TrainConfig.steps)
        kw.update(FAMILY_DEFAULTS.get(family, {}))
    kw.update(SIZES[size])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)


def make_source(config: TrainConfig):
    """The :mod:`toy.scenes` dataset of ``config.family`` at ``config.resolution``."""
    from . import scenes

    if config.family == "position":
        return scenes.PositionScenes(resolution=config.resolution, n_objects=tuple(config.n_objects))
    if config.family == "joint":
        return scenes.JointPositionScenes(resolution=config.resolution, n_objects=tuple(config.n_objects))
    return scenes.AttributeScenes(resolution=config.resolution, labels=config.attribute_labels)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : EpsilonModel or DiffusionEnergy
        The EMA net as an energy model (``model.unconditional()`` is the null condition).
    net : SceneUNet
        The EMA network (eval mode, frozen).
    config : TrainConfig
    losses : Tensor
        ``(steps done,)`` training loss per step (of the optimised, non-EMA net).
    step : int
        Steps done so far (``config.steps`` when complete).
    """

    model: Any
    net: SceneUNet
    config: TrainConfig
    losses: Tensor
    step: int

    @property
    def complete(self) -> bool:
        return self.step >= self.config.steps


# ---------------------------------------------------------------------------- checkpoint I/O
def write_checkpoint(path, tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> None:
    """Write ``tensors`` and a JSON ``config`` (with a ``"kind"``) atomically at ``path`` (a stem)."""
    ckpt.save(path, dict(tensors), dict(config))


def read_checkpoint(path, kind, missing_hint: Optional[str] = None) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read what :func:`write_checkpoint` wrote: ``(tensors, config)``; ``kind`` is the kind(s) accepted.

    Raises
    ------
    ebmcompose.checkpoint.CheckpointError
        Missing (the message ends with ``missing_hint``), corrupt or of another kind.
    """
    return ckpt.load_state(path, kind=kind, missing_hint=missing_hint)


def _config_dict(config: TrainConfig, kind: str, net: SceneUNet, schedule: ec.VPSchedule, **extra) -> Dict[str, Any]:
    return {
        "kind": kind,
        "parameterisation": config.parameterisation,
        "family": config.family,
        "net": dict(net.config),
        "schedule": schedule_config(schedule),
        "train": config.to_json(),
        **extra,
    }


def save_model(path, net: SceneUNet, config: TrainConfig, *, half: bool = False, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Save the (EMA) net and its config at ``path`` (a stem; ``half``: float16 storage)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    cfg = _config_dict(config, MODEL_KINDS[config.parameterisation], net, ec.VPSchedule.cosine(), storage="float16" if half else "float32")
    if extra:
        cfg.update(dict(extra))
    write_checkpoint(path, state, cfg)


def load_model(path, *, parameterisation: Optional[str] = None, max_batch: Optional[int] = None, missing_hint: Optional[str] = None):
    """Load a model checkpoint (float32 whatever the storage).

    Parameters
    ----------
    path : str or PathLike
        Checkpoint stem or either file.
    parameterisation : {"epsilon", "energy"}, optional
        Required parameterisation (default: whatever the checkpoint holds).
    max_batch : int, optional
        Passed to the energy model.
    missing_hint : str, optional
        How to obtain a missing checkpoint.

    Returns
    -------
    model, net, config
        The energy model, the :class:`~toy.scene_nets.SceneUNet` (eval, frozen) and the saved config.
    """
    kinds = tuple(MODEL_KINDS.values()) if parameterisation is None else (MODEL_KINDS[parameterisation],)
    state, config = read_checkpoint(path, kinds, missing_hint)
    try:
        net = SceneUNet(**config["net"])
        schedule = schedule_from_config(config["schedule"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ckpt.CheckpointError(f"checkpoint {path} cannot rebuild its model: {exc}; regenerate it") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    ckpt.load_into(net, state, source=path)
    net.eval()
    net.requires_grad_(False)
    # channels-last convolutions: ~1.3x faster inference on CPU (benchmarks/results/scene_speed.md)
    net.to(memory_format=torch.channels_last)
    model = build_model(config["parameterisation"], net, schedule, max_batch=max_batch)
    return model, net, config


def _save_resume(run_dir: Path, config: TrainConfig, net, ema, opt, g: torch.Generator, losses: Tensor, step: int) -> None:
    tensors: Dict[str, Tensor] = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for i, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            tensors[f"opt.{i}.{name}"] = v if isinstance(v, Tensor) else torch.tensor(v)
    tensors["generator"] = g.get_state()
    tensors["losses"] = losses[:step].clone()
    cfg = _config_dict(config, RESUME_KIND, net, ec.VPSchedule.cosine(), step=step)
    # model first, resume state last: a resume file always has a model file at least as new
    save_model(run_dir / "model", ema, config, extra={"step": step})
    write_checkpoint(run_dir / "resume", tensors, cfg)


def _load_resume(run_dir: Path, config: TrainConfig, net, ema, opt, g: torch.Generator, losses: Tensor) -> int:
    tensors, cfg = read_checkpoint(run_dir / "resume", RESUME_KIND)
    saved = dict(cfg["train"])
    mine = config.to_json()
    # the length of a run may be extended; everything else must match
    diff = [k for k in mine if k not in ("steps", "checkpoint_every") and saved.get(k) != mine[k]]
    if diff:
        raise ec.InputError(
            f"the resume checkpoint in {run_dir} was made with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); "
            "use the same settings, or another run folder"
        )
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    sd = opt.state_dict()
    state: Dict[int, Dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    g.set_state(tensors["generator"])
    step = int(cfg["step"])
    losses[:step] = tensors["losses"]
    return step


# ---------------------------------------------------------------------------- training
def _draw(source, n: int, g: torch.Generator, tries: int = 5):
    """``(images, cond)`` from ``source``; a crowded layout that cannot be placed (an
    :class:`ebmcompose.InputError` from the scene sampler) is redrawn from the same, continuing
    generator stream (deterministic), at most ``tries`` times."""
    for attempt in range(tries):
        try:
            return source.sample(n, g)[:2]
        except ec.InputError:
            if attempt == tries - 1:
                raise


def _lr(config: TrainConfig, k: int) -> float:
    if k < config.warmup:
        return config.lr * (k + 1) / config.warmup
    frac = (k - config.warmup) / max(1, config.steps - config.warmup - 1)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * min(1.0, frac)))


def train(
    config: TrainConfig,
    source: Optional[Any] = None,
    *,
    run_dir=None,
    resume: bool = False,
    until: Optional[int] = None,
    progress: bool = False,
) -> TrainResult:
    """Train (or continue training) a scene model.

    Parameters
    ----------
    config : TrainConfig
        See :func:`config_for`.
    source : object, optional
        ``source.sample(n, generator) -> (images (n, 3, H, W) in [0, 1], cond (n, cond_dim), ...)``
        (default: :func:`make_source`).
    run_dir : str or PathLike, optional
        Folder for ``resume.*`` and ``model.*`` (written every ``checkpoint_every`` steps and at the end).
    resume : bool
        Continue from ``run_dir/resume.*`` (a fresh start when there is none).
    until : int, optional
        Stop after this many steps in total (the schedule still runs to ``config.steps``).
    progress : bool
        tqdm progress bar.

    Returns
    -------
    TrainResult
    """
    if resume and run_dir is None:
        raise ec.InputError("resume=True needs the run folder (run_dir) that holds resume.safetensors")
    source = make_source(config) if source is None else source
    schedule = ec.VPSchedule.cosine()
    net = SceneUNet(**config.net_config())
    ema = copy.deepcopy(net)
    ema.requires_grad_(False)
    train_model = build_model(config.parameterisation, net, schedule)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    losses = torch.zeros(config.steps)
    run_dir = None if run_dir is None else Path(run_dir)
    start = 0
    if resume and (run_dir / "resume.safetensors").is_file():
        start = _load_resume(run_dir, config, net, ema, opt, g, losses)
    stop = config.steps if until is None else min(int(until), config.steps)
    null = net.null_condition
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=start, desc=f"train {config.family}/{config.parameterisation}")
    k = start
    for k in range(start, stop):
        images, cond = _draw(source, config.batch_size, g)
        x0 = 2.0 * images.to(torch.float32) - 1.0
        cond = cond.to(torch.float32)
        drop = torch.rand(config.batch_size, generator=g) < config.cond_dropout
        cond = torch.where(drop[:, None], null, cond)
        t = config.t_min + (1.0 - config.t_min) * torch.rand(config.batch_size, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        alpha = schedule.alpha(t).reshape(-1, 1, 1, 1)
        sigma = schedule.sigma(t).reshape(-1, 1, 1, 1)
        xt = alpha * x0 + sigma * eps
        target = alpha * eps - sigma * x0 if config.prediction == "v" and config.parameterisation == "epsilon" else eps
        if config.parameterisation == "epsilon":
            pred = net(xt, t, cond)
        else:
            pred = sigma * train_model.condition(cond, per_sample=True).grad(xt, t, create_graph=True)
        loss = (pred - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        for group in opt.param_groups:
            group["lr"] = _lr(config, k)
        opt.step()
        decay = min(config.ema_decay, (1.0 + k) / (10.0 + k))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(decay).add_(p, alpha=1.0 - decay)
        losses[k] = loss.detach()
        if bar is not None:
            bar.update(1)
            if k % 20 == 0:
                bar.set_postfix(loss=f"{float(losses[k]):.4f}")
        if run_dir is not None and (k + 1) % config.checkpoint_every == 0 and k + 1 < stop:
            _save_resume(run_dir, config, net, ema, opt, g, losses, k + 1)
    done = max(start, stop)
    if bar is not None:
        bar.close()
    if run_dir is not None and done > start:
        _save_resume(run_dir, config, net, ema, opt, g, losses, done)
    ema.eval()
    model = build_model(config.parameterisation, ema, schedule)
    return TrainResult(model=model, net=ema, config=config, losses=losses[:done].clone(), step=done)
