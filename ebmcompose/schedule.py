"""Variance-preserving (VP) noise schedules in continuous time ``t ∈ [0, 1]``.

The forward process is ``x_t = sqrt(alpha_bar(t)) x_0 + sigma(t) ε`` with
``sigma(t) = sqrt(1 − alpha_bar(t))``; ``t = 0`` is data, ``t = 1`` is (almost) pure noise.

Endpoints. ``alpha_bar`` is clamped to ``[alpha_bar_min, 1]`` so that ``sqrt(alpha_bar)`` is
never zero (DDIM's ``x0`` prediction divides by it); ``sigma`` may be exactly 0 at ``t = 0``, so
code that divides by ``sigma`` (ε ↔ score conversion) must use :meth:`VPSchedule.sigma` with a
floor (``EpsilonModel`` does), and samplers never evaluate a model at ``t = 0``: the last step of
a reverse process lands on ``t = 0`` without a model call there.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .checks import check_positive_int
from .errors import InputError, InputTypeError

__all__ = ["VPSchedule"]

TLike = Union[float, Tensor]

#: Default lower clamp of ``alpha_bar`` (signal scale ``sqrt(alpha_bar) >= 1e-4``).
ALPHA_BAR_MIN = 1e-8
#: Training steps a continuous schedule stands for when a network takes integer timesteps.
CONTINUOUS_TRAIN_STEPS = 1000


def _as_tensor(t: TLike) -> Tensor:
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    return torch.tensor(float(t), dtype=torch.get_default_dtype())


class VPSchedule:
    """A VP noise schedule ``alpha_bar(t)``, ``t ∈ [0, 1]``.

    Build with :meth:`cosine`, :meth:`linear` or :meth:`from_diffusers`; instances are
    immutable and device-agnostic (computations follow ``t``'s device and dtype).

    Parameters
    ----------
    log_alpha_bar : callable
        ``t -> log alpha_bar(t)`` on tensors (elementwise, differentiable in ``t``).
    name : str
        Human-readable description.
    alpha_bar_min : float
        Lower clamp of ``alpha_bar`` (see module notes).
    discrete_alphas_cumprod : Tensor, optional
        For schedules read from a discrete (diffusers) scheduler: its ``alphas_cumprod``
        ``(N,)``. Discrete step ``k`` sits at ``t = (k + 1) / N``.
    """

    def __init__(
        self,
        log_alpha_bar: Callable[[Tensor], Tensor],
        name: str = "VPSchedule",
        alpha_bar_min: float = ALPHA_BAR_MIN,
        discrete_alphas_cumprod: Optional[Tensor] = None,
    ):
        if not (0.0 < alpha_bar_min < 1.0):
            raise InputError(f"alpha_bar_min must be in (0, 1), got {alpha_bar_min}")
        self._log_alpha_bar = log_alpha_bar
        self.name = name
        self.alpha_bar_min = float(alpha_bar_min)
        self.alphas_cumprod = discrete_alphas_cumprod

    # ------------------------------------------------------------------ constructors
    @classmethod
    def cosine(cls, s: float = 0.008, alpha_bar_min: float = ALPHA_BAR_MIN) -> "VPSchedule":
        """Nichol & Dhariwal (2021) cosine schedule:
        ``alpha_bar(t) = cos²(π/2 · (t+s)/(1+s)) / cos²(π/2 · s/(1+s))``.
        """
        if s < 0:
            raise InputError(f"cosine offset s must be >= 0, got {s}")
        c0 = math.cos(0.5 * math.pi * s / (1 + s))

        def log_ab(t: Tensor) -> Tensor:
            c = torch.cos(0.5 * math.pi * (t + s) / (1 + s)) / c0
            return 2.0 * torch.log(c.clamp_min(1e-30))

        return cls(log_ab, name=f"cosine(s={s:g})", alpha_bar_min=alpha_bar_min)

    @classmethod
    def linear(
        cls, beta_min: float = 0.1, beta_max: float = 20.0, alpha_bar_min: float = ALPHA_BAR_MIN
    ) -> "VPSchedule":
        """Continuous linear-β schedule of Song et al. (2021), ``β(t) = β_min + t (β_max − β_min)``:
        ``alpha_bar(t) = exp(−β_min t − ½ (β_max − β_min) t²)``.

        ``beta_min=0.1, beta_max=20`` matches DDPM's 1000-step linear schedule.
        """
        if not (0 <= beta_min <= beta_max) or beta_max <= 0:
            raise InputError(
                f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min}, beta_max={beta_max}"
            )

        def log_ab(t: Tensor) -> Tensor:
            return -(beta_min * t + 0.5 * (beta_max - beta_min) * t * t)

        return cls(log_ab, name=f"linear(beta_min={beta_min:g}, beta_max={beta_max:g})", alpha_bar_min=alpha_bar_min)

    @classmethod
    def from_diffusers(cls, scheduler, alpha_bar_min: Optional[float] = None) -> "VPSchedule":
        """Read a diffusers scheduler's ``alphas_cumprod`` ``(N,)`` as a continuous schedule.

        Discrete step ``k ∈ {0, …, N−1}`` is placed at ``t = (k + 1) / N`` and ``t = 0`` at
        ``alpha_bar = 1``; between grid points ``log alpha_bar`` is interpolated linearly.
        :meth:`timesteps` snaps to the grid, and :meth:`to_discrete` maps ``t`` back to the
        integer timestep a diffusers model expects.

        Parameters
        ----------
        scheduler : object
            Anything with an ``alphas_cumprod`` attribute (``DDPMScheduler``, ``DDIMScheduler``,
            ...), or the ``alphas_cumprod`` tensor itself.
        alpha_bar_min : float, optional
            Lower clamp of ``alpha_bar``. Default: ``ALPHA_BAR_MIN``, lowered to the
            scheduler's smallest ``alphas_cumprod`` so that every training step is reproduced
            exactly (``squaredcos_cap_v2`` with 1000 steps ends at ``alpha_bar ≈ 2.4e-9``).
        """
        ac = getattr(scheduler, "alphas_cumprod", scheduler)
        if not isinstance(ac, Tensor):
            try:
                ac = torch.as_tensor(ac)
            except Exception as exc:  # pragma: no cover - defensive
                raise InputTypeError(
                    "from_diffusers needs a diffusers scheduler (with .alphas_cumprod) or a 1-D "
                    f"alphas_cumprod tensor, got {type(scheduler).__name__}"
                ) from exc
        if ac.dim() != 1:
            raise InputError(
                f"alphas_cumprod must be 1-D (one entry per training step), got shape {tuple(ac.shape)}"
            )
        ac = ac.detach().to("cpu", torch.float64)
        if ac.numel() < 2:
            raise InputError("alphas_cumprod must have at least 2 entries")
        if not bool(torch.isfinite(ac).all()):
            raise InputError("alphas_cumprod contains NaN or inf; check the scheduler's betas")
        if bool(((ac <= 0) | (ac > 1)).any()) or bool((ac[1:] > ac[:-1] + 1e-12).any()):
            raise InputError("alphas_cumprod must be in (0, 1] and non-increasing")
        if alpha_bar_min is None:
            alpha_bar_min = min(ALPHA_BAR_MIN, float(ac.min()))
        n = ac.numel()
        grid_t = torch.cat([torch.zeros(1, dtype=torch.float64), torch.arange(1, n + 1, dtype=torch.float64) / n])
        grid_log = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(ac)])

        grids = {}  # (device, dtype) -> the two grids there: converted once, not per evaluation

        def log_ab(t: Tensor) -> Tensor:
            key = (t.device, t.dtype)
            if key not in grids:
                grids[key] = (grid_t.to(device=t.device, dtype=t.dtype), grid_log.to(device=t.device, dtype=t.dtype))
            gt, gl = grids[key]
            tc = t.clamp(0.0, 1.0)
            idx = torch.searchsorted(gt, tc.contiguous(), right=True).clamp(1, n)
            t0, t1 = gt[idx - 1], gt[idx]
            l0, l1 = gl[idx - 1], gl[idx]
            w = (tc - t0) / (t1 - t0)
            return l0 + w * (l1 - l0)

        name = f"from_diffusers({type(scheduler).__name__}, N={n})"
        return cls(log_ab, name=name, alpha_bar_min=alpha_bar_min, discrete_alphas_cumprod=ac)

    # ------------------------------------------------------------------ quantities
    @property
    def is_discrete(self) -> bool:
        """Whether this schedule comes from a discrete (diffusers) scheduler."""
        return self.alphas_cumprod is not None

    @property
    def num_train_timesteps(self) -> Optional[int]:
        """``N`` for discrete schedules, ``None`` for continuous ones."""
        return None if self.alphas_cumprod is None else int(self.alphas_cumprod.numel())

    def log_alpha_bar(self, t: TLike) -> Tensor:
        """``log alpha_bar(t)``, clamped below at ``log(alpha_bar_min)``; shape of ``t``."""
        t = _as_tensor(t)
        return self._log_alpha_bar(t).clamp(math.log(self.alpha_bar_min), 0.0)

    def alpha_bar(self, t: TLike) -> Tensor:
        """Signal variance ``alpha_bar(t) ∈ [alpha_bar_min, 1]``; shape of ``t``."""
        return torch.exp(self.log_alpha_bar(t))

    def alpha(self, t: TLike) -> Tensor:
        """Signal scale ``sqrt(alpha_bar(t))``; shape of ``t``."""
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: TLike, floor: float = 0.0) -> Tensor:
        """Noise scale ``sqrt(1 − alpha_bar(t))``, floored at ``floor``; shape of ``t``.

        Computed as ``sqrt(-expm1(log alpha_bar))`` for accuracy near ``t = 0``.
        """
        # log_alpha_bar <= 0, so -expm1 >= 0; abs() turns its -0.0 at t = 0 into +0.0 (else
        # sigma(0) would be -0.0 and 1 / sigma(0) = -inf).
        s = torch.sqrt(torch.expm1(self.log_alpha_bar(t)).abs())
        return s.clamp_min(floor) if floor > 0 else s

    def beta(self, t: TLike) -> Tensor:
        """Continuous rate ``β(t) = −d log alpha_bar / dt`` (by autograd); shape of ``t``."""
        t = _as_tensor(t)
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            la = self._log_alpha_bar(tt)
            (g,) = torch.autograd.grad(la.sum(), tt)
        return (-g).clamp_min(0.0).detach()

    def log_snr(self, t: TLike) -> Tensor:
        """``log(alpha_bar / (1 − alpha_bar))``; shape of ``t``."""
        la = self.log_alpha_bar(t)
        return la - torch.log(-torch.expm1(la)).clamp_min(-1e30)

    # ------------------------------------------------------------------ ladders
    def timesteps(
        self,
        n: int,
        t_max: float = 1.0,
        t_min: float = 0.0,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        """Descending noise ladder of ``n + 1`` times from ``t_max`` to ``t_min`` (inclusive).

        A reverse sampler takes ``n`` steps, from ``ts[i]`` to ``ts[i + 1]``, evaluating the
        model at ``ts[:-1]`` only. For discrete schedules the times are snapped to the training
        grid ``(k + 1) / N`` (and ``t_min = 0`` is kept as the final landing point).

        Parameters
        ----------
        n : int
            Number of steps (``n >= 1``; for discrete schedules at most the number of grid
            intervals in ``[t_min, t_max]``, i.e. ``n <= N`` for the full range).

        Returns
        -------
        Tensor
            ``(n + 1,)``, strictly decreasing.
        """
        check_positive_int(n, "number of steps n")
        if not (0.0 <= t_min < t_max <= 1.0):
            raise InputError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        dtype = dtype or torch.get_default_dtype()
        ts = torch.linspace(t_max, t_min, n + 1, dtype=torch.float64)
        if self.alphas_cumprod is not None:
            big_n = self.num_train_timesteps
            # grid points k / N available in [t_min, t_max]: n steps need n + 1 distinct ones
            k_hi, k_lo = round(t_max * big_n), round(t_min * big_n)
            if n > k_hi - k_lo:
                raise InputError(
                    f"at most {k_hi - k_lo} steps between t_min={t_min} and t_max={t_max} on this "
                    f"discrete schedule (N={big_n} training steps), got n={n}"
                )
            snapped = torch.round(ts * big_n) / big_n
            snapped[-1] = t_min if t_min == 0.0 else snapped[-1]
            if bool((snapped[1:] >= snapped[:-1]).any()):
                # fall back to evenly spaced integer steps (strictly decreasing: spacing >= 1)
                ks = torch.linspace(k_hi, k_lo, n + 1, dtype=torch.float64).round()
                snapped = ks / big_n
            ts = snapped
        return ts.to(device=device, dtype=dtype)

    def discrete_ladder(
        self,
        n: int,
        spacing: str = "trailing",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        """diffusers' inference timesteps as a descending ladder ``(n + 1,)`` of times ``(k + 1) / N``.

        The timesteps ``k`` follow diffusers' ``timestep_spacing``: ``"leading"``
        (``k = i · (N // n) + steps_offset``, SD v1's DDIM/PNDM), ``"trailing"``
        (``k = round(N − i · N / n) − 1``) or ``"linspace"`` (``round(linspace(0, N − 1, n))``).
        The ladder ends at ``t = 0`` (``alpha_bar = 1``, diffusers' ``set_alpha_to_one=True``) or
        at ``t = 1 / N`` (``alpha_bar = alphas_cumprod[0]``, ``set_alpha_to_one=False``). A reverse
        sampler steps between consecutive entries; DDIM and DDPM step to ``k − N // n``, the same
        whenever ``n`` divides ``N`` (leading, trailing).

        Raises
        ------
        InputError
            A continuous schedule, an unknown spacing, or timesteps outside ``[0, N − 1]``.
        """
        check_positive_int(n, "number of steps n")
        if self.alphas_cumprod is None:
            raise InputError("discrete_ladder needs a discrete schedule (VPSchedule.from_diffusers(scheduler))")
        big_n = self.num_train_timesteps
        if spacing == "leading":
            ks = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (big_n // n) + steps_offset
        elif spacing == "trailing":
            ks = torch.round(torch.arange(big_n, 0, -big_n / n, dtype=torch.float64)) - 1 + steps_offset
        elif spacing == "linspace":
            ks = torch.linspace(0, big_n - 1, n, dtype=torch.float64).round().flip(0) + steps_offset
        else:
            raise InputError(f"spacing must be 'leading', 'trailing' or 'linspace' (diffusers' timestep_spacing), got {spacing!r}")
        if ks.numel() != n or float(ks.max()) > big_n - 1 or float(ks.min()) < 0 or bool((ks[1:] >= ks[:-1]).any()):
            raise InputError(
                f"{n} steps with spacing={spacing!r} and steps_offset={steps_offset} do not give {n} distinct "
                f"timesteps in [0, {big_n - 1}]; use fewer steps or another spacing"
            )
        end = torch.tensor([0.0 if set_alpha_to_one else 1.0 / big_n], dtype=torch.float64)
        ts = torch.cat([(ks + 1) / big_n, end])
        if float(ts[-2]) <= float(end):
            raise InputError("the last timestep must lie above the final level; use set_alpha_to_one=True")
        return ts.to(device=device, dtype=dtype or torch.get_default_dtype())

    def to_discrete(self, t: Tensor) -> Tensor:
        """Map continuous ``t`` to the integer timestep ``k = round(t N) − 1`` of a discrete
        schedule (clamped to ``[0, N − 1]``); ``long`` tensor shaped like ``t``.

        Continuous schedules use diffusers' 1000 training steps (``N = 1000``, the convention of
        :meth:`from_diffusers`: step ``k`` sits at ``t = (k + 1) / N``), so ``VPSchedule.linear()``
        sends a DDPM-trained UNet the step it was trained at. A network trained on ``t · 999``
        labels (score_sde) takes ``timestep="continuous", time_scale=999`` instead.
        """
        t = _as_tensor(t)
        big_n = CONTINUOUS_TRAIN_STEPS if self.alphas_cumprod is None else self.num_train_timesteps
        wide = t.to(torch.float32 if t.device.type == "mps" else torch.float64)
        return (torch.round(wide * big_n) - 1).clamp(0, big_n - 1).long()

    def to_timestep(self, t: TLike) -> Tensor:
        """Map continuous ``t`` to a diffusers model's timestep ``t N − 1`` as float32, shaped like ``t``.

        Unlike :meth:`to_discrete` it keeps fractional timesteps (LMS, Euler with "linspace"
        spacing step between training steps); values within ``N · 1e-6`` of an integer are
        snapped to it, so grid times give exact integer timesteps whatever ``t``'s float
        precision. Computed in float64 (float32 on devices without float64). For continuous
        schedules it returns ``to_discrete(t)`` as float32.
        """
        t = _as_tensor(t)
        if self.alphas_cumprod is None:
            return self.to_discrete(t).to(torch.float32)
        big_n = self.num_train_timesteps
        wide = t.to(torch.float32 if t.device.type == "mps" else torch.float64)
        k = (wide * big_n - 1.0).clamp(0.0, big_n - 1.0)
        r = torch.round(k)
        k = torch.where((k - r).abs() <= big_n * 1e-6, r, k)
        return k.to(torch.float32)

    def __repr__(self) -> str:
        return f"VPSchedule.{self.name}"
