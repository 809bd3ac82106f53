"""ebmcompose: compositional generation with energy-based models.

Energies (analytic functions, ``nn.Module``\\ s, score-only functions, diffusion ε-networks) are
:class:`Energy` objects that compose with an algebra (``a + b`` product/AND, ``w * a``
temperature, ``a - b`` NOT, ``a | b`` mixture/OR). Samplers live in the sibling package
``samplers`` and toy densities with exact answers in ``toy``.
"""

from .energy import (
    Energy,
    EnergyFunction,
    Evaluation,
    LeafGroup,
    Mixture,
    ScoreFunction,
    ScoreOnlyError,
    Sum,
    as_energy,
    conjunction,
    mixture,
    negation,
)
from .schedule import VPSchedule

__version__ = "0.1.0"

__all__ = [
    "Energy",
    "EnergyFunction",
    "Evaluation",
    "LeafGroup",
    "Mixture",
    "ScoreFunction",
    "ScoreOnlyError",
    "Sum",
    "VPSchedule",
    "as_energy",
    "conjunction",
    "mixture",
    "negation",
]
