"""Conditional UNets for the procedural scenes of :mod:`toy.scenes`: ``net(x, t, cond) -> like x``.

:class:`SceneUNet` is a small diffusers ``UNet2DModel`` (no attention, so the energy
parameterisation can take gradients of gradients through it) whose class embedding comes from a
:class:`ConditionEncoder`:

* ``"position"`` conditions ``(B, 3) = (x, y, present)``: Fourier features of ``(x, y)`` → MLP,
  times ``present``, plus a learned null embedding where ``present`` is 0;
* ``"attribute"`` conditions ``(B, A)`` one-hot (or multi-hot) attributes: a linear map; the zero
  vector (no attribute) gets the learned null embedding;
* ``"joint"`` conditions ``(B, 5·3)``: five position slots, each encoded as above, summed (the
  jointly conditioned baseline of Liu et al. 2022).

Position and joint conditions are also drawn as a **position map**: one extra input channel holding
a Gaussian bump of width :data:`MAP_WIDTH` at each requested ``(x, y)`` (zero for the null
condition), so "an object here" is a local cue for the convolutions rather than a global vector
the network must learn to compare with pixel coordinates (``condition_map=False`` gives the
embedding alone, as Liu et al. 2022 condition their UNets).

The all-zero condition is the **null condition** (condition dropout trains it), so one network
gives both the conditional and the unconditional leaf. ``t ∈ [0, 1]`` is passed to the UNet's
sinusoidal time embedding as ``1000 t``.

Everything is rebuilt from :attr:`SceneUNet.config` (a JSON-able dict), and the initialisation
is a pure function of ``seed`` (torch's global RNG is left untouched).

:class:`ImageResidualDenoiser` turns a net ``g`` into the denoiser ``f = x − σ_t g(x, t, c)`` of
:class:`ebmcompose.DiffusionEnergy` (``form="denoiser"``), so ``E(x, t | c) = ½‖g(x, t, c)‖²``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

import ebmcompose as ec

__all__ = ["SceneUNet", "ConditionEncoder", "position_map", "MAP_WIDTH", "VelocityToEpsilon", "PREDICTIONS", "ImageResidualDenoiser", "build_model", "FAMILIES", "CONDITION_DIMS", "SIGMA_FLOOR"]

#: Condition families and the width of their condition vectors.
CONDITION_DIMS = {"position": 3, "attribute": 11, "joint": 15}
FAMILIES = tuple(CONDITION_DIMS)
#: sigma floor of the energy-parameterised models (DiffusionEnergy's default).
SIGMA_FLOOR = 1e-4
#: Number of position slots of a joint condition.
JOINT_SLOTS = 5
#: Standard deviation of the position map's bumps, as a fraction of the image side.
MAP_WIDTH = 0.05
#: What an ε-parameterised net's output means (see :class:`SceneUNet`).
PREDICTIONS = ("epsilon", "v")


class ConditionEncoder(nn.Module):
    """Condition vector ``(B, cond_dim)`` → class embedding ``(B, dim)`` (see module notes).

    Parameters
    ----------
    family : {"position", "attribute", "joint"}
    cond_dim : int
        Width of the condition (3, number of attributes, or 15).
    dim : int
        Embedding width (the UNet's time-embedding width).
    n_frequencies : int
        Fourier frequencies per coordinate for positions (``π 2^k``, ``k < n_frequencies``).
    """

    def __init__(self, family: str, cond_dim: int, dim: int, n_frequencies: int = 6):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if family == "position" and cond_dim != 3 or family == "joint" and cond_dim != 3 * JOINT_SLOTS:
            raise ValueError(f"a {family} condition has width {CONDITION_DIMS[family]}, got cond_dim={cond_dim}")
        self.family = family
        self.cond_dim = cond_dim
        self.null = nn.Parameter(torch.zeros(dim))
        if family == "attribute":
            self.linear = nn.Linear(cond_dim, dim, bias=False)
        else:
            self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32), persistent=False)
            self.mlp = nn.Sequential(nn.Linear(4 * n_frequencies + 2, dim), nn.SiLU(), nn.Linear(dim, dim))

    def _position(self, c: Tensor) -> Tensor:
        """``(B, 3)`` → ``(B, dim)``: ``present · MLP(features(x, y)) + (1 − present) · null``."""
        xy, present = c[:, :2], c[:, 2:3]
        arg = xy[:, :, None] * self.frequencies
        feats = torch.cat([xy, torch.sin(arg).flatten(1), torch.cos(arg).flatten(1)], dim=1)
        return present * self.mlp(feats) + (1.0 - present) * self.null

    def forward(self, cond: Tensor) -> Tensor:
        """Embeddings ``(B, dim)`` of conditions ``(B, cond_dim)``."""
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(
                f"a {self.family} condition must have shape (B, {self.cond_dim}), got {tuple(cond.shape)}"
            )
        cond = cond.to(self.null.dtype)
        if self.family == "attribute":
            empty = (cond.abs().sum(dim=1, keepdim=True) == 0).to(cond.dtype)
            return self.linear(cond) + empty * self.null
        if self.family == "position":
            return self._position(cond)
        slots = cond.reshape(cond.shape[0] * JOINT_SLOTS, 3)
        return self._position(slots).reshape(cond.shape[0], JOINT_SLOTS, -1).sum(dim=1)


class SceneUNet(nn.Module):
    """A conditional ``UNet2DModel`` without attention: ``net(x, t, cond) -> ε̂`` (or ``g``) like ``x``.

    Parameters
    ----------
    family : {"position", "attribute", "joint"}
        Which conditions it takes (see :class:`ConditionEncoder`).
    resolution : int
        Image side (16, 32 or 64; divisible by ``2 ** (len(channels) - 1)``).
    channels : sequence of int
        ``block_out_channels`` of the UNet (one resolution level each).
    layers_per_block : int
        ResNet blocks per level.
    norm_groups : int
        GroupNorm groups (must divide every channel count).
    cond_dim : int, optional
        Condition width (default: 3, 11 or 15 by family).
    n_frequencies : int
        Fourier frequencies per position coordinate.
    coord_channels : bool
        Append two channels holding each pixel's ``(x, y)`` to the input (CoordConv), so
        absolute positions need not be inferred from the borders' zero padding.
    condition_map : bool
        Append the position map of the condition as one more input channel (position and joint
        families only; see module notes).
    scale_shift : bool
        Condition the ResNet blocks by a scale and a shift of their normalised features (FiLM,
        diffusers' ``resnet_time_scale_shift="scale_shift"``) instead of an added bias: a
        multiplicative cue that can change an object's outline (its shape), not only its colour.
    prediction : {"epsilon", "v"}
        What the output means for an ε-parameterised model: the noise ``ε``, or the velocity
        ``v = α_t ε − σ_t x_0`` (Salimans & Ho 2022; :class:`VelocityToEpsilon` converts).
    seed : int
        Seeds the initialisation.

    Notes
    -----
    ``forward(x, t, cond)``: ``x (B, 3, H, W)``, ``t (B,)`` or scalar in ``[0, 1]``, ``cond
    (B, cond_dim)`` or ``None`` (the null condition, all zeros).
    """

    def __init__(
        self,
        family: str = "position",
        resolution: int = 32,
        channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_groups: int = 8,
        cond_dim: Optional[int] = None,
        n_frequencies: int = 6,
        coord_channels: bool = True,
        condition_map: bool = False,
        prediction: str = "epsilon",
        seed: int = 0,
        scale_shift: bool = False,
    ):
        super().__init__()
        from diffusers import UNet2DModel

        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        channels = [int(c) for c in channels]
        if resolution % (2 ** (len(channels) - 1)):
            raise ValueError(f"resolution {resolution} must be divisible by 2^{len(channels) - 1} for {len(channels)} levels")
        if any(c % norm_groups for c in channels):
            raise ValueError(f"norm_groups={norm_groups} must divide every channel count {channels}")
        cond_dim = CONDITION_DIMS[family] if cond_dim is None else int(cond_dim)
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if condition_map and family == "attribute":
            raise ValueError("condition_map draws positions; an attribute model has none (use condition_map=False)")
        self.config: Dict[str, Any] = {
            "family": family,
            "resolution": int(resolution),
            "channels": channels,
            "layers_per_block": int(layers_per_block),
            "norm_groups": int(norm_groups),
            "cond_dim": cond_dim,
            "n_frequencies": int(n_frequencies),
            "coord_channels": bool(coord_channels),
            "condition_map": bool(condition_map),
            "prediction": prediction,
            "seed": int(seed),
            "scale_shift": bool(scale_shift),
        }
        dim = 4 * channels[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = UNet2DModel(
                sample_size=resolution,
                in_channels=3 + 2 * bool(coord_channels) + bool(condition_map),
                out_channels=3,
                down_block_types=("DownBlock2D",) * len(channels),
                up_block_types=("UpBlock2D",) * len(channels),
                block_out_channels=tuple(channels),
                layers_per_block=layers_per_block,
                norm_num_groups=norm_groups,
                add_attention=False,
                class_embed_type="identity",
                resnet_time_scale_shift="scale_shift" if scale_shift else "default",
            )
            self.encoder = ConditionEncoder(family, cond_dim, dim, n_frequencies)

    @property
    def family(self) -> str:
        return self.config["family"]

    @property
    def resolution(self) -> int:
        return self.config["resolution"]

    @property
    def null_condition(self) -> Tensor:
        """The "no condition" vector ``(cond_dim,)`` (zeros)."""
        return torch.zeros(self.config["cond_dim"])

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Prediction ``(B, 3, H, W)`` at images ``x (B, 3, H, W)``, times ``t`` and conditions ``(B, cond_dim)``."""
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t
        if cond is None:
            cond = torch.zeros(b, self.config["cond_dim"], dtype=x.dtype, device=x.device)
        emb = self.encoder(cond)
        extra = []
        if self.config["coord_channels"] or self.config["condition_map"]:
            coords = self._coordinates(x)
            if self.config["coord_channels"]:
                extra.append(coords)
            if self.config["condition_map"]:
                extra.append(position_map(cond.to(x.dtype), coords))
        if extra:
            x = torch.cat([x, *extra], dim=1)
        return self.unet(x, 1000.0 * t, class_labels=emb).sample

    @staticmethod
    def _coordinates(x: Tensor) -> Tensor:
        """``(B, 2, H, W)`` maps of the pixel centres' ``(x, y)`` in ``[-1, 1]`` (column, row)."""
        b, _, h, w = x.shape
        cols = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) * (2.0 / w) - 1.0
        rows = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) * (2.0 / h) - 1.0
        grid = torch.stack([cols[None, :].expand(h, w), rows[:, None].expand(h, w)])
        return grid.unsqueeze(0).expand(b, 2, h, w)

    def n_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())


