"""Interchangeable samplers for :class:`ebmcompose.Energy` targets, one algorithm per module.

Static MCMC kernels (``init``/``step``/``sample``): :class:`ULA`, :class:`MALA`, :class:`HMC`.
Annealed / diffusion samplers down a noise ladder: :class:`AnnealedLangevin`,
:class:`ReverseDiffusion`, :class:`PredictorCorrector`; weighted particles with resampling:
:class:`SMC` (``samplers.resampling`` holds its resampling schemes). See ``samplers.base`` for the kernel contract,
``samplers.run`` for the loop that drives any kernel and ``samplers.ladder`` for the noise-ladder driver.

Names are resolved lazily so ``import samplers`` stays cheap.
"""

from importlib import import_module

from .base import MCMCKernel, NonFiniteStateError, State, StepInfo
from .result import KernelSummary, LadderSummary, SampleResult

_LAZY = {
    "ULA": ".ula",
    "MALA": ".mala",
    "HMC": ".hmc",
    "AnnealedLangevin": ".annealed_langevin",
    "ReverseDiffusion": ".reverse_diffusion",
    "PredictorCorrector": ".predictor_corrector",
    "SMC": ".smc",
    "SMCSummary": ".smc",
    "DualAveraging": ".adaptation",
    "diagnostics": ".diagnostics",
    "resampling": ".resampling",
    "health": ".health",
    "SamplingWarning": ".health",
    "DivergenceError": ".health",
    "ULAInfo": ".ula",
    "MALAInfo": ".mala",
    "HMCInfo": ".hmc",
    "HMCState": ".hmc",
    "RunConfig": ".run",
    "LadderState": ".ladder",
    "LevelInfo": ".ladder",
}

__all__ = ["MCMCKernel", "NonFiniteStateError", "KernelSummary", "LadderSummary", "SampleResult", "State", "StepInfo", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name], __name__)
        value = module if name in ("diagnostics", "health", "resampling") else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'samplers' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
