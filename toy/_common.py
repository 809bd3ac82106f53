"""Small helpers shared by the toy densities (not public)."""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ebmcompose import Energy, InputError
from ebmcompose.checks import as_batch_t

LOG_2PI = math.log(2.0 * math.pi)


class ClosedForm(Energy):
    """A leaf whose energy and gradient come from one closed form (no autograd).

    Subclasses implement :meth:`_closed_form`; the three leaf hooks of
    :class:`~ebmcompose.Energy` are derived from it. With ``create_graph=True`` the same closed
    form runs with autograd recording, so the gradient stays differentiable.
    """

    def _closed_form(self, x: Tensor, t: Optional[Tensor], need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """Energies ``(B,)`` and, when ``need_grad``, gradients like ``x`` (else ``None``)."""
        raise NotImplementedError

    def _energy(self, x: Tensor, t: Optional[Tensor]) -> Tensor:
        return self._closed_form(x, t, False)[0]

    def _energy_and_grad(self, x: Tensor, t: Optional[Tensor], create_graph: bool = False):
        with torch.enable_grad() if create_graph else torch.no_grad():
            return self._closed_form(x, t, True)

    def _grad(self, x: Tensor, t: Optional[Tensor], create_graph: bool = False) -> Tensor:
        return self._energy_and_grad(x, t, create_graph)[1]


class DiffusedClosedForm(ClosedForm):
    """The exact VP-diffused energy of a closed-form toy density ``base`` (time-dependent).

    Subclasses set ``base_type`` (the class of ``base``) and implement ``_parts(x, t)`` and
    ``at(t)``; the constructor and ``log_prob`` are shared.
    """

    time_dependent = True
    base_type: type = Energy

    def __init__(self, base, schedule, name: Optional[str] = None):
        super().__init__()
        if not isinstance(base, self.base_type):
            raise TypeError(f"base must be a toy.{self.base_type.__name__}, got {type(base).__name__}")
        check_schedule(schedule)
        self.base = base
        self.schedule = schedule
        self.event_shape = base.event_shape
        self.name = name or f"{base.name}_t"

    def log_prob(self, x: Tensor, t) -> Tensor:
        """``log p_t(x)`` ``(B,)``; ``t`` scalar or ``(B,)``."""
        return -self.energy(x, t)


def as_float64(value, name: str, device: Optional[torch.device] = None) -> Tensor:
    """``value`` as a float64 tensor (on ``device``), with an error that names the argument."""
    try:
        if isinstance(value, Tensor):
            out = value.detach().to(dtype=torch.float64, device=device)
        else:
            out = torch.as_tensor(value, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor or array-like of numbers, got {type(value).__name__}") from exc
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def infer_dtype(*values, dtype: Optional[torch.dtype] = None) -> torch.dtype:
    """``dtype`` if given, else that of the first floating tensor among ``values``, else the
    default dtype."""
    if dtype is not None:
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        return dtype
    for v in values:
        if isinstance(v, Tensor) and v.is_floating_point():
            return v.dtype
    return torch.get_default_dtype()


def infer_device(*values) -> torch.device:
    """Device of the first tensor among ``values`` (CPU if none)."""
    for v in values:
        if isinstance(v, Tensor):
            return v.device
    return torch.device("cpu")


def rng_device(generator: Optional[torch.Generator], fallback: torch.device) -> torch.device:
    """Where random numbers are drawn: the generator's device, else ``fallback``."""
    return generator.device if generator is not None else fallback


def vp_coefficients(schedule, t: Union[Tensor, float], like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(alpha_bar, 1 - alpha_bar, sqrt(alpha_bar))`` at ``t`` in ``like``'s dtype and device.

    ``1 - alpha_bar`` is computed as ``-expm1(log alpha_bar)`` (accurate near ``t = 0``).
    """
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t), dtype=like.dtype, device=like.device)
    t = t.to(device=like.device, dtype=like.dtype)
    log_ab = schedule.log_alpha_bar(t)
    return torch.exp(log_ab), -torch.expm1(log_ab), torch.exp(0.5 * log_ab)


def check_schedule(schedule) -> None:
    if not callable(getattr(schedule, "log_alpha_bar", None)):
        raise TypeError(
            "diffused() needs a VP noise schedule such as ebmcompose.VPSchedule.cosine(), "
            f"got {type(schedule).__name__}"
        )


def batch_t(t: Optional[Tensor], x: Tensor, label: str) -> Tensor:
    """``t`` as a ``(B,)`` tensor for a time-dependent leaf, or a clear error when missing."""
    if t is None:
        raise InputError(
            f"{label} is a diffused (time-dependent) density p_t and needs t in [0, 1] "
            "(0 = data, 1 = noise), e.g. energy.energy(x, t=0.5)"
        )
    return as_batch_t(t, x)