def position_map(cond: Tensor, coords: Tensor, width: float = MAP_WIDTH) -> Tensor:
    """``(B, 1, H, W)``: the largest of the Gaussian bumps ``present · exp(−d² / 2w²)`` of the
    condition's position slots ``cond (B, 3·S)`` (``(x, y, present)`` each) over pixel centres
    ``coords (B, 2, H, W)`` in ``[-1, 1]``; zero for the null condition."""
    slots = cond.reshape(cond.shape[0], -1, 3)  # (B, S, 3)
    centres = slots[:, :, :2] * 2.0 - 1.0  # to [-1, 1]
    d2 = (coords[:, None] - centres[:, :, :, None, None]).square().sum(dim=2)  # (B, S, H, W)
    bumps = slots[:, :, 2, None, None] * torch.exp(d2 * (-1.0 / (2.0 * (2.0 * width) ** 2)))
    return bumps.amax(dim=1, keepdim=True)


class VelocityToEpsilon(nn.Module):
    """``ε̂ = α_t v̂ + σ_t x`` from a velocity net ``v̂(x, t, c)`` (exact when ``α_t² + σ_t² = 1``).

    A velocity net's ``x_0`` estimate ``α_t x − σ_t v̂`` stays accurate at high noise, where an
    ε-net's ``(x − σ_t ε̂) / α_t`` amplifies its error by ``σ_t / α_t`` and sets the images'
    global colours wrong. No parameters of its own.
    """

    def __init__(self, net: nn.Module, schedule: ec.VPSchedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """``ε̂ (B, 3, H, W)``."""
        t = torch.as_tensor(t, device=x.device)
        shape = (-1,) + (1,) * (x.dim() - 1)
        alpha = self.schedule.alpha(t).to(x.dtype).reshape(shape)
        sigma = self.schedule.sigma(t).to(x.dtype).reshape(shape)
        return alpha * self.net(x, t, cond) + sigma * x


class ImageResidualDenoiser(nn.Module):
    """The denoiser ``f(x, t, c) = x − σ_t g(x, t, c)`` of an energy-parameterised scene model.

    With :class:`ebmcompose.DiffusionEnergy` (``form="denoiser"``, ``sigma_floor=SIGMA_FLOOR``)
    ``E(x, t | c) = ½‖g(x, t, c)‖²``: the net outputs a whitened residual of size ``O(1)``
    at every noise level (the image analogue of :class:`toy.train.ResidualDenoiser`). A
    velocity net (``prediction="v"``) gives ``f = α_t x̂_0`` with ``x̂_0 = α_t x − σ_t g``, so
    ``E = ½‖σ_t x + α_t g‖²``: the prior's ``½‖x‖²`` at ``t = 1`` is built in and the net
    need not learn it (the energy analogue of :class:`VelocityToEpsilon`). No parameters of its own.

    Parameters
    ----------
    net : SceneUNet
        ``g(x, t, cond)``, output like ``x``.
    schedule : VPSchedule
        Gives ``σ_t``.
    """

    def __init__(self, net: nn.Module, schedule: ec.VPSchedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """``f = x − σ_t g``, or ``f = α_t (α_t x − σ_t g)`` for a velocity net; ``(B, 3, H, W)``."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        sigma = self.schedule.sigma(t, floor=SIGMA_FLOOR).to(x.dtype).reshape(shape)
        g = self.net(x, t, cond)
        if getattr(self.net, "config", {}).get("prediction", "epsilon") != "v":
            return x - sigma * g
        alpha = self.schedule.alpha(torch.as_tensor(t, device=x.device)).to(x.dtype).reshape(shape)
        return alpha * (alpha * x - sigma * g)


def build_model(parameterisation: str, net: SceneUNet, schedule: ec.VPSchedule, *, max_batch: Optional[int] = None, name: Optional[str] = None):
    """Wrap ``net`` as an energy model with ``null_condition = net.null_condition``.

    Parameters
    ----------
    parameterisation : {"epsilon", "energy"}
        :class:`ebmcompose.EpsilonModel` (score only) or :class:`ebmcompose.DiffusionEnergy`
        (``form="denoiser"`` around :class:`ImageResidualDenoiser`).
    net : SceneUNet
    schedule : VPSchedule
    max_batch : int, optional
        Largest batch of one forward (joint batches of many leaves are chunked).
    name : str, optional
        Name in printed formulas.
    """
    kw = dict(null_condition=net.null_condition, max_batch=max_batch, name=name or f"scene_{net.family}")
    v = net.config.get("prediction", "epsilon") == "v"
    if parameterisation in ("epsilon", "eps"):
        return ec.EpsilonModel(VelocityToEpsilon(net, schedule) if v else net, schedule, timestep="continuous", **kw)
    if parameterisation == "energy":
        return ec.DiffusionEnergy(
            ImageResidualDenoiser(net, schedule), schedule, form="denoiser", timestep="continuous", sigma_floor=SIGMA_FLOOR, **kw
        )
    raise ec.InputError(f"parameterisation must be 'epsilon' or 'energy', got {parameterisation!r}")
