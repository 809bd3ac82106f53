"""Input checks and small helpers shared by the metrics (not public)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

# ------------------------------------------------------------------------------- validation
def as_samples(x, name: str, min_n: int = 1) -> Tensor:
    """Check and return samples as a floating ``(N, D)`` tensor (images flattened)."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputTypeError(
                f"{name} must be a tensor of shape (N, D), got {type(x).__name__}; convert with "
                f"torch.as_tensor({name}, dtype=torch.float32)"
            ) from exc
    if x.dim() < 2:
        shape = tuple(x.shape)
        raise InputError(
            f"{name} must be a batch of samples of shape (N, D), got a {x.dim()}-D tensor of shape "
            f"{shape}; for one-dimensional data use {name}[:, None] (shape (N, 1))"
        )
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    x = x.detach().flatten(1)  # (N, *event) -> (N, D); works for N = 0 too
    if x.shape[0] < min_n:
        what = "is empty (0 samples)" if x.shape[0] == 0 else f"has only {x.shape[0]} sample(s)"
        raise InputError(f"{name} {what}; this metric needs at least {min_n} samples of shape (N, D)")
    if x.shape[1] == 0:
        raise InputError(f"{name} has shape {tuple(x.shape)}: samples need at least one feature")
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise InputError(
            f"{name} contains NaN or inf in {bad.numel()} of {x.shape[0]} samples (first at index "
            f"{int(bad[0])}); fix the sampler (e.g. a smaller step size) or drop them with "
            f"{name}[torch.isfinite({name}).all(dim=1)]"
        )
    return x


def as_pair(x, y, min_n: int = 1) -> Tuple[Tensor, Tensor]:
    """Validate two sample sets: same feature dimension, same device, common dtype."""
    x = as_samples(x, "x", min_n)
    y = as_samples(y, "y", min_n)
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"x has D={x.shape[1]} features but y has D={y.shape[1]}; both must be (N, D) with "
            f"the same D (images are flattened: x {tuple(x.shape)}, y {tuple(y.shape)})"
        )
    if x.device != y.device:
        raise InputError(
            f"x is on {x.device} but y is on {y.device}; move one of them, e.g. y.to(x.device)"
        )
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def default_generator(generator: Optional[torch.Generator]) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """``(n, m)`` squared Euclidean distances (clamped at 0 against round-off)."""
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)
