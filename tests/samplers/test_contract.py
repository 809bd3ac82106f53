"""The one sampler contract: callbacks, typed infos, NaN-free summaries, compile fallback, and a
predictor–corrector whose corrector has no step size (adapted, checked against an exact target)."""

import dataclasses
import math
import warnings

import pytest
import torch

import ebmcompose as ec
import toy
from samplers import (
    HMC, MALA, ULA, AnnealedLangevin, HMCInfo, HMCState, LadderState, LevelInfo, MALAInfo, PredictorCorrector,
    ReverseDiffusion, StepInfo, ULAInfo,
)
from samplers.run import run_steps

from _kernel_targets import gaussian
from test_predictor_corrector import product_task, spread

SCHEDULE = ec.VPSchedule.cosine()


def _collect():
    seen = []

    def callback(i, state, info):  # the one signature, for kernels and ladder samplers alike
        seen.append((i, state, info))

    return seen, callback


def test_one_callback_signature_for_a_kernel_and_a_ladder_sampler():
    energy = toy.GaussianMixture(torch.zeros(1, 2), stds=torch.ones(1)).diffused(SCHEDULE)
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))

    seen, callback = _collect()
    res = ULA(step_size=0.1, n_steps=5).sample(energy, x0, t=0.3, generator=torch.Generator(), callback=callback)
    assert [i for i, _, _ in seen] == list(range(5))
    for _, state, info in seen:
        assert isinstance(info, ULAInfo) and state.x.shape == (8, 2) and float(state.t[0]) == pytest.approx(0.3)
    assert 1 + sum(info.nfe for _, _, info in seen) == res.info["nfe"]
    torch.testing.assert_close(seen[-1][1].x, res.samples)

    seen, callback = _collect()
    pc = PredictorCorrector(SCHEDULE, 6, corrector=ULA(step_size=0.1), n_corrector_steps=2)
    res = pc.sample(energy, x0, generator=torch.Generator(), callback=callback)
    ts = res.info["ts"].tolist()
    assert [i for i, _, _ in seen] == list(range(6))
    for i, state, info in seen:
        assert isinstance(state, LadderState) and isinstance(info, LevelInfo)
        assert state.x.shape == (8, 2) and state.t == info.t == pytest.approx(ts[i + 1])
    assert 1 + sum(info.nfe for _, _, info in seen) == res.info["nfe"]
    assert [info.n_transitions for _, _, info in seen] == [2] * 5 + [0]  # t = 0 not corrected
    torch.testing.assert_close(seen[-1][1].x, res.samples)


