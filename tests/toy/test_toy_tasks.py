"""The three 2-D tasks of Du et al. 2023: algebra, exact targets, diffused compositions."""

import dataclasses
import math

import pytest
import torch

import ebmcompose as ec
from ebmcompose.grid import grid_density
import toy

F64 = torch.float64
SCHEDULE = ec.VPSchedule.cosine()


@pytest.fixture(scope="module")
def tasks64():
    return {name: toy.tasks.get(name, dtype=F64) for name in toy.tasks.names()}


def points(n=64, seed=0, scale=3.0):
    return scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_names_get_and_unknown_name():
    assert toy.tasks.names() == ("product", "mixture", "negation")
    for name in toy.tasks.names():
        task = toy.tasks.get(name)
        assert isinstance(task, toy.Task) and task.name == name
        assert task.composed.event_shape is None or task.composed.event_shape == (2,)
    with pytest.raises(ValueError, match="unknown task 'sum'.*product, mixture, negation"):
        toy.tasks.get("sum")


def test_tasks_are_immutable_and_independent():
    a, b = toy.tasks.product(), toy.tasks.product()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "other"
    with pytest.raises(TypeError):
        a.components["ring"] = a.components["bar"]
    assert a.components["ring"] is not b.components["ring"]


def test_product_composed_is_ring_plus_bar_and_exact_is_normalised_product(tasks64):
    task = tasks64["product"]
    ring, bar = task.components["ring"], task.components["bar"]
    assert ring.n_components == 8 and bar.n_components == 11 and task.exact.n_components == 88
    torch.testing.assert_close(ring.means.norm(dim=-1), torch.full((8,), 4.0, dtype=F64))
    x = points()
    torch.testing.assert_close(task.composed.energy(x), ring.energy(x) + bar.energy(x))
    diff = task.exact.energy(x) - task.composed.energy(x)  # − log Z, a constant
    assert float(diff.max() - diff.min()) < 1e-9
    # the product keeps the two ring modes on the bar, (0, ±4), with equal weight
    xs = task.sample_exact(20_000, generator=torch.Generator().manual_seed(0))
    top = (xs[:, 1] > 0).double().mean()
    assert abs(float(top) - 0.5) < 5 * math.sqrt(0.25 / 20_000)
    assert float((xs[:, 0].abs() < 1.5).double().mean()) > 0.999


