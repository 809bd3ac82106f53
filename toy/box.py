"""Smooth boxes: a uniform box convolved with an isotropic Gaussian, exact at every VP time.

The density of ``x = u + s ε`` with ``u ~ Uniform([lo, hi])`` and ``ε ~ N(0, I)`` factorises over
axes::

    p(x) = Π_d [Φ((x_d − lo_d)/s_d) − Φ((x_d − hi_d)/s_d)] / (hi_d − lo_d)

Under the VP process ``x_t = sqrt(ᾱ) x + sqrt(1 − ᾱ) ε'`` it stays a smooth box, exactly:
``x_t = sqrt(ᾱ) u + sqrt(ᾱ s² + 1 − ᾱ) ε''``, i.e. bounds ``sqrt(ᾱ)·[lo, hi]`` and smoothing
``sqrt(ᾱ s² + 1 − ᾱ)``.

A hard box (``s = 0``) has infinite energy outside, which makes ``a − b`` (negation) and
gradient-based samplers degenerate; the smoothing keeps every energy finite.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ebmcompose.checks import as_scalar_t, check_generator, check_positive_int

from ._common import (
    ClosedForm,
    DiffusedClosedForm,
    as_float64,
    batch_t,
    infer_device,
    infer_dtype,
    rng_device,
    vp_coefficients,
)

__all__ = ["SmoothBox", "DiffusedSmoothBox", "log_ndtr_diff"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LN2 = math.log(2.0)


def _log1mexp(z: Tensor) -> Tensor:
    """``log(1 − exp(z))`` for ``z <= 0``, accurate everywhere (Mächler 2012); NaN-free
    gradients (each branch only sees inputs in its own range)."""
    near = z > -_LN2
    z_near = torch.where(near, z, torch.full_like(z, -1.0))
    z_far = torch.where(near, torch.full_like(z, -1.0), z)
    return torch.where(near, torch.log(-torch.expm1(z_near)), torch.log1p(-torch.exp(z_far)))


def log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """``log(Φ(a) − Φ(b))`` for ``a > b``, stable in both tails.

    Uses ``Φ(a) − Φ(b) = Φ(−b) − Φ(−a)`` to keep the arguments on the side where
    ``torch.special.log_ndtr`` is accurate, then ``log Φ(hi) + log(1 − exp(log Φ(lo) − log Φ(hi)))``.
    Shapes broadcast.
    """
    flip = (a + b) > 0
    hi = torch.where(flip, -b, a)
    lo = torch.where(flip, -a, b)
    l_hi = torch.special.log_ndtr(hi)
    l_lo = torch.special.log_ndtr(lo)
    return l_hi + _log1mexp(l_lo - l_hi)


def _box_energy(
    x: Tensor, lo: Tensor, hi: Tensor, s: Tensor, need_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """Closed-form smooth-box energy ``(B,)`` and gradient ``(B, D)``.

    ``lo``, ``hi``, ``s`` broadcast against ``x`` ``(B, D)`` (``(D,)`` or ``(B, D)``).
    """
    a = (x - lo) / s
    b = (x - hi) / s
    log_mass = log_ndtr_diff(a, b)  # (B, D)
    energy = -(log_mass - torch.log(hi - lo)).sum(-1)
    if not need_grad:
        return energy, None
    # d/dx log(Φ(a) − Φ(b)) = (φ(a) − φ(b)) / (s (Φ(a) − Φ(b)))
    ra = torch.exp(-0.5 * a * a - _HALF_LOG_2PI - log_mass)
    rb = torch.exp(-0.5 * b * b - _HALF_LOG_2PI - log_mass)
    grad = -(ra - rb) / s
    return energy, grad


def _check_box(lo, hi, smoothing, device) -> Tuple[Tensor, Tensor, Tensor]:
    lo64 = as_float64(lo, "lo", device)
    hi64 = as_float64(hi, "hi", device)
    s64 = as_float64(smoothing, "smoothing", device)
    if lo64.dim() > 1 or hi64.dim() > 1 or s64.dim() > 1:
        raise ValueError(
            f"lo, hi and smoothing must be scalars or 1-D (D,), got shapes {tuple(lo64.shape)}, "
            f"{tuple(hi64.shape)}, {tuple(s64.shape)}"
        )
    try:
        lo64, hi64, s64 = torch.broadcast_tensors(torch.atleast_1d(lo64), torch.atleast_1d(hi64), torch.atleast_1d(s64))
    except RuntimeError as exc:
        raise ValueError(
            f"lo, hi and smoothing must have the same length D, got shapes {tuple(lo64.shape)}, "
            f"{tuple(hi64.shape)}, {tuple(s64.shape)}"
        ) from exc
    if bool((hi64 <= lo64).any()):
        raise ValueError(f"need lo < hi in every axis, got lo={lo64.tolist()}, hi={hi64.tolist()}")
    if bool((s64 <= 0).any()):
        raise ValueError(
            f"smoothing must be positive (a hard box, smoothing 0, has infinite energy outside), "
            f"got {s64.tolist()}"
        )
    return lo64.clone(), hi64.clone(), s64.clone()


class SmoothBox(ClosedForm):
    """A uniform box ``[lo, hi]`` convolved with ``N(0, s² I)``: a smooth, normalised box.

    ``E(x) = −Σ_d log([Φ((x_d − lo_d)/s_d) − Φ((x_d − hi_d)/s_d)] / (hi_d − lo_d))``, computed
    with ``torch.special.log_ndtr`` differences (stable in the tails, finite everywhere); the
    gradient is closed-form.

    Parameters
    ----------
    lo, hi : Tensor, array-like or float
        ``(D,)`` lower and upper corners (scalars broadcast against the other). A floating
        tensor sets the dtype and device (otherwise the default dtype, CPU).
    smoothing : float or (D,)
        Standard deviation ``s > 0`` of the Gaussian blur.
    name : str, optional
        Name in formulas (default ``"box"``).
    dtype : torch.dtype, optional
        Parameter dtype, overriding the inferred one.

    Examples
    --------
    >>> box = SmoothBox([-4.0, -4.0], [4.0, 4.0], smoothing=0.3)
    """

    def __init__(self, lo, hi, smoothing, name: Optional[str] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dtype = infer_dtype(lo, hi, smoothing, dtype=dtype)
        device = infer_device(lo, hi, smoothing)
        lo64, hi64, s64 = _check_box(lo, hi, smoothing, device)
        self.name = name or "box"
        self.event_shape = (int(lo64.shape[0]),)
        self.register_buffer("_lo", lo64.to(dtype))
        self.register_buffer("_hi", hi64.to(dtype))
        self.register_buffer("_smoothing", s64.to(dtype))

    @property
    def lo(self) -> Tensor:
        """``(D,)`` lower corner."""
        return self._lo.clone()

    @property
    def hi(self) -> Tensor:
        """``(D,)`` upper corner."""
        return self._hi.clone()

    @property
    def smoothing(self) -> Tensor:
        """``(D,)`` Gaussian blur standard deviation."""
        return self._smoothing.clone()

    @property
    def dim(self) -> int:
        """Dimension ``D``."""
        return int(self._lo.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the stored parameters."""
        return self._lo.dtype

    def _parts(self, x: Tensor):
        return self._lo.to(x.dtype), self._hi.to(x.dtype), self._smoothing.to(x.dtype)

    def _closed_form(self, x: Tensor, t: Optional[Tensor], need_grad: bool):
        return _box_energy(x, *self._parts(x), need_grad=need_grad)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``(B,)`` (normalised)."""
        return -self.energy(x)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Exact samples ``(n, D)``: uniform in the box plus ``N(0, s² I)`` noise (drawn in
        float64 on the generator's device, returned in the box's dtype and device)."""
        n = check_positive_int(n, "n")
        generator = check_generator(generator)
        dev = self._lo.device
        gdev = rng_device(generator, dev)
        u = torch.rand(n, self.dim, generator=generator, device=gdev, dtype=torch.float64).to(dev)
        eps = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=torch.float64).to(dev)
        lo, hi, s = self._lo.double(), self._hi.double(), self._smoothing.double()
        return (lo + (hi - lo) * u + s * eps).to(self.dtype)

    def mean(self) -> Tensor:
        """``(D,)`` mean, the box centre."""
        return 0.5 * (self._lo + self._hi)

    def covariance(self) -> Tensor:
        """``(D, D)`` covariance ``diag((hi − lo)² / 12 + s²)``."""
        return torch.diag((self._hi - self._lo) ** 2 / 12.0 + self._smoothing**2)

    def diffused(self, schedule) -> "DiffusedSmoothBox":
        """The exact energy of the VP-noised box at every ``t`` (again a smooth box)."""
        return DiffusedSmoothBox(self, schedule)

    def extra_repr(self) -> str:
        return f"lo={self._lo.tolist()}, hi={self._hi.tolist()}, smoothing={self._smoothing.tolist()}"


