"""ebmcompose: compositional generation with energy-based models.

Energies (analytic functions, ``nn.Module``\\ s, score-only functions, diffusion ε-networks) are
:class:`Energy` objects that compose with an algebra (``a + b`` product/AND, ``w * a``
temperature, ``a - b`` NOT, ``a | b`` mixture/OR). Samplers live in the sibling package
``samplers`` and toy densities with exact answers in ``toy``.
"""

from .energy import Energy, Evaluation, LeafGroup, ScoreOnlyError
from .leaves import EnergyFunction, ScoreFunction, as_energy
from .nodes import Mixture, Sum
from .operators import conjunction, mixture, negation
from .diffusion_energy import DiffusionEnergy
from .errors import InputError, InputTypeError
from .epsilon import EpsilonModel
from .network import Conditioned, NetworkModel
from .parse import ParseError, parse
from .schedule import VPSchedule

__version__ = "0.1.0"

__all__ = [
    "Conditioned",
    "DiffusionEnergy",
    "Energy",
    "EnergyFunction",
    "EpsilonModel",
    "Evaluation",
    "InputError",
    "InputTypeError",
    "LeafGroup",
    "Mixture",
    "NetworkModel",
    "ParseError",
    "ScoreFunction",
    "ScoreOnlyError",
    "Sum",
    "VPSchedule",
    "as_energy",
    "conjunction",
    "mixture",
    "negation",
    "parse",
]

# Submodules reached as ec.metrics / ec.plot / ec.pipelines / ec.distributed (plot imports matplotlib, pipelines
# diffusers and transformers, only when called).
from . import checks, checkpoint, consistency, distributed, metrics, pipelines, plot  # noqa: E402