@pytest.mark.parametrize(
    "kernel, info_type, extra",
    [(ULA(step_size=0.1), ULAInfo, {"proxy_acceptance"}), (MALA(step_size=0.1), MALAInfo, {"energy_error"}),
     (HMC(step_size=0.1, n_leapfrog=2), HMCInfo, {"energy_error"})],
    ids=["ula", "mala", "hmc"],
)
def test_typed_infos(kernel, info_type, extra):
    energy, draw = gaussian([0.0, 0.0], torch.eye(2))
    state = kernel.init(energy, draw(16, torch.Generator().manual_seed(0)))
    state, info = kernel.step(state, energy, torch.Generator().manual_seed(1))
    assert type(info) is info_type and isinstance(info, StepInfo)
    assert {f.name for f in dataclasses.fields(info)} == {"acceptance", "accepted", "divergent", "nfe"} | extra
    assert info.acceptance.shape == info.accepted.shape == info.divergent.shape == (16,)
    assert info.accepted.dtype == info.divergent.dtype == torch.bool
    assert ((info.acceptance >= 0) & (info.acceptance <= 1)).all()
    assert info.nfe == getattr(kernel, "n_leapfrog", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.nfe = 0
    with pytest.raises(ValueError, match="step size"):
        kernel.with_step_size(None).step(state, energy, torch.Generator())


def test_hmc_state_goes_through_the_same_contract():
    """HMC's momentum-carrying state passes run_steps and a ladder level change (no registry)."""
    energy, draw = gaussian([0.0, 0.0], torch.eye(2))
    kernel = HMC(step_size=0.3, n_leapfrog=2, refresh=0.5)
    state = run_steps(kernel, energy, kernel.init(energy, draw(32, torch.Generator())), 3, torch.Generator())
    assert isinstance(state, HMCState) and state.momentum.shape == (32, 2)
    diffused = toy.GaussianMixture(torch.zeros(1, 2), stds=torch.ones(1)).diffused(SCHEDULE)
    al = AnnealedLangevin(SCHEDULE, n_levels=3, n_steps_per_level=2, step_size=0.05, kernel=kernel)
    res = al.sample(diffused, shape=(32, 2), generator=torch.Generator())
    assert isinstance(res.state, HMCState) and res.state.momentum is not None


def _no_nan(info):
    for key, value in info.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert not torch.isnan(value).any(), key


def test_summaries_are_nan_free_and_read_like_dicts():
    energy, draw = gaussian([0.0, 0.0], torch.eye(2))
    x0 = draw(16, torch.Generator().manual_seed(0))
    for kernel in (ULA(step_size=0.1, n_steps=4), MALA(n_steps=4, n_warmup=10), HMC(step_size=0.2, n_leapfrog=2, n_steps=4)):
        info = kernel.sample(energy, x0, generator=torch.Generator(), trace_every=2).info
        _no_nan(info)
        assert info["acceptance"].shape == (4,) and info.acceptance is info["acceptance"]
        assert "log_weights" not in info and info.get("log_weights") is None
        assert set(dict(info)) == set(info.keys()) and info["trace"].shape == (2, 16, 2)
    diffused = toy.GaussianMixture(torch.zeros(1, 2), stds=torch.ones(1)).diffused(SCHEDULE)
    pc = PredictorCorrector(SCHEDULE, 10, corrector=MALA(step_size=0.1, n_steps=2), window=(0.25, 0.65))
    samplers_ = [pc, ReverseDiffusion(SCHEDULE, 5), AnnealedLangevin(SCHEDULE, 3, 2, 0.01, kernel=MALA())]
    for sampler in samplers_:
        info = sampler.sample(diffused, shape=(16, 2), generator=torch.Generator()).info
        _no_nan(info)
        if "corrected" in info:
            m = int(info["corrected"].sum())
            assert info["acceptance"].shape == info["step_size"].shape == (m,) and m > 0
    assert "log_weights" in info  # annealed Langevin with a Metropolis kernel: AIS weights
    with pytest.raises(KeyError):
        pc.sample(diffused, shape=(4, 2), generator=torch.Generator()).info["log_weights"]


def test_compile_fallback_warns_once_naming_the_reason():
    """An energy with data-dependent Python (a value read back with ``float``) cannot be traced into
    one graph: one warning that names torch's reason, then eager transitions (the same chains as
    the eager kernel)."""

    def branchy(x):
        scale = 1.0 if float(x.abs().max()) < 1e6 else 2.0  # reads a value: a graph break
        return 0.5 * scale * x.square().sum(1)

    energy = ec.EnergyFunction(branchy, name="branchy_gaussian")
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = MALA(step_size=0.3, n_steps=6).compiled().sample(energy, x0, generator=torch.Generator().manual_seed(1))
    mine = [str(w.message) for w in seen if "torch.compile" in str(w.message)]
    assert len(mine) == 1, mine
    assert "mala_body" in mine[0] and "eagerly" in mine[0]
    assert "(UserError: " in mine[0] or "(Unsupported: " in mine[0]  # torch's reason, by its exception type
    b = MALA(step_size=0.3, n_steps=6).sample(energy, x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.samples, b.samples)


# ------------------------------------------------------------------ PC without a corrector step size
def test_pc_corrector_without_step_size_adapts_by_default():
    pc = PredictorCorrector(SCHEDULE, 5, corrector=MALA(n_steps=2))  # used to raise "step_size is required"
    assert pc.step_rule == "adapt" and pc.n_corrector_steps == 2
    assert PredictorCorrector(SCHEDULE, 5, corrector=MALA(step_size=0.1, n_steps=2)).step_rule == "sigma2"
    assert PredictorCorrector(SCHEDULE, 5, corrector=MALA(), corrector_steps=3).n_corrector_steps == 3  # old spelling


def test_pc_mala_without_step_size_samples_the_exact_product():
    """PC + MALA(step_size=None) on the product of two diffused mixtures (exact at t = 0, so the
    last level is corrected too): mean and spread of the exact 4-mode product within MC error."""
    composed, product = product_task()
    n = 3000
    pc = PredictorCorrector(SCHEDULE, 25, corrector=MALA(), n_corrector_steps=4, final_correction=True)
    res = pc.sample(composed, shape=(n, 2), generator=torch.Generator().manual_seed(0))
    x = res.samples.double()
    center = product.mean().double()
    target = float(product.covariance().diagonal().mean())
    m, se = spread(x, center)
    assert abs(m - target) < 4 * se, (m, target, se)
    cov = product.covariance().double()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - center).abs() < 4 * se_mean).all()
    acc = res.info["acceptance"]
    assert ((acc - 0.57).abs() < 0.2).all(), acc  # adapted per level, towards MALA's target


def test_pc_adapted_step_size_does_not_collapse_with_dimension():
    """A 192-dimensional isotropic Gaussian (think 3×8×8 images): the corrector's step size is
    searched from a dimension-aware guess and adapted per level, so acceptance stays near the
    target at every level and the final variance matches the exact one."""
    d, s, n = 192, 0.5, 400
    target = toy.GaussianMixture(torch.zeros(1, d), stds=torch.tensor([s])).diffused(SCHEDULE)
    pc = PredictorCorrector(SCHEDULE, 40, corrector=MALA(), n_corrector_steps=10, final_correction=True)
    res = pc.sample(target, shape=(n, d), generator=torch.Generator().manual_seed(0))
    acc = res.info["acceptance"]
    assert ((acc - 0.57).abs() < 0.2).all(), acc
    v = res.samples.double().square().mean(1)  # per-chain mean of x² (exact mean s²)
    se = float(v.std()) / math.sqrt(n)
    assert abs(float(v.mean()) - s * s) < 4 * se + 1e-12, (float(v.mean()), s * s, se)