class DiffusedSmoothBox(DiffusedClosedForm):
    """Exact energy of a :class:`SmoothBox` under the VP forward process.

    At time ``t`` the marginal is the smooth box with bounds ``sqrt(ᾱ_t)·[lo, hi]`` and
    smoothing ``sqrt(ᾱ_t s² + 1 − ᾱ_t)``; ``t`` may differ per sample. Build with
    :meth:`SmoothBox.diffused`.
    """

    base_type = SmoothBox

    def _parts(self, x: Tensor, t: Optional[Tensor]):
        tt = batch_t(t, x, self._label())
        ab, one_minus, sqrt_ab = vp_coefficients(self.schedule, tt, x)
        lo, hi, s = self.base._parts(x)
        sa = sqrt_ab[:, None]
        s_t = torch.sqrt(ab[:, None] * s * s + one_minus[:, None])
        return sa * lo, sa * hi, s_t

    def _closed_form(self, x: Tensor, t: Optional[Tensor], need_grad: bool):
        return _box_energy(x, *self._parts(x, t), need_grad=need_grad)

    def at(self, t) -> SmoothBox:
        """The marginal ``p_t`` at a fixed scalar ``t`` as a :class:`SmoothBox`."""
        t = as_scalar_t(t, f"{self.label}.at(t)")
        b = self.base
        lo, hi, s = b._lo.double(), b._hi.double(), b._smoothing.double()
        ab, one_minus, sqrt_ab = vp_coefficients(self.schedule, t, lo.new_zeros(()))
        return SmoothBox(
            sqrt_ab * lo, sqrt_ab * hi, torch.sqrt(ab * s * s + one_minus),
            name=f"{b.name}@t={t:g}", dtype=b.dtype,
        )
