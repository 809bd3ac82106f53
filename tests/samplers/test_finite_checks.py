"""The cheap all-finite check and the ULA update that relies on it (both of its paths)."""

from __future__ import annotations

import torch

from samplers.base import finite_rows, surely_finite
from samplers.ula import _ula_update


def test_surely_finite_answers_true_only_when_every_element_is_finite():
    x = torch.randn(50, 2)
    assert surely_finite(x) and surely_finite(x, None, x.double())
    for bad in (float("inf"), -float("inf"), float("nan")):
        y = x.clone()
        y[17, 1] = bad
        assert not surely_finite(y) and not surely_finite(x, y)
    big = torch.full((4, 2), 3e38)  # finite, but the sum overflows: "unsure", never a wrong True
    assert not surely_finite(big) and bool(finite_rows(big).all())


def test_ula_update_is_the_same_on_the_fast_and_the_per_row_path():
    g = torch.Generator().manual_seed(0)
    x, grad, x_new = (torch.randn(40, 2, generator=g) for _ in range(3))
    grad_new = torch.randn(40, 2, generator=g)
    xo, go, ok = _ula_update(x, grad, x_new, grad_new)  # all finite: the fast path, no mask made
    assert ok is None and torch.equal(xo, x_new) and torch.equal(go, grad_new)
    grad_new[[3, 11]] = torch.tensor([float("nan"), 1.0])
    xo, go, ok = _ula_update(x, grad, x_new, grad_new)  # per-row path: those chains stay put
    assert ok.tolist() == [i not in (3, 11) for i in range(40)]
    assert torch.equal(xo[3], x[3]) and torch.equal(go[11], grad[11]) and torch.equal(xo[0], x_new[0])

