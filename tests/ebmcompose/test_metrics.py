"""Tests of ebmcompose.metrics: null behaviour against permutation noise, monotone response to a
shift, agreement with naive/independent implementations, bounded memory on 200k samples, and
error messages for bad inputs."""

import math
import time

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebmcompose as ec
from ebmcompose import metrics
from ebmcompose.metrics import two_sample

TWO_SAMPLE = {
    "mmd": metrics.mmd,
    "energy_distance": metrics.energy_distance,
    "sliced_wasserstein": metrics.sliced_wasserstein,
}


def gaussian(n, d=2, shift=0.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x[:, 0] += shift
    return x


def permutation_null(stat, x, y, n_perm=20, seed=123):
    """The statistic on random re-splits of the pooled sample: its null distribution."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.cat([x, y])
    vals = []
    for _ in range(n_perm):
        idx = torch.randperm(pool.shape[0], generator=g)
        vals.append(float(stat(pool[idx[: x.shape[0]]], pool[idx[x.shape[0] :]])))
    return torch.tensor(vals, dtype=torch.float64)


# ------------------------------------------------------------------------------ two-sample
@pytest.mark.parametrize("name", sorted(TWO_SAMPLE))
def test_equal_distributions_within_permutation_noise_and_shift_detected(name):
    stat = TWO_SAMPLE[name]
    x, y = gaussian(300, seed=1), gaussian(300, seed=2)
    null = permutation_null(stat, x, y)
    threshold = float(null.mean() + 4 * null.std())
    same = float(stat(x, y))
    assert same < threshold, f"{name} = {same} on equal distributions; null mean+4sd = {threshold}"
    if name != "sliced_wasserstein":  # unbiased U-statistics: centred on 0
        assert abs(same) < 4 * float(null.std()) + 1e-12
        assert abs(float(null.mean())) < 2 * float(null.std())
    shifted = float(stat(x, gaussian(300, shift=0.5, seed=2)))
    assert shifted > threshold, f"{name} misses a 0.5-sd shift: {shifted} <= {threshold}"


@pytest.mark.parametrize("name", sorted(TWO_SAMPLE))
def test_strictly_increasing_in_shift(name):
    stat = TWO_SAMPLE[name]
    x, y = gaussian(1000, seed=3), gaussian(1000, seed=4)
    values = []
    for s in (0.0, 0.25, 0.5, 1.0, 2.0):
        ys = y.clone()
        ys[:, 0] += s
        values.append(float(stat(x, ys)))
    assert all(b > a for a, b in zip(values, values[1:])), f"{name} not increasing: {values}"


def naive_mmd(x, y, bandwidths):
    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths) / len(bandwidths)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * k(x, y).mean()
    )


def naive_energy_distance(x, y):
    d = torch.cdist
    n, m = len(x), len(y)
    return 2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1))


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 1000])
def test_pairwise_metrics_match_naive_formula_for_any_chunking(chunk_size):
    x = gaussian(37, d=3, seed=5, dtype=torch.float64)
    y = gaussian(23, d=3, shift=0.3, seed=6, dtype=torch.float64) * 1.5
    bw = [0.5, 1.0, 3.0]
    got = metrics.mmd(x, y, bandwidths=bw, chunk_size=chunk_size)
    torch.testing.assert_close(got, naive_mmd(x, y, bw), rtol=1e-10, atol=1e-12)
    got = metrics.energy_distance(x, y, chunk_size=chunk_size)
    torch.testing.assert_close(got, naive_energy_distance(x, y), rtol=1e-8, atol=1e-12)


def test_default_bandwidths_are_median_multiples():
    x, y = gaussian(50, seed=7, dtype=torch.float64), gaussian(60, seed=8, dtype=torch.float64)
    pool = torch.cat([x, y])
    d = torch.pdist(pool)
    med = d.median()  # pooled set < 1024 points: no subsampling in the median estimate
    torch.testing.assert_close(metrics.median_distance(x, y), med)
    expected = naive_mmd(x, y, [f * float(med) for f in (0.25, 0.5, 1.0, 2.0, 4.0)])
    torch.testing.assert_close(metrics.mmd(x, y), expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(st.floats(-100, 100), min_size=1, max_size=25),
    b=st.lists(st.floats(-100, 100), min_size=1, max_size=25),
)
def test_sliced_wasserstein_1d_is_exact_w1_for_unequal_sizes(a, b):
    x = torch.tensor(a, dtype=torch.float64)[:, None]
    y = torch.tensor(b, dtype=torch.float64)[:, None]
    got = float(metrics.sliced_wasserstein(x, y, p=1))
    assert got == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-9, abs=1e-9)


def test_sliced_wasserstein_p2_exact_cases():
    x = gaussian(101, d=1, seed=9, dtype=torch.float64)
    y = gaussian(101, d=1, shift=0.7, seed=10, dtype=torch.float64)
    expected = (x.sort(0).values - y.sort(0).values).pow(2).mean().sqrt()
    torch.testing.assert_close(metrics.sliced_wasserstein(x, y), expected)
    # The same empirical distribution with every point duplicated: distance exactly 0.
    assert float(metrics.sliced_wasserstein(x, x.repeat(2, 1))) == pytest.approx(0.0, abs=1e-12)
    # A pure translation moves every projection by θ·s: SW_2² = E_θ (θ·s)² = |s|²/D.
    x2 = gaussian(300, d=2, seed=11, dtype=torch.float64)
    s = torch.tensor([1.0, 0.0], dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x2, x2 + s, n_projections=4000)
    assert float(sw) == pytest.approx(math.sqrt(0.5), rel=0.03)


def test_generator_makes_estimates_reproducible():
    x, y = gaussian(3000, seed=12), gaussian(3000, shift=0.2, seed=13)
    a = metrics.mmd(x, y, max_samples=500, generator=torch.Generator().manual_seed(1))
    b = metrics.mmd(x, y, max_samples=500, generator=torch.Generator().manual_seed(1))
    c = metrics.mmd(x, y, max_samples=500, generator=torch.Generator().manual_seed(2))
    assert float(a) == float(b) and float(a) != float(c)
    assert float(metrics.mmd(x, y, max_samples=500)) == float(metrics.mmd(x, y, max_samples=500))
    sw1 = metrics.sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(1))
    sw2 = metrics.sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(2))
    assert float(sw1) != float(sw2)


def test_images_are_flattened():
    x = gaussian(64, d=12, seed=14).reshape(64, 3, 2, 2)
    y = gaussian(50, d=12, shift=0.5, seed=15).reshape(50, 3, 2, 2)
    for fn in TWO_SAMPLE.values():
        assert float(fn(x, y)) == float(fn(x.reshape(64, -1), y.reshape(50, -1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_follow_input_device_and_dtype(dtype):
    x, y = gaussian(40, seed=16, dtype=dtype), gaussian(30, seed=17, dtype=dtype)
    for fn in TWO_SAMPLE.values():
        out = fn(x, y)
        assert out.shape == () and out.device == x.device and out.dtype == dtype


# ------------------------------------------------------------------------------ large N
def test_200k_samples_run_chunked_in_bounded_memory(monkeypatch):
    blocks = []
    original = two_sample._block_sq_dists

    def recording(a, b):
        blocks.append((a.shape[0], b.shape[0]))
        return original(a, b)

    monkeypatch.setattr(two_sample, "_block_sq_dists", recording)
    n = 200_000
    x, y = gaussian(n, seed=18), gaussian(n, shift=0.1, seed=19)
    start = time.perf_counter()
    m = metrics.mmd(x, y, max_samples=2000, chunk_size=512)
    assert max(max(b) for b in blocks) <= 512
    # 2000 points -> 4 row blocks: 10 upper-triangular blocks per within term, 16 across.
    assert len(blocks) == 10 + 10 + 16
    blocks.clear()
    e = metrics.energy_distance(x, y, chunk_size=1000)  # default max_samples = 4096
    assert max(max(b) for b in blocks) <= 1000
    assert sum(a * b for a, b in blocks) < 3 * 4096**2  # never the 200k x 200k matrix
    sw = metrics.sliced_wasserstein(x, y, n_projections=32, chunk_size=8)
    energy = ec.EnergyFunction(lambda z: 0.5 * (z**2).sum(-1), name="gauss")
    tv = metrics.histogram_tv(x, energy, (-6, 6), resolution=32, oversample=4)
    mw = metrics.mode_weight_error(x, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), chunk_size=50_000)
    ll = metrics.mean_log_likelihood(x, energy=energy, log_z=math.log(2 * math.pi))
    elapsed = time.perf_counter() - start
    for v in (m, e, sw, tv.tv, mw.tv, ll):
        assert torch.isfinite(v)
    assert float(m) > 0 and float(e) > 0  # a 0.1 shift is visible at this size
    assert elapsed < 30, f"metrics on 200k samples took {elapsed:.1f}s"


@pytest.mark.gpu
def test_metrics_run_on_cuda():
    dev = torch.device("cuda")
    x, y = gaussian(5000, seed=20).to(dev), gaussian(5000, shift=0.3, seed=21).to(dev)
    for fn in TWO_SAMPLE.values():
        assert fn(x, y).device.type == "cuda"
    energy = ec.EnergyFunction(lambda z: 0.5 * (z**2).sum(-1), name="gauss")
    assert metrics.histogram_tv(x, energy, (-5, 5)).tv.device.type == "cuda"
    assert metrics.mode_weight_error(x, torch.zeros(1, 2)).tv.device.type == "cuda"
    base = metrics.histogram_tv_baseline(energy, (-5, 5), 5000, generator=torch.Generator(dev))
    assert base.mean.device.type == "cuda"


# ------------------------------------------------------------------------------ histogram TV
class GaussEnergy(ec.Energy):
    """Diagonal Gaussian energy; exact samples come from torch.randn."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64))

    def _energy(self, x, t):
        return (0.5 * ((x - self.mean) / self.std) ** 2).sum(-1)

    def sample(self, n, generator):
        return self.mean + self.std * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def test_histogram_tv_of_exact_samples_is_at_the_baseline_and_shift_is_far_above():
    target = GaussEnergy([0.5, -0.3], [1.0, 0.5])
    bounds, n, res = ((-5, 6), (-3.5, 3)), 20_000, 32
    base = metrics.histogram_tv_baseline(target, bounds, n, res, n_repeats=16)
    exact = metrics.histogram_tv(target.sample(n, torch.Generator().manual_seed(22)), target, bounds, res)
    assert float(exact.outside) == 0.0
    assert abs(float(exact.tv) - float(base.mean)) < 4 * float(base.std) + 0.002, (exact.tv, base)
    x = target.sample(n, torch.Generator().manual_seed(23))
    x[:, 0] += 0.3
    shifted = metrics.histogram_tv(x, target, bounds, res)
    assert float(shifted.tv) > float(base.mean) + 10 * float(base.std)
    # float(result) is the TV; the histogram and probabilities are normalised as documented.
    assert float(exact) == float(exact.tv)
    assert float(exact.histogram.sum()) == pytest.approx(1.0)
    assert float(exact.probs.sum()) == pytest.approx(1.0)


def test_histogram_tv_baseline_shrinks_like_one_over_sqrt_n():
    target = GaussEnergy([0.0, 0.0], [1.0, 1.0])
    small = metrics.histogram_tv_baseline(target, (-5, 5), 1000, 16, n_repeats=16)
    large = metrics.histogram_tv_baseline(target, (-5, 5), 16_000, 16, n_repeats=16)
    assert 3.0 < float(small.mean) / float(large.mean) < 5.0
    again = metrics.histogram_tv_baseline(target, (-5, 5), 1000, 16, n_repeats=16)
    assert torch.equal(small.values, again.values)  # default generator is seeded


def test_histogram_tv_exact_small_case_and_outside_mass():
    uniform = ec.EnergyFunction(lambda z: torch.zeros(z.shape[0], dtype=z.dtype), name="flat")
    # Four cells of probability 1/4; all samples in cell (0, 0) (one on its corner).
    x = torch.tensor([[0.1, 0.2], [0.5, 0.5], [0.0, 0.0], [0.99, 0.3]])
    r = metrics.histogram_tv(x, uniform, (0, 2), resolution=2, oversample=1)
    assert float(r.tv) == pytest.approx(0.5 * (0.75 + 3 * 0.25))
    # The upper edge belongs to the last cell; points outside count fully as mismatched mass.
    x = torch.tensor([[2.0, 2.0], [0.5, 1.5], [1.5, 0.5], [0.5, 0.5], [9.0, 0.0]])
    r = metrics.histogram_tv(x, uniform, (0, 2), resolution=2, oversample=1)
    assert float(r.outside) == pytest.approx(0.2)
    assert float(r.tv) == pytest.approx(0.5 * (4 * 0.05 + 0.2))
    assert torch.equal(r.histogram, torch.full((2, 2), 0.2, dtype=torch.float64))


def test_cell_probabilities_integrate_over_cells():
    # A narrow Gaussian centred in a coarse cell: the midpoint rule would give that cell ~1,
    # the oversampled cell integral matches the exact Gaussian CDF.
    target = GaussEnergy([0.0, 0.0], [0.3, 0.3])
    grid = metrics.cell_probabilities(target, (-1.5, 1.5), resolution=3, oversample=32)
    p1 = scipy.stats.norm.cdf(0.5 / 0.3) - scipy.stats.norm.cdf(-0.5 / 0.3)
    p1 /= scipy.stats.norm.cdf(1.5 / 0.3) - scipy.stats.norm.cdf(-1.5 / 0.3)
    assert float(grid.probs[1, 1]) == pytest.approx(p1 * p1, rel=2e-3)
    assert grid.x_edges.tolist() == pytest.approx([-1.5, -0.5, 0.5, 1.5])


# ------------------------------------------------------------------------------ modes
def test_mode_weight_error_exact_on_constructed_sample():
    means = torch.tensor([[-5.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    weights = torch.tensor([5.0, 3.0, 2.0])  # normalised to (0.5, 0.3, 0.2)
    g = torch.Generator().manual_seed(24)

    def around(counts):
        pts = [means[k] + 0.5 * torch.randn(c, 2, generator=g) for k, c in enumerate(counts)]
        return torch.cat(pts)[torch.randperm(sum(counts), generator=g)]

    r = metrics.mode_weight_error(around([50, 30, 20]), means, weights)
    assert float(r.tv) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(r.weights, torch.tensor([0.5, 0.3, 0.2]))
    r = metrics.mode_weight_error(around([60, 20, 20]), means, weights, chunk_size=7)
    torch.testing.assert_close(r.frequencies, torch.tensor([0.6, 0.2, 0.2]))
    assert float(r) == pytest.approx(0.1)
    r = metrics.mode_weight_error(around([0, 0, 10]), means)  # equal weights by default
    assert float(r.tv) == pytest.approx(2 / 3)


def test_mode_weight_error_uses_responsibilities_with_covs():
    means = torch.tensor([[0.0], [3.0]])
    x = torch.tensor([[1.0], [0.05]])
    nearest = metrics.mode_weight_error(x, means)
    assert nearest.assignments.tolist() == [0, 0]
    stds = torch.tensor([0.1, 3.0])
    resp = metrics.mode_weight_error(x, means, covs=stds)
    assert resp.assignments.tolist() == [1, 0]  # x=1 is 10 sd from mode 0, 0.7 sd from mode 1
    full = metrics.mode_weight_error(x, means, covs=stds.pow(2)[:, None, None])
    assert torch.equal(full.assignments, resp.assignments)


# ------------------------------------------------------------------------------ likelihood
def test_mean_log_likelihood_matches_gaussian_entropy():
    d, sigma, n = 3, 0.7, 20_000
    x = sigma * torch.randn(n, d, generator=torch.Generator().manual_seed(25), dtype=torch.float64)

    def log_prob(z):
        return -0.5 * (z / sigma).pow(2).sum(-1) - d * math.log(sigma) - 0.5 * d * math.log(2 * math.pi)

    expected = -0.5 * d * math.log(2 * math.pi * math.e * sigma**2)
    se = math.sqrt(d / 2 / n)  # var(log p) = var(chi2_d / 2) = d / 2
    got = float(metrics.mean_log_likelihood(x, log_prob, chunk_size=3000))
    assert abs(got - expected) < 4 * se
    energy = ec.EnergyFunction(lambda z: 0.5 * (z / sigma).pow(2).sum(-1), name="gauss")
    log_z = d * math.log(sigma) + 0.5 * d * math.log(2 * math.pi)
    via_energy = float(metrics.mean_log_likelihood(x, energy=energy, log_z=log_z))
    assert via_energy == pytest.approx(got, rel=1e-12)


def test_mean_log_likelihood_2d_energy_with_grid_normaliser():
    target = GaussEnergy([0.2, 0.0], [0.5, 1.0])
    x = target.sample(10_000, torch.Generator().manual_seed(26))
    expected = -math.log(2 * math.pi * math.e * 0.5 * 1.0)  # -½ Σ log(2πe σ_i²)
    got = float(metrics.mean_log_likelihood(x, energy=target, bounds=((-4, 4), (-7, 7))))
    assert abs(got - expected) < 4 * math.sqrt(1 / 10_000)


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("name", sorted(TWO_SAMPLE))
def test_two_sample_bad_inputs_raise_with_the_fix(name):
    fn = TWO_SAMPLE[name]
    x = gaussian(10)
    with pytest.raises(ValueError, match=r"x has D=2 features but y has D=3"):
        fn(x, gaussian(10, d=3))
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"y contains NaN or inf in 1 of 10 samples \(first at index 3\)"):
        fn(x, bad)
    with pytest.raises(ValueError, match=r"x is empty \(0 samples\)"):
        fn(torch.empty(0, 2), x)
    with pytest.raises(ValueError, match=r"1-D tensor of shape \(10,\); for one-dimensional data use x\[:, None\]"):
        fn(torch.randn(10), x)
    with pytest.raises(TypeError, match="must be a tensor of shape"):
        fn("samples", x)


def test_other_bad_inputs():
    x = gaussian(10)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.mmd(x[:1], x)
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        metrics.mmd(x, x, bandwidths=[1.0, -1.0])
    with pytest.raises(ValueError, match="p must be a finite number >= 1"):
        metrics.sliced_wasserstein(x, x, p=0.5)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        metrics.energy_distance(x, x, chunk_size=0)
    energy = GaussEnergy([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="2-D samples with a 2-D density"):
        metrics.histogram_tv(gaussian(10, d=3), energy, (-3, 3))
    with pytest.raises(ValueError, match="bounds must be"):
        metrics.histogram_tv(x, energy, (3, -3, 1))
    with pytest.raises(ValueError, match=r"means must be \(K, D\) with D=2"):
        metrics.mode_weight_error(x, torch.zeros(3))
    with pytest.raises(ValueError, match="2 weights for 3 means"):
        metrics.mode_weight_error(x, torch.zeros(3, 2), weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="covs must be"):
        metrics.mode_weight_error(x, torch.zeros(3, 2), covs=torch.ones(3, 2))
    with pytest.raises(TypeError, match="pass it as energy="):
        metrics.mean_log_likelihood(x, energy)
    with pytest.raises(ValueError, match="exactly one of log_prob"):
        metrics.mean_log_likelihood(x)
    with pytest.raises(ValueError, match="needs its normaliser"):
        metrics.mean_log_likelihood(x, energy=energy)

