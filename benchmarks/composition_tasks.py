"""The tasks of the composition study and their mode-weight errors (:mod:`benchmarks.composition_2d`).

The three tasks of :mod:`toy.tasks` plus ``tilted`` (ring AND diagonal bar AND a Gaussian tilt:
two modes of unequal weight), and for each a function that scores how well a sample gets the
relative weights of the target's modes or regions.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Optional, Tuple

import torch

import ebmcompose as ec
import toy

__all__ = ["TASKS", "tilted_task", "get_task", "ring_modes", "mode_error_fn"]

#: Task names: the three of :mod:`toy.tasks` and the harder one of this module.
TASKS: Tuple[str, ...] = ("product", "mixture", "negation", "tilted")


# --------------------------------------------------------------------------- the harder task
def _diagonal_bar(length=10.0, width=0.4, n=11, name="diag", dtype=None) -> toy.GaussianMixture:
    """:func:`toy.bar` rotated by 45°: flat along ``y = x`` over ``length``, std ``width`` across."""
    h = length / (n - 1)
    u = torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2.0)
    v = torch.tensor([-1.0, 1.0], dtype=torch.float64) / math.sqrt(2.0)
    along = torch.linspace(-0.5 * length, 0.5 * length, n, dtype=torch.float64)
    means = along[:, None] * u
    rot = torch.stack([u, v], dim=1)
    cov = rot @ torch.diag(torch.tensor([h**2, width**2], dtype=torch.float64)) @ rot.T
    dtype = dtype or torch.get_default_dtype()
    return toy.GaussianMixture(means.to(dtype), covs=cov.expand(n, 2, 2).to(dtype), name=name)


def _compose_tilted(c):
    return c["ring"] + c["diag"] + c["tilt"]


def tilted_task(dtype: Optional[torch.dtype] = None) -> "toy.tasks.Task":
    """The harder task: ring AND diagonal bar AND a broad Gaussian tilt (three components).

    ``ring``: :func:`toy.ring` ``(8, radius=4, std=0.3)``; ``diag``: 11 Gaussians along
    ``y = x`` on ``[−5, 5]`` (flat along the bar, std 0.4 across); ``tilt``: ``N((1, 1), 3² I)``.
    The bar keeps the two ring modes at ``±(2.83, 2.83)`` and the tilt weights them about
    78 : 22, so a sampler must get the relative mode weights right, not only the modes. The
    exact target is the 88-component mixture ``gmm_product(gmm_product(ring, diag), tilt)``.
    """
    ring = toy.ring(8, radius=4.0, std=0.3, name="ring", dtype=dtype)
    diag = _diagonal_bar(dtype=dtype)
    tilt = toy.GaussianMixture(torch.tensor([[1.0, 1.0]], dtype=dtype or torch.get_default_dtype()),
                               stds=3.0, name="tilt")
    comps = MappingProxyType({"ring": ring, "diag": diag, "tilt": tilt})
    exact = toy.gmm_product(toy.gmm_product(ring, diag), tilt, name="ring&diag&tilt")
    return toy.tasks.Task(
        name="tilted", components=comps, composed=_compose_tilted(comps), exact=exact,
        bounds=toy.tasks.BOUNDS, compose=_compose_tilted,
        description="8-Gaussian ring AND diagonal bar AND Gaussian tilt (modes 78:22)",
    )


def get_task(name: str) -> "toy.tasks.Task":
    """A task of :data:`TASKS` (fresh object)."""
    return tilted_task() if name == "tilted" else toy.tasks.get(name)


# --------------------------------------------------------------------------- mode / region weights
def ring_modes(task) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ring means ``(8, 2)`` and the exact target mass of each ring mode ``(8,)``.

    The exact target is ``gmm_product(ring, ...)`` whose component ``k`` belongs to ring mode
    ``k // (K / 8)`` (ring-major order of :func:`toy.gmm_product`).
    """
    ring = task.components["ring"]
    k_ring = ring.n_components
    w = task.exact.weights.double()
    per = w.numel() // k_ring
    return ring.means.double(), w.reshape(k_ring, per).sum(1)


def mode_error_fn(task) -> Tuple[Callable[[torch.Tensor], float], str]:
    """``(fn, description)``: ``fn(samples) -> float`` total-variation error of mode weights.

    product / tilted: the 8 ring modes (nearest ring mean), exact weights from the product
    mixture; mixture: left vs right bar (nearest bar centre), exact 1/2 : 1/2; negation: the
    mass inside the hole ``[−2, 2]²`` vs outside, exact from a 480² grid of the target.
    """
    if task.name in ("product", "tilted"):
        means, weights = ring_modes(task)
        return (lambda x: float(ec.metrics.mode_weight_error(x.double(), means, weights).tv),
                "8 ring modes (nearest mean)")
    if task.name == "mixture":
        means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
        return (lambda x: float(ec.metrics.mode_weight_error(x.double(), means).tv),
                "left vs right bar (nearest centre), exact 1/2 : 1/2")
    if task.name == "negation":
        grid = ec.grid.grid_density(task.composed, task.bounds, resolution=480)
        c = grid.centers
        inside = (c.abs() <= 2.0).all(-1)
        p_in = float(grid.probs.reshape(-1)[inside].sum())

        def fn(x):
            f_in = float((x.double().abs() <= 2.0).all(-1).double().mean())
            return abs(f_in - p_in)  # TV of the two-region partition {hole, rest}

        return fn, f"mass in the hole [-2, 2]^2 (exact {p_in:.3f}) vs outside"
    raise ValueError(task.name)
