"""HMC: leapfrog physics (O(h²) energy error, exact reversibility), exact moments, mass, partial refresh."""

import math

import pytest
import torch

import ebmcompose as ec
from samplers import HMC
from samplers.hmc import HMCInfo, HMCState, kinetic_energy, leapfrog

from _kernel_targets import assert_moments, gaussian, isotropic, single_thread, wall_energy, z_scores  # noqa: F401

COV = [[1.0, 1.2], [1.2, 4.0]]


def _hamiltonian(energy, x, p, inv_mass=1.0):
    return energy.energy(x) + kinetic_energy(p, inv_mass)


def test_leapfrog_energy_error_is_second_order():
    """Fixed trajectory length: halving h quarters the energy error."""
    g = torch.Generator().manual_seed(0)
    energy, draw = gaussian([0.0, 0.0], COV, dtype=torch.float64)
    x = draw(500, g, torch.float64)
    p = torch.randn(x.shape, generator=g, dtype=torch.float64)
    grad = energy.grad(x)
    h0 = _hamiltonian(energy, x, p)
    errors = []
    for h, n in [(0.2, 10), (0.1, 20), (0.05, 40)]:
        xe, pe, e, _, nfe = leapfrog(energy, x, p, grad, None, h, n)
        assert nfe == n
        errors.append(float((e + kinetic_energy(pe) - h0).abs().mean()))
    for big, small in zip(errors, errors[1:]):
        assert 3.5 < big / small < 4.5, errors


