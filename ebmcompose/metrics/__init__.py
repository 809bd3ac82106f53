"""Sample-quality metrics: two-sample distances (:mod:`.two_sample`) and comparisons against
exact 2-D densities (:mod:`.exact2d`).

Two-sample statistics (compare samples ``x`` with samples ``y``):

* :func:`mmd` — unbiased MMD² with a multi-bandwidth RBF kernel;
* :func:`energy_distance` — ``2 E|X−Y| − E|X−X'| − E|Y−Y'|`` (unbiased within terms);
* :func:`sliced_wasserstein` — ``SW_p`` from exact 1-D transport of random projections.

Comparisons with an exact density:

* :func:`histogram_tv` / :func:`histogram_tv_baseline` — total variation between a 2-D
  histogram and exact cell probabilities (via :func:`ebmcompose.grid.grid_density`), and the
  noise floor an exact sample of the same size would reach;
* :func:`mode_weight_error` — mixture mode frequencies against the exact weights;
* :func:`mean_log_likelihood` — mean log density of the samples under an exact density.

Conventions
-----------
Samples are ``(N, D)`` tensors. Inputs with more dimensions ``(N, *event)`` (images) are
flattened to ``(N, -1)``; 1-D inputs are rejected (use ``x[:, None]`` for one-dimensional
data). Every computation runs on the inputs' device and returns tensors there; randomness
(subsampling, projections) comes from an explicit ``torch.Generator``: when ``generator`` is
``None`` a fresh generator seeded with 0 is used, so results are reproducible and no global
random state is touched.

Pairwise statistics (:func:`mmd`, :func:`energy_distance`) are quadratic in the number of
samples. They are computed block-wise (``chunk_size × chunk_size`` blocks, so memory is
``O(chunk_size² + N D)``) on at most ``max_samples`` points per set, drawn without replacement
when a set is larger: with more samples than that the value is a (still unbiased) estimate
from a random subsample.
"""

from . import exact2d, two_sample  # noqa: F401  (ec.metrics.two_sample, ec.metrics.exact2d)
from .exact2d import (
    HistogramTV,
    ModeWeightError,
    TVBaseline,
    cell_probabilities,
    histogram_tv,
    histogram_tv_baseline,
    mean_log_likelihood,
    mode_weight_error,
)
from .two_sample import (  # noqa: F401  (the DEFAULT_* constants stay reachable here)
    DEFAULT_BANDWIDTH_FACTORS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_SAMPLES,
    MEDIAN_SAMPLES,
    energy_distance,
    median_distance,
    mmd,
    sliced_wasserstein,
)

__all__ = [
    "mmd",
    "energy_distance",
    "sliced_wasserstein",
    "median_distance",
    "histogram_tv",
    "histogram_tv_baseline",
    "cell_probabilities",
    "HistogramTV",
    "TVBaseline",
    "mode_weight_error",
    "ModeWeightError",
    "mean_log_likelihood",
]
