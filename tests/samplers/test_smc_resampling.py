"""Resampling schemes: unbiased counts on fixed weights, the variance properties that tell them
apart, zero weights never chosen, the effective sample size, reproducibility."""

import math

import pytest
import torch

import ebmcompose as ec
from samplers import resampling

WEIGHTS = torch.tensor([0.31, 0.0, 0.05, 0.2, 0.004, 0.136, 0.0, 0.3], dtype=torch.float64)


def counts(idx, b):
    return torch.bincount(idx, minlength=b).double()


@pytest.mark.parametrize("scheme", sorted(resampling.SCHEMES))
def test_expected_counts_are_b_times_the_weights(scheme):
    b, reps = WEIGHTS.numel(), 4000
    log_w = WEIGHTS.log() + 3.7  # unnormalised: an offset must not matter
    g = torch.Generator().manual_seed(1)
    c = torch.stack([counts(resampling.resample(log_w, scheme, g), b) for _ in range(reps)])
    mean, se = c.mean(0), c.std(0) / math.sqrt(reps)
    expected = b * WEIGHTS
    assert torch.all(c[:, WEIGHTS == 0] == 0), "a zero-weight particle was chosen"
    assert torch.all(c.sum(1) == b)
    nz = WEIGHTS > 0
    z = (mean[nz] - expected[nz]).abs() / se[nz].clamp_min(1e-12)
    assert float(z.max()) < 4.5, f"{scheme}: counts {mean.tolist()} vs {expected.tolist()} (z {z.tolist()})"


def test_systematic_counts_are_floor_or_ceil_of_b_w():
    b = WEIGHTS.numel()
    g = torch.Generator().manual_seed(2)
    for _ in range(500):
        c = counts(resampling.systematic(WEIGHTS.log(), g), b)
        assert torch.all(c >= torch.floor(b * WEIGHTS) - 1e-9) and torch.all(c <= torch.ceil(b * WEIGHTS) + 1e-9)


def test_multinomial_has_the_multinomial_variance_and_systematic_less():
    b, reps = WEIGHTS.numel(), 4000
    g = torch.Generator().manual_seed(3)
    var = {s: torch.stack([counts(resampling.resample(WEIGHTS.log(), s, g), b) for _ in range(reps)]).var(0)
           for s in resampling.SCHEMES}
    binom = b * WEIGHTS * (1 - WEIGHTS)
    nz = WEIGHTS > 0
    rel = (var["multinomial"][nz] / binom[nz] - 1).abs()
    assert float(rel.max()) < 0.15, f"multinomial count variance {var['multinomial'].tolist()} vs {binom.tolist()}"
    assert float(var["systematic"].sum()) < 0.5 * float(binom.sum())
    assert float(var["stratified"].sum()) < float(binom.sum())


def test_non_finite_log_weights_are_never_chosen():
    log_w = torch.tensor([0.0, -math.inf, math.nan, 1.0])
    g = torch.Generator().manual_seed(4)
    for scheme in resampling.SCHEMES:
        for _ in range(200):
            idx = resampling.resample(log_w, scheme, g)
            assert set(idx.tolist()) <= {0, 3}


def test_ess_values():
    b = 10
    assert float(resampling.ess(torch.zeros(b))) == pytest.approx(b)
    one = torch.full((b,), -math.inf)
    one[3] = 2.0
    assert float(resampling.ess(one)) == pytest.approx(1.0)
    w = torch.rand(b, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert float(resampling.ess(w.log() - 7.0)) == pytest.approx(float(w.sum() ** 2 / (w**2).sum()))


def test_same_generator_same_ancestors_and_bad_input():
    log_w = torch.randn(64, generator=torch.Generator().manual_seed(6))
    for scheme in resampling.SCHEMES:
        a = resampling.resample(log_w, scheme, torch.Generator().manual_seed(7))
        b = resampling.resample(log_w, scheme, torch.Generator().manual_seed(7))
        assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (64,)
    with pytest.raises(ec.InputError, match="unknown resampling scheme"):
        resampling.resample(log_w, "residual")
    with pytest.raises(ec.InputError, match=r"shape \(B,\) or \(G, B\)"):
        resampling.resample(log_w.reshape(4, 4, 4))


@pytest.mark.parametrize("scheme", sorted(resampling.SCHEMES))
def test_populations_resample_independently_within_their_rows(scheme):
    """``(G, B)`` log weights: each row resampled on its own (unbiased counts per row, indices into the
    row); one row draws what the ``(B,)`` call draws."""
    w = torch.stack([WEIGHTS, WEIGHTS.flip(0)])
    lw = w.log()
    g = torch.Generator().manual_seed(8)
    reps, b = 3000, w.shape[1]
    tot = torch.zeros(2, b, dtype=torch.float64)
    for _ in range(reps):
        idx = resampling.resample(lw, scheme, g)
        assert idx.shape == (2, b) and int(idx.min()) >= 0 and int(idx.max()) < b
        tot += torch.stack([counts(i, b) for i in idx])
    se = (b * w * (1 - w) / reps).sqrt().clamp(min=1e-3)  # multinomial's variance bounds the others'
    assert ((tot / reps - b * w).abs() <= 4.5 * se).all(), tot / reps
    one = resampling.resample(lw[0], scheme, torch.Generator().manual_seed(9))
    assert torch.equal(resampling.resample(lw[:1], scheme, torch.Generator().manual_seed(9))[0], one)
    assert float(resampling.ess(torch.zeros(3, 5))[1]) == pytest.approx(5.0) and resampling.ess(torch.zeros(3, 5)).shape == (3,)