def test_leapfrog_exactly_reversible():
    g = torch.Generator().manual_seed(1)
    energy, draw = gaussian([0.5, -1.0], COV, dtype=torch.float64)
    x = draw(100, g, torch.float64)
    p = torch.randn(x.shape, generator=g, dtype=torch.float64)
    inv_mass = torch.tensor([2.0, 0.5], dtype=torch.float64)
    x1, p1, _, g1, _ = leapfrog(energy, x, p, energy.grad(x), None, 0.3, 17, inv_mass)
    x2, p2, _, _, _ = leapfrog(energy, x1, -p1, g1, None, 0.3, 17, inv_mass)
    torch.testing.assert_close(x2, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(-p2, p, rtol=0, atol=1e-12)


def test_leapfrog_does_not_mutate_inputs():
    energy, draw = gaussian([0.0, 0.0], COV)
    x = draw(10, torch.Generator().manual_seed(2))
    p = torch.ones_like(x)
    xc, pc = x.clone(), p.clone()
    leapfrog(energy, x, p, energy.grad(x), None, 0.1, 3)
    assert torch.equal(x, xc) and torch.equal(p, pc)


def test_standard_gaussian_moments(generator):
    energy, draw = gaussian([0.0, 0.0, 0.0], torch.eye(3))
    res = HMC(step_size=0.3, n_leapfrog=5, n_steps=60).sample(energy, draw(300, generator), generator=generator, trace_every=1)
    assert_moments(res.info["trace"], [0.0] * 3, torch.eye(3))
    assert res.info["nfe"] == 1 + 5 * 60


def test_correlated_gaussian_adapted(generator):
    energy, draw = gaussian([1.0, -2.0], COV)
    res = HMC(n_leapfrog=5, n_steps=100).sample(energy, draw(300, generator), generator=generator, trace_every=1)
    assert_moments(res.info["trace"], [1.0, -2.0], COV)
    assert abs(float(res.info["warmup_acceptance"]) - 0.65) < 0.1


def test_diagonal_mass(generator):
    """Scales 0.1 and 10: with M = Σ⁻¹ the dynamics are isotropic, a large step is accepted."""
    cov = torch.diag(torch.tensor([0.01, 100.0]))
    energy, draw = gaussian([0.0, 0.0], cov)
    kernel = HMC(step_size=0.5, n_leapfrog=3, n_steps=60, mass=torch.tensor([100.0, 0.01]))
    res = kernel.sample(energy, draw(300, generator), generator=generator, trace_every=1)
    assert float(res.info["acceptance"].mean()) > 0.9
    assert_moments(res.info["trace"], [0.0, 0.0], cov)
    # same step with unit mass diverges on the narrow direction
    res1 = HMC(step_size=0.5, n_leapfrog=3, n_steps=5).sample(energy, draw(300, generator), generator=generator)
    assert float(res1.info["acceptance"].mean()) < 0.05


def test_partial_refresh_invariance_and_negation(generator):
    energy, draw = gaussian([1.0, -2.0], COV)
    kernel = HMC(step_size=0.4, n_leapfrog=2, n_steps=150, refresh=0.5)
    res = kernel.sample(energy, draw(300, generator), generator=generator, trace_every=1)
    assert_moments(res.info["trace"], [1.0, -2.0], COV)
    assert isinstance(res.state, HMCState) and res.state.momentum is not None


def test_rejection_negates_momentum_per_chain(generator):
    energy, draw = gaussian([0.0, 0.0], COV)
    kernel = HMC(step_size=1.4, n_leapfrog=3, refresh=0.3)
    state = kernel.init(energy, draw(200, generator))
    state, _ = kernel.step(state, energy, generator)
    p_prev = state.momentum
    g_state = generator.get_state()
    new, info = kernel.step(state, energy, generator)
    noise = torch.randn(state.x.shape, generator=torch.Generator().set_state(g_state))
    p0 = (1 - 0.3**2) ** 0.5 * p_prev + 0.3 * noise
    assert info.accepted.any() and (~info.accepted).any()
    rej = ~info.accepted
    torch.testing.assert_close(new.momentum[rej], -p0[rej])
    torch.testing.assert_close(new.x[rej], state.x[rej])
    assert not torch.equal(new.x[~rej], state.x[~rej])
    assert info.nfe == 3 and isinstance(info, HMCInfo) and info.energy_error.shape == (200,)


def test_nonfinite_trajectories_rejected_and_counted(generator):
    x0 = torch.cat([torch.full((100, 2), -50.0), torch.full((100, 2), 0.99)])
    res = HMC(step_size=0.2, n_leapfrog=3, n_steps=1).sample(wall_energy(), x0, generator=generator)
    assert torch.isfinite(res.samples).all() and (res.samples[:, 0] < 1).all()
    assert 20 < res.info["divergences"] < 80
    assert (res.info["acceptance_per_chain"][:100] > 1 - 1e-5).all()


def test_images_shape_with_event_mass(generator):
    x0 = torch.randn(200, 1, 4, 4, generator=generator)
    mass = torch.ones(1, 4, 4)
    res = HMC(step_size=0.3, n_leapfrog=4, n_steps=30, mass=mass).sample(isotropic(1.0), x0, generator=generator, trace_every=1)
    assert res.samples.shape == (200, 1, 4, 4)
    z, est, _ = z_scores(res.info["trace"].square(), torch.ones(1, 4, 4))
    assert (z < 5.0).all(), est


def test_same_seed_identical(generator):
    energy, draw = gaussian([0.0, 0.0], COV)
    x0 = draw(32, generator)
    a = HMC(n_steps=10, refresh=0.7).sample(energy, x0, generator=torch.Generator().manual_seed(5))
    b = HMC(n_steps=10, refresh=0.7).sample(energy, x0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.samples, b.samples)


def test_score_only_raises(generator):
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        HMC(step_size=0.1).sample(ec.ScoreFunction(lambda x: -x), torch.zeros(3, 2), generator=generator)


def test_config_validation():
    with pytest.raises(ValueError):
        HMC(n_leapfrog=0)
    with pytest.raises(ValueError):
        HMC(refresh=0.0)
    with pytest.raises(ValueError):
        HMC(mass=-1.0)


def test_ring_radial_spread_and_mode_weights(generator):
    """Chains from the exact 8-Gaussian ring: an invariance test (modes ~10 std apart never mix)."""
    toy = pytest.importorskip("toy")
    gm = toy.ring(n=8, radius=4.0, std=0.3)
    x0 = gm.sample(1000, generator=generator)
    res = HMC(step_size=0.15, n_leapfrog=5, n_steps=40).sample(gm, x0, generator=generator, trace_every=2)
    trace = res.info["trace"]
    d2 = ((trace[..., None, :] - gm.means.to(trace.dtype)) ** 2).sum(-1)
    z, est, _ = z_scores(d2.min(-1).values, 2 * 0.3**2)
    assert float(z) < 4.5, est
    counts = torch.bincount(d2[-1].argmin(-1), minlength=8).double()
    assert float(((counts - 125.0) ** 2 / 125.0).sum()) < 29.9


def test_banana_vs_grid_quadrature(generator):
    """A non-Gaussian target: moments against grid quadrature, chains from toy.reference_sample."""
    toy = pytest.importorskip("toy")
    from ebmcompose.grid import grid_density

    energy = _banana()
    bounds = ((-9.0, 9.0), (-4.0, 20.0))
    grid = grid_density(energy, bounds, resolution=400)
    c, p = grid.centers, grid.probs.reshape(-1)
    ref_mean = (p[:, None] * c).sum(0)
    ref_sq = (p[:, None] * c**2).sum(0)
    x0 = toy.reference_sample(energy, 600, bounds, resolution=400, generator=generator).float()
    res = HMC(step_size=0.25, n_leapfrog=5, n_steps=80).sample(energy, x0, generator=generator, trace_every=1)
    trace = res.info["trace"]
    z, est, _ = z_scores(trace, ref_mean)
    assert (z < 4.5).all(), (est, ref_mean)
    z, est, _ = z_scores(trace.square(), ref_sq)
    assert (z < 4.5).all(), (est, ref_sq)


def _banana():
    def fn(x):
        return 0.5 * (x[:, 0] / 2.0) ** 2 + 0.5 * ((x[:, 1] - 0.25 * x[:, 0] ** 2 + 1.0) / 0.7) ** 2

    return ec.EnergyFunction(fn, name="banana")


@pytest.mark.slow
def test_compiled_hmc_same_distribution(generator):
    import warnings

    import toy

    _, draw = gaussian([1.0, -2.0], COV)
    energy = toy.GaussianMixture(torch.tensor([[1.0, -2.0]]), covs=torch.tensor([COV]))  # closed form: traced
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        res = HMC(step_size=0.4, n_leapfrog=4, n_steps=200, refresh=0.6).compiled().sample(
            energy, draw(1000, generator), generator=generator, trace_every=1
        )
    assert_moments(res.info["trace"], [1.0, -2.0], COV)


@pytest.mark.slow
@pytest.mark.parametrize("refresh", [1.0, 0.3])
def test_long_correlated_gaussian(refresh):
    g = torch.Generator().manual_seed(11)
    energy, draw = gaussian([1.0, -2.0], COV)
    res = HMC(n_leapfrog=8, n_steps=1500, refresh=refresh).sample(energy, draw(1000, g), generator=g, trace_every=3)
    assert_moments(res.info["trace"], [1.0, -2.0], COV, z_max=4.0)


@pytest.mark.parametrize("mass", [1.0, 2.5, torch.tensor([0.5, 3.0])])
def test_hamiltonian_change_equals_the_kinetic_energy_formula(mass):
    """info.energy_error (ΔH, one reduction) equals E(x') + K(p') - E(x) - K(p0) along the trajectory,
    for scalar and diagonal mass."""
    from samplers.hmc import hmc_transition

    energy, draw = gaussian([0.0, 0.0], COV)
    g = torch.Generator().manual_seed(4)
    x = draw(50, g).double()
    ev = energy.evaluate(x)
    p0 = torch.randn(50, 2, generator=g, dtype=torch.float64)
    inv_mass, _ = HMC(mass=mass)._mass(x)
    u = torch.full((50,), 0.5, dtype=torch.float64)
    x1, p1, e1, _, _ = leapfrog(energy, x, p0, ev.grad, None, 0.3, 3, inv_mass)
    out = hmc_transition(energy, x, ev.energy, ev.grad, None, p0, u, 0.3, 3, inv_mass, True)
    expect = e1 + kinetic_energy(p1, inv_mass) - ev.energy - kinetic_energy(p0, inv_mass)
    torch.testing.assert_close(out[7], expect)


def test_full_refresh_carries_no_momentum(generator):
    energy, draw = gaussian([0.0, 0.0], COV)
    state = HMC(step_size=0.3, n_leapfrog=2).init(energy, draw(20, generator))
    new, _ = HMC(step_size=0.3, n_leapfrog=2).step(state, energy, generator)
    assert new.momentum is None  # the next step draws a fresh one: nothing to select or negate


# ------------------------------------------------------------------ step-size jitter
@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.2"])
def test_jitter_must_be_in_unit_interval(bad):
    with pytest.raises(ec.InputError, match="jitter must be in"):
        HMC(step_size=0.1, jitter=bad)


def test_jitter_breaks_the_fixed_trajectory_resonance():
    """Leapfrog on N(0, 1) with ``h = 2 sin(π/L)`` turns by exactly one period in ``L`` steps: with a
    fixed step every trajectory ends where it started (the chain never moves); with the default
    jitter the chains mix and their variance is 1 within Monte-Carlo error."""
    n_leapfrog = 10
    h = 2.0 * math.sin(math.pi / n_leapfrog)
    energy = ec.EnergyFunction(lambda x: 0.5 * x.square().sum(1))
    x0 = torch.randn(400, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stuck = HMC(step_size=h, n_leapfrog=n_leapfrog, n_steps=20, jitter=0.0).sample(energy, x0, generator=torch.Generator().manual_seed(1))
    assert float((stuck.samples - x0).abs().max()) < 1e-9
    res = HMC(step_size=h, n_leapfrog=n_leapfrog, n_steps=200).sample(energy, x0, generator=torch.Generator().manual_seed(1), trace_every=1)
    trace = res.info.trace[50:]  # (150, 400, 1)
    moved = (trace[-1] - x0).abs().squeeze(1)
    assert float(moved.median()) > 0.3
    var = trace.square().mean(dim=(0, 2))  # per chain, then pooled: chains are independent
    se = float(var.std() / math.sqrt(var.numel()))
    assert abs(float(var.mean()) - 1.0) < 4 * se + 0.02


def test_jittered_steps_are_per_chain_and_seeded():
    """Two chains at one point with one momentum (a refresh of 1e-9 keeps it) end apart only because
    each draws its own step; without jitter they stay together. Same seed, same chains."""
    energy = ec.EnergyFunction(lambda x: 0.5 * x.square().sum(1))
    x = torch.ones(2, 3, dtype=torch.float64)
    p = torch.tensor([[0.5, -1.0, 0.3]], dtype=torch.float64).expand(2, 3)

    def end(jitter, seed):
        k = HMC(step_size=0.3, n_leapfrog=4, refresh=1e-9, jitter=jitter)
        state = k.init(energy, x).replace(momentum=p)
        return k.step(state, energy, torch.Generator().manual_seed(seed))[0].x

    a = end(0.2, 7)
    assert float((a[0] - a[1]).abs().max()) > 1e-3
    torch.testing.assert_close(a, end(0.2, 7), rtol=0, atol=0)
    b = end(0.0, 7)
    assert float((b[0] - b[1]).abs().max()) < 1e-6
