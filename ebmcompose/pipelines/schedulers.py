"""Diffusers schedulers by name, and the ε-configured copy every ebmcompose loop steps with.

Diffusers is imported when a scheduler is built, never at import time.
"""

from __future__ import annotations

from typing import Any, Dict

from ..errors import InputError

__all__ = ["SCHEDULERS", "make_scheduler", "epsilon_scheduler"]

#: Short names (CLI ``--sampler`` values) → diffusers scheduler classes.
SCHEDULERS: Dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def make_scheduler(name: str, config: Any):
    """The diffusers scheduler ``SCHEDULERS[name]`` built from another scheduler's ``config``
    (same training betas, spacing and offsets: diffusers' own way to swap schedulers)."""
    import diffusers

    key = str(name).lower()
    if key not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[key]).from_config(config)


def epsilon_scheduler(scheduler):
    """``scheduler``, or a copy configured for ``prediction_type="epsilon"`` when it expects another
    parameterisation (v-prediction): ebmcompose always hands a scheduler the composed ε̂."""
    config = getattr(scheduler, "config", None)
    kind = getattr(config, "prediction_type", None) if config is not None else None
    if kind is None or kind == "epsilon":
        return scheduler
    return type(scheduler).from_config(config, prediction_type="epsilon")
