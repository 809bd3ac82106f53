"""The three 2-D composition tasks of Du et al. 2023 ("Reduce, Reuse, Recycle", ICML 2023).

Every component is a closed-form density with an exact diffused energy at every ``t``:

``product``
    ``ring + bar``: the 8-Gaussian ring (radius 4, std 0.3) AND a vertical bar through the
    origin. The bar is a column of 11 overlapping Gaussians (:func:`toy.bar`: means at
    ``x = 0``, ``y ∈ {−5, −4, …, 5}``, std 1 along y, 0.5 across), so the exact product is the
    88-component mixture ``gmm_product(ring, bar)``: essentially the two ring modes at
    ``(0, ±4)``.
``mixture``
    ``left | right``: a bar at ``x = −2`` OR a bar at ``x = +2`` (each 13 Gaussians, means at
    ``y ∈ {−3, −2.5, …, 3}``, std 0.5 along y and across). With normalised energies ``a | b`` is
    ``−log(p_a + p_b)``, so the exact target is the equal-weight mixture of the two bars.
``negation``
    ``box − 0.5 * small``: a smooth box ``[−4, 4]²`` (smoothing 0.3) divided by the square
    root of a smooth box ``[−2, 2]²`` (smoothing 1.0), :class:`toy.SmoothBox`. No closed form:
    ground truth from :func:`toy.reference_sample` on the bounds.

Each task is a :class:`Task`; :meth:`Task.composed_diffused` is the algebra applied to the
*diffused* components, which is the score a reverse-diffusion sampler follows. For the product
and the negation it is **not** the energy of the diffused composition (Du et al.'s point: the
product of noised densities is not the noised product, hence MCMC correctors); for the mixture
it is exact, because diffusion is linear in the density and ``|`` adds normalised densities.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ebmcompose import Energy

from .box import SmoothBox
from .gaussian import GaussianMixture, bar, gmm_product, ring
from .reference import reference_sample

__all__ = ["Task", "product", "mixture", "negation", "get", "names", "NEGATION_BETA"]

#: Negation strength of the ``negation`` task.
NEGATION_BETA = 0.5

#: Bounds ``(lo, hi)`` of every task's square (the target's mass outside is below ``1e-6``).
BOUNDS: Tuple[float, float] = (-6.0, 6.0)


@dataclass(frozen=True)
class Task:
    """A 2-D composition task with exact answers.

    Attributes
    ----------
    name : str
        ``"product"``, ``"mixture"`` or ``"negation"``.
    components : Mapping[str, Energy]
        The named component energies (static, normalised), read-only.
    composed : Energy
        The target built with the algebra from ``components``.
    exact : GaussianMixture or None
        The normalised target in closed form where one exists (product, mixture).
    bounds : (float, float)
        Square ``[lo, hi]²`` that holds the target's mass (for reference sampling and plots).
    compose : callable
        ``compose(components: dict) -> Energy``: the task's algebra, applied to any set of
        components with the same names (used for the diffused composition).
    description : str
        One line, for plots and reports.
    """

    name: str
    components: Mapping[str, Energy]
    composed: Energy
    exact: Optional[GaussianMixture]
    bounds: Tuple[float, float]
    compose: Callable[[Dict[str, Energy]], Energy]
    description: str = ""

    def diffused_components(self, schedule) -> Dict[str, Energy]:
        """The exact diffused energy of every component (time-dependent)."""
        return {k: e.diffused(schedule) for k, e in self.components.items()}

    def composed_diffused(self, schedule) -> Energy:
        """The algebra applied to the diffused components (what reverse diffusion follows).

        For ``product`` and ``negation`` this is *not* the diffused target; see the module notes.
        """
        return self.compose(self.diffused_components(schedule))

    def exact_diffused(self, schedule) -> Optional[Energy]:
        """The energy of the diffused *target* ``p_t`` where a closed form exists, else ``None``."""
        return None if self.exact is None else self.exact.diffused(schedule)

    def sample_exact(
        self, n: int, generator: Optional[torch.Generator] = None, resolution: int = 512
    ) -> Tensor:
        """``(n, 2)`` exact samples of the target: from ``exact`` when it exists, else
        :func:`toy.reference_sample` of ``composed`` on ``bounds`` at ``resolution``."""
        if self.exact is not None:
            return self.exact.sample(n, generator=generator)
        dtype = next(iter(self.composed.buffers())).dtype
        return reference_sample(
            self.composed, n, self.bounds, resolution=resolution, generator=generator, dtype=dtype
        )


def _task(name, components, compose, exact, description) -> Task:
    comps = MappingProxyType(dict(components))
    return Task(
        name=name,
        components=comps,
        composed=compose(comps),
        exact=exact,
        bounds=BOUNDS,
        compose=compose,
        description=description,
    )


def _compose_product(c):
    return c["ring"] + c["bar"]


def _compose_mixture(c):
    return c["left"] | c["right"]


def _compose_negation(c):
    return c["box"] - NEGATION_BETA * c["small"]


def product(dtype: Optional[torch.dtype] = None) -> Task:
    """Ring AND vertical bar (``ring + bar``); exact target ``gmm_product(ring, bar)``.

    The ring is :func:`toy.ring` ``(n=8, radius=4, std=0.3)``; the bar is
    :func:`toy.bar` ``(center=(0, 0), length=10, width=0.5, n=11)``: 11 Gaussians at
    ``(0, −5), …, (0, 5)``, covariance ``diag(0.5², 1²)``, flat along y on ``[−5, 5]``.
    """
    r = ring(8, radius=4.0, std=0.3, name="ring", dtype=dtype)
    b = bar(center=(0.0, 0.0), length=10.0, width=0.5, n=11, name="bar", dtype=dtype)
    return _task(
        "product", {"ring": r, "bar": b}, _compose_product, gmm_product(r, b, name="ring&bar"),
        "8-Gaussian ring AND vertical bar",
    )


def mixture(dtype: Optional[torch.dtype] = None) -> Task:
    """Left bar OR right bar (``left | right``); exact target the equal-weight mixture.

    Each bar is :func:`toy.bar` ``(length=6, width=0.5, n=13)`` centred at ``(∓2, 0)``: 13
    Gaussians at ``y = −3, −2.5, …, 3``, covariance ``diag(0.5², 0.5²)``, flat along y on
    ``[−3, 3]``.
    """
    left = bar(center=(-2.0, 0.0), length=6.0, width=0.5, n=13, name="left", dtype=dtype)
    right = bar(center=(2.0, 0.0), length=6.0, width=0.5, n=13, name="right", dtype=dtype)
    means = torch.cat([left._means, right._means])
    covs = torch.cat([left._covs, right._covs])
    weights = torch.cat([0.5 * left.weights, 0.5 * right.weights])
    exact = GaussianMixture(means, covs=covs, weights=weights, name="left|right")
    return _task("mixture", {"left": left, "right": right}, _compose_mixture, exact, "left bar OR right bar")


def negation(dtype: Optional[torch.dtype] = None) -> Task:
    """Box NOT small box (``box − 0.5 * small``); ground truth by reference sampling.

    ``box = SmoothBox([−4, −4], [4, 4], smoothing=0.3)``,
    ``small = SmoothBox([−2, −2], [2, 2], smoothing=1.0)``, target
    ``p ∝ p_box / p_small^β`` with ``β = 0.5``.

    Why these numbers: in each axis the tails are Gaussian, ``log p_box ≈ −d²/(2 s_box²)`` and
    ``log p_small ≈ −d²/(2 s_small²)``, so ``p_box / p_small^β`` is normalisable iff
    ``β s_box² < s_small²``. With ``s_small >= s_box`` and ``β < 1`` this holds, and it keeps
    holding for the diffused components at every ``t`` (their smoothings are
    ``sqrt(ᾱ s² + 1 − ᾱ)``, which preserves the order), so ``composed_diffused`` is a proper
    density at every noise level too. A wide blur on the small box keeps the hole gentle: the
    density in the hole is about 2.5 times lower than at ``(±3, 0)`` and 6 times lower than at
    ``(±3, ±3)``, and the target puts negligible mass (``< 1e-6``) outside ``[−6, 6]²``.
    (With a sharp small box, ``p_small^{−β}`` grows like ``exp(β d²/(2 s²))`` and pushes the
    mass onto the outer box's edges.)
    """
    box = SmoothBox([-4.0, -4.0], [4.0, 4.0], smoothing=0.3, name="box", dtype=dtype)
    small = SmoothBox([-2.0, -2.0], [2.0, 2.0], smoothing=1.0, name="small", dtype=dtype)
    return _task("negation", {"box": box, "small": small}, _compose_negation, None, "box NOT small box")


_BUILDERS = {"product": product, "mixture": mixture, "negation": negation}


def names() -> Tuple[str, ...]:
    """Names of the tasks: ``("product", "mixture", "negation")``."""
    return tuple(_BUILDERS)


def get(name: str, dtype: Optional[torch.dtype] = None) -> Task:
    """Build the task called ``name`` (a fresh, independent object each call).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones).
    """
    try:
        builder = _BUILDERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; valid tasks are {', '.join(names())}") from None
    return builder(dtype=dtype)
