"""Validators shared by ebmcompose, samplers and toy: one message per kind of mistake.

Each raises :class:`~ebmcompose.InputError` (:class:`~ebmcompose.errors.InputTypeError`, also a
``TypeError``, for a value of the wrong type) with a message that names the argument and the fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from .errors import InputError, InputTypeError

__all__ = ["check_positive_int", "check_generator", "as_batch_t", "as_scalar_t", "time_dtype"]

TimeLike = Union[None, float, int, Tensor]


def check_positive_int(value, name: str, allow_zero: bool = False) -> int:
    """``value`` as an ``int`` that is ``>= 1`` (``>= 0`` with ``allow_zero``).

    Parameters
    ----------
    value : int
        A count (``n_steps``, ``chunk_size``, ...); any integral number but ``bool``.
    name : str
        The argument's name, for the message.
    allow_zero : bool
        Whether ``0`` is allowed.

    Raises
    ------
    InputTypeError
        If ``value`` is not an integer.
    InputError
        If it is too small.
    """
    kind = "a non-negative integer (>= 0)" if allow_zero else "a positive integer"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < (0 if allow_zero else 1):
        raise InputError(f"{name} must be {kind}, got {value}")
    return value


def check_generator(
    generator: Optional[torch.Generator], like: Union[None, Tensor, torch.device, str] = None
) -> Optional[torch.Generator]:
    """``generator`` (``None`` or a ``torch.Generator``), checked against ``like``'s device.

    Parameters
    ----------
    generator : torch.Generator or None
        The source of randomness (``None``: PyTorch's global generator).
    like : Tensor, torch.device or str, optional
        Where the random numbers are drawn; a generator on another device type is an error.

    Raises
    ------
    InputTypeError
        If ``generator`` is neither ``None`` nor a ``torch.Generator``.
    InputError
        If it lives on another device type than ``like``.
    """
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise InputTypeError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, "
            f"got {type(generator).__name__}"
        )
    if like is not None:
        device = like.device if isinstance(like, Tensor) else torch.device(like)
        if generator.device.type != device.type:
            raise InputError(
                f"the generator is on {generator.device} but x is on {device}; use "
                f"torch.Generator(device={str(device)!r}).manual_seed(seed)"
            )
    return generator


def as_batch_t(t: TimeLike, x: Tensor) -> Optional[Tensor]:
    """``t`` as a ``(B,)`` tensor on ``x``'s device and dtype (``None`` stays ``None``).

    For 16-bit ``x`` (float16, bfloat16) ``t`` is float32: a 16-bit ``t`` cannot tell neighbouring
    training steps apart (bfloat16 holds ~3 significant digits), so the diffusion time stays exact.

    A number, a 0-d tensor or a ``(1,)`` tensor is broadcast to the batch ``B = x.shape[0]``;
    a ``(B,)`` tensor is used as it is. Values are not range-checked (see
    :meth:`ebmcompose.Energy.check_input`), so this is cheap enough for a sampler's inner loop.

    Raises
    ------
    InputError
        If ``t`` has several entries but not ``B``.
    """
    if t is None:
        return None
    b = x.shape[0]
    dtype = time_dtype(x.dtype)
    if isinstance(t, Tensor):
        t = t.to(device=x.device, dtype=dtype)
        if t.dim() == 0:
            return t.expand(b)
        t = t.reshape(-1)
        if t.shape[0] == 1:
            return t.expand(b)
        if t.shape[0] != b:
            raise InputError(f"t has {t.shape[0]} entries but x has batch size {b}; pass a scalar or (B,)")
        return t
    return torch.full((b,), float(t), device=x.device, dtype=dtype)


def time_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of diffusion time for samples of ``dtype``: itself, or float32 for 16-bit floats."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def as_scalar_t(t: TimeLike, what: str = "t") -> float:
    """A single diffusion time in ``[0, 1]`` (a number or a one-element tensor) as a ``float``.

    Raises
    ------
    InputError
        If ``t`` has several entries, or is not finite and in ``[0, 1]``.
    """
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise InputError(f"{what} needs a scalar t, got a tensor of shape {tuple(t.shape)}")
        t = t.item()
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise InputTypeError(f"{what} needs t as a number in [0, 1], got {type(t).__name__}")
    t = float(t)
    if not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise InputError(f"t must be in [0, 1] (0 = data, 1 = noise), got {t}")
    return t
