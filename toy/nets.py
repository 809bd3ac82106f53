"""Small ResNet-MLPs for 2-D diffusion models: ``net(x, t, cond=None) -> like x``.

One architecture serves both parameterisations of :mod:`toy.train`:

* as an **ε-network** for :class:`ebmcompose.EpsilonModel` (output ``ε̂(x, t)``), and
* as the **denoiser** ``f(x, t)`` of :class:`ebmcompose.DiffusionEnergy` (``form="denoiser"``,
  ``E = ‖x − f(x, t)‖² / (2 σ_t²)``).

Architecture (``H = hidden``)::

    e   = MLP(Fourier(t)) [+ Embedding(label)]                    (B, H)   time/label embedding
    h   = Linear(dim, H)(x)                                         (B, H)
    h  += fc2(SiLU(fc1(SiLU(LayerNorm(h))) + Linear(H, H)(e)))      × n_blocks (residual)
    out = Linear(H, dim)(SiLU(LayerNorm(h)))                        (B, dim)

``t ∈ [0, 1]`` enters through fixed sinusoidal features ``sin/cos(π ω_k t)`` with ``ω_k``
geometric in ``[1, max_frequency]``. A conditional net (``n_classes = K``) embeds ``K + 1``
labels: ``0 … K−1`` are concepts and ``K`` is the **null label** (unconditional), used for
label dropout in training and whenever ``cond`` is ``None``.

The default net (``hidden=128, n_blocks=3``) has about 171 k parameters (≈ 690 KB of float32).
Initialisation is a pure function of ``seed`` (torch's global RNG is left untouched).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResMLP", "fourier_features"]


def fourier_features(t: Tensor, frequencies: Tensor) -> Tensor:
    """Sinusoidal features of ``t``: ``[sin(π ω t), cos(π ω t)]``.

    Parameters
    ----------
    t : Tensor
        ``(B,)`` times in ``[0, 1]``.
    frequencies : Tensor
        ``(F,)`` angular multipliers ``ω``.

    Returns
    -------
    Tensor
        ``(B, 2F)``.
    """
    arg = math.pi * t[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class _Block(nn.Module):
    """Pre-norm residual block with an additive embedding: ``h + fc2(SiLU(fc1(SiLU(LN h)) + W e))``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb(e)
        return h + self.fc2(F.silu(z))


class ResMLP(nn.Module):
    """Residual MLP with time (and optional label) embedding for points ``(B, dim)``.

    Parameters
    ----------
    dim : int
        Dimension of the points (2 for the toy densities).
    hidden : int
        Width ``H`` of the residual stream.
    n_blocks : int
        Number of residual blocks.
    n_classes : int, optional
        Number of concept labels ``K``; ``None`` for an unconditional net. A conditional net
        also has the null label ``K`` (:attr:`null_label`).
    time_features : int
        Number of Fourier frequencies of ``t`` (the feature vector has ``2 * time_features``).
    max_frequency : float
        Largest frequency ``ω`` (features ``sin/cos(π ω t)``).
    seed : int
        Seed of the initialisation (a forked RNG; the global RNG is not changed).

    Examples
    --------
    >>> net = ResMLP(n_classes=2)
    >>> net(torch.zeros(5, 2), torch.full((5,), 0.5), torch.tensor([0, 1, 2, 0, 1])).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        n_blocks: int = 3,
        n_classes: Optional[int] = None,
        time_features: int = 16,
        max_frequency: float = 200.0,
        seed: int = 0,
    ):
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("n_blocks", n_blocks), ("time_features", time_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1):
            raise ValueError(f"n_classes must be a positive integer or None (unconditional), got {n_classes!r}")
        if not (isinstance(max_frequency, (int, float)) and max_frequency >= 1.0):
            raise ValueError(f"max_frequency must be a number >= 1, got {max_frequency!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.dim = dim
        self.hidden = hidden
        self.n_blocks = n_blocks
        self.n_classes = n_classes
        self.time_features = time_features
        self.max_frequency = float(max_frequency)
        self.seed = seed
        freqs = torch.logspace(0.0, math.log10(self.max_frequency), time_features, dtype=torch.float64)
        # Not persistent: a pure function of the config, so checkpoints hold weights only.
        self.register_buffer("frequencies", freqs.to(torch.float32), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.time_mlp = nn.Sequential(
                nn.Linear(2 * time_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            self.label_emb = None if n_classes is None else nn.Embedding(n_classes + 1, hidden)
            self.inp = nn.Linear(dim, hidden)
            self.blocks = nn.ModuleList(_Block(hidden) for _ in range(n_blocks))
            self.out_norm = nn.LayerNorm(hidden)
            self.out = nn.Linear(hidden, dim)
            if self.label_emb is not None:
                nn.init.normal_(self.label_emb.weight, std=0.1)
            # small output layer: the net starts close to the zero map (ε̂ ≈ 0)
            nn.init.normal_(self.out.weight, std=1e-3)
            nn.init.zeros_(self.out.bias)

    @property
    def null_label(self) -> Optional[int]:
        """The unconditional label ``n_classes`` (``None`` for an unconditional net)."""
        return self.n_classes

    @property
    def config(self) -> Dict[str, Any]:
        """Constructor keyword arguments that rebuild this net (JSON-serialisable)."""
        return {
            "dim": self.dim,
            "hidden": self.hidden,
            "n_blocks": self.n_blocks,
            "n_classes": self.n_classes,
            "time_features": self.time_features,
            "max_frequency": self.max_frequency,
            "seed": self.seed,
        }

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """Evaluate the net.

        Parameters
        ----------
        x : Tensor
            ``(B, dim)`` points.
        t : Tensor or float
            ``(B,)`` (or scalar) times in ``[0, 1]``.
        cond : Tensor, optional
            ``(B,)`` long labels in ``[0, n_classes]`` (``n_classes`` is the null label), or a
            scalar label shared by the batch; ``None`` means the null label. Only for
            conditional nets.

        Returns
        -------
        Tensor
            ``(B, dim)``, like ``x``.
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ResMLP(dim={self.dim}) expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        t = t.reshape(-1)
        if t.shape[0] != b:
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        e = self.time_mlp(fourier_features(t, self.frequencies.to(x.dtype)))
        if self.label_emb is None:
            if cond is not None:
                raise ValueError(
                    "this ResMLP is unconditional (n_classes=None) but got a condition; build it "
                    "with n_classes=K to condition on K labels"
                )
        else:
            if cond is None:
                labels = torch.full((b,), self.n_classes, dtype=torch.long, device=x.device)
            else:
                labels = torch.as_tensor(cond, device=x.device)
                if labels.is_floating_point() or labels.dtype == torch.bool:
                    raise TypeError(f"cond must hold integer labels, got dtype {labels.dtype}")
                labels = labels.long()
                if labels.dim() == 0:
                    labels = labels.expand(b)
                if labels.shape != (b,):
                    raise ValueError(f"cond must be a scalar label or have shape ({b},), got {tuple(labels.shape)}")
                if bool(((labels < 0) | (labels > self.n_classes)).any()):
                    raise ValueError(
                        f"labels must be in [0, {self.n_classes}] ({self.n_classes} = null label), "
                        f"got values in [{int(labels.min())}, {int(labels.max())}]"
                    )
            e = e + self.label_emb(labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return self.out(F.silu(self.out_norm(h)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, n_blocks={self.n_blocks}, n_classes={self.n_classes}"
