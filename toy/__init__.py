"""toy: 2-D densities with exact answers for testing compositions and samplers.

Closed-form energies (Gaussian mixtures, smooth boxes) with exact VP-diffused energies at
every ``t``, the exact product of Gaussian mixtures, exact grid-based reference sampling of any
2-D energy, the composition tasks of Du et al. 2023 (:mod:`toy.tasks`) and classic training
sets (:mod:`toy.datasets`). Imports ``ebmcompose`` only (never ``samplers``).
"""

from . import datasets, tasks
from .box import DiffusedSmoothBox, SmoothBox
from .gaussian import DiffusedGaussianMixture, GaussianMixture, bar, gmm_product, ring
from .reference import ImproperTargetError, check_fits_bounds, edge_mass, reference_sample
from .tasks import Task

__all__ = [
    "DiffusedGaussianMixture",
    "DiffusedSmoothBox",
    "GaussianMixture",
    "ImproperTargetError",
    "SmoothBox",
    "Task",
    "bar",
    "check_fits_bounds",
    "datasets",
    "edge_mass",
    "gmm_product",
    "reference_sample",
    "ring",
    "tasks",
]

# Learned toy models: nets, DSM training, shipped checkpoints.
from . import nets, pretrained, train  # noqa: E402
from .nets import ResMLP  # noqa: E402

__all__ += ["ResMLP", "nets", "pretrained", "train"]

# Procedural RGB scenes and their evaluator (torch only at import; scipy loads when detecting).
from . import scenes  # noqa: E402

__all__ += ["scenes"]