def test_mixture_composed_is_twice_the_exact_mixture_density(tasks64):
    task = tasks64["mixture"]
    left, right = task.components["left"], task.components["right"]
    x = points()
    # a | b = −log(p_a + p_b) = −log(2 p_exact)
    torch.testing.assert_close(task.composed.energy(x), task.exact.energy(x) - math.log(2.0))
    torch.testing.assert_close(task.composed.grad(x), task.exact.grad(x))
    torch.testing.assert_close(task.exact.weights.sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(left.mean(), torch.tensor([-2.0, 0.0], dtype=F64))
    torch.testing.assert_close(right.mean(), torch.tensor([2.0, 0.0], dtype=F64))


def test_negation_composed_is_box_minus_half_small(tasks64):
    task = tasks64["negation"]
    box, small = task.components["box"], task.components["small"]
    assert task.exact is None and toy.tasks.NEGATION_BETA == 0.5
    x = points()
    torch.testing.assert_close(task.composed.energy(x), box.energy(x) - 0.5 * small.energy(x))
    e = lambda p: float(task.composed.energy(torch.tensor([p], dtype=F64)))  # noqa: E731
    # the hole: less density at the centre than at (3, 0), and less there than at (3, 3)
    assert e([0.0, 0.0]) > e([3.0, 0.0]) > e([3.0, 3.0])


@pytest.mark.parametrize("name", ["product", "mixture", "negation"])
def test_bounds_hold_the_target_mass(tasks64, name):
    task = tasks64[name]
    # same cell size (0.094, a third of the narrowest std): the midpoint rule is ~exact here
    inner = grid_density(task.composed, task.bounds, resolution=128)
    outer = grid_density(task.composed, (-12.0, 12.0), resolution=256)
    assert float(outer.log_z - inner.log_z) < 1e-6


@pytest.mark.parametrize("name", ["product", "mixture", "negation"])
def test_diffused_components_are_exact_and_equal_static_at_t0(tasks64, name):
    task = tasks64[name]
    comps = task.diffused_components(SCHEDULE)
    assert set(comps) == set(task.components)
    x = points(16)
    for key, dc in comps.items():
        assert dc.time_dependent
        torch.testing.assert_close(dc.energy(x, 0.0), task.components[key].energy(x), rtol=1e-12, atol=1e-12)
    cd = task.composed_diffused(SCHEDULE)
    assert cd.time_dependent
    torch.testing.assert_close(cd.energy(x, 0.0), task.composed.energy(x), rtol=1e-12, atol=1e-12)
    if task.exact is not None:
        torch.testing.assert_close(task.exact_diffused(SCHEDULE).energy(x, 0.0), task.exact.energy(x), rtol=1e-12, atol=1e-12)
    else:
        assert task.exact_diffused(SCHEDULE) is None


def test_mixture_of_diffused_is_the_diffused_mixture(tasks64):
    task = tasks64["mixture"]
    x = points(32)
    t = torch.rand(32, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(
        task.composed_diffused(SCHEDULE).energy(x, t), task.exact_diffused(SCHEDULE).energy(x, t) - math.log(2.0)
    )


def test_product_of_diffused_is_not_the_diffused_product(tasks64):
    """Du et al. 2023: summing noised energies is not the noised product (at 0 < t < 1)."""
    task = tasks64["product"]
    x = points(32)
    naive = task.composed_diffused(SCHEDULE)
    exact = task.exact_diffused(SCHEDULE)
    gap = (naive.score(x, 0.5) - exact.score(x, 0.5)).norm(dim=-1)
    assert float(gap.max()) > 0.1
    gap0 = (naive.score(x, 0.0) - exact.score(x, 0.0)).norm(dim=-1)
    assert float(gap0.max()) < 1e-8


def test_negation_sample_exact_matches_grid_moments(tasks64):
    task = tasks64["negation"]
    n = 50_000
    xs = task.sample_exact(n, generator=torch.Generator().manual_seed(2), resolution=256)
    assert xs.shape == (n, 2) and xs.dtype == F64
    # independent quadrature: a midpoint rule on a different (finer) grid
    dens = grid_density(task.composed, task.bounds, resolution=600)
    c = dens.centers
    p = dens.probs.reshape(-1)
    mean = (p[:, None] * c).sum(0)
    second = (p[:, None] * c**2).sum(0)
    se = torch.sqrt((second - mean**2) / n)
    assert bool(((xs.mean(0) - mean).abs() < 5 * se).all()), (xs.mean(0), mean)
    sq = xs**2
    assert bool(((sq.mean(0) - second).abs() < 5 * sq.std(0) / math.sqrt(n) + 2e-3).all()), (sq.mean(0), second)
    again = task.sample_exact(100, generator=torch.Generator().manual_seed(3), resolution=64)
    assert torch.equal(again, task.sample_exact(100, generator=torch.Generator().manual_seed(3), resolution=64))


def test_default_dtype_tasks_work_in_float32():
    task = toy.tasks.product()
    assert task.exact.dtype == torch.float32
    x = torch.zeros(4, 2)
    e, g = task.composed_diffused(SCHEDULE).energy_and_grad(x, 0.3)
    assert e.dtype == torch.float32 and bool(torch.isfinite(e).all() and torch.isfinite(g).all())
    assert task.sample_exact(10, generator=torch.Generator()).dtype == torch.float32
    neg = toy.tasks.negation()
    assert neg.sample_exact(10, generator=torch.Generator(), resolution=32).dtype == torch.float32
