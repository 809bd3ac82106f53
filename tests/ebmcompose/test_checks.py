"""ebmcompose.checks (the shared validators) and the InputError raised by Energy.check_input."""

import numpy as np
import pytest
import torch

import ebmcompose as ec
from ebmcompose.checks import as_batch_t, as_scalar_t, check_generator, check_positive_int
from ebmcompose.errors import InputTypeError


# ------------------------------------------------------------------ check_positive_int
def test_check_positive_int_accepts_and_returns_ints():
    assert check_positive_int(3, "n") == 3
    out = check_positive_int(np.int64(5), "n")
    assert out == 5 and type(out) is int
    assert check_positive_int(0, "n_steps", allow_zero=True) == 0


@pytest.mark.parametrize(
    "value, allow_zero, error, match",
    [
        (0, False, ec.InputError, r"^n_steps must be a positive integer, got 0$"),
        (-2, True, ec.InputError, r"^n_steps must be a non-negative integer \(>= 0\), got -2$"),
        (2.5, False, InputTypeError, r"n_steps must be a positive integer, got 2\.5 \(float\)"),
        (True, False, InputTypeError, r"got True \(bool\)"),
        ("3", True, InputTypeError, r"non-negative integer.*'3' \(str\)"),
        (None, False, InputTypeError, r"got None"),
    ],
)
def test_check_positive_int_errors(value, allow_zero, error, match):
    with pytest.raises(error, match=match) as info:
        check_positive_int(value, "n_steps", allow_zero=allow_zero)
    assert isinstance(info.value, ValueError)  # InputError is a ValueError
    if error is InputTypeError:
        assert isinstance(info.value, TypeError)


# ------------------------------------------------------------------ check_generator
def test_check_generator():
    g = torch.Generator().manual_seed(0)
    assert check_generator(None) is None and check_generator(None, torch.zeros(1)) is None
    assert check_generator(g) is g and check_generator(g, torch.zeros(2)) is g and check_generator(g, "cpu") is g
    with pytest.raises(InputTypeError, match=r"generator must be a torch\.Generator.*got int"):
        check_generator(0)
    with pytest.raises(ec.InputError, match=r"the generator is on cpu but x is on meta.*torch\.Generator\(device='meta'\)"):
        check_generator(g, torch.zeros(2, device="meta"))
    with pytest.raises(ec.InputError, match="generator is on cpu but x is on meta"):
        check_generator(g, torch.device("meta"))


# ------------------------------------------------------------------ t
def test_as_batch_t_shapes_device_dtype():
    x = torch.zeros(4, 3, dtype=torch.float64)
    assert as_batch_t(None, x) is None
    for t in (0.25, torch.tensor(0.25), torch.tensor([0.25]), torch.full((4,), 0.25, dtype=torch.float32)):
        tt = as_batch_t(t, x)
        assert tt.shape == (4,) and tt.dtype == torch.float64 and torch.equal(tt, torch.full((4,), 0.25, dtype=torch.float64))
    per = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.equal(as_batch_t(per, x), per.double())
    with pytest.raises(ec.InputError, match=r"t has 2 entries but x has batch size 4"):
        as_batch_t(torch.tensor([0.1, 0.2]), x)


def test_as_scalar_t():
    assert as_scalar_t(0.5) == 0.5 and as_scalar_t(torch.tensor([1.0])) == 1.0 and as_scalar_t(0) == 0.0
    with pytest.raises(ec.InputError, match=r"gm\.at\(t\) needs a scalar t, got a tensor of shape \(2,\)"):
        as_scalar_t(torch.tensor([0.1, 0.2]), "gm.at(t)")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ec.InputError, match=r"t must be in \[0, 1\]"):
            as_scalar_t(bad)
    with pytest.raises(InputTypeError, match="number in"):
        as_scalar_t("0.5")


# ------------------------------------------------------------------ Energy.check_input
def _td():
    return ec.EnergyFunction(lambda x, t: (x**2).sum(-1) * t, name="td", event_shape=(2,))


def test_check_input_returns_batch_t():
    e = _td()
    x = torch.zeros(3, 2)
    assert torch.equal(e.check_input(x, 0.5), torch.full((3,), 0.5))
    assert ec.EnergyFunction(lambda x: x.sum(-1)).check_input(x) is None


@pytest.mark.parametrize(
    "x, t, match",
    [
        (torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), 0.5, r"NaN or inf in 1 of 2 samples \(first at index 0\)"),
        (torch.zeros(2, 3), 0.5, r"td expects points of shape \(B, 2\), got x of shape \(2, 3\)"),
        (torch.tensor(1.0), 0.5, "batch dimension"),
        (torch.zeros(2, 2), None, r"depends on diffusion time \(td\)"),
        (torch.zeros(2, 2), 1.5, r"t must be finite and in \[0, 1\]"),
        (torch.zeros(2, 2), float("nan"), r"t must be finite and in \[0, 1\]"),
        (torch.zeros(2, 2), torch.tensor([0.1, 0.2, 0.3]), r"t has 3 entries but x has batch size 2"),
    ],
)
def test_check_input_raises_input_error(x, t, match):
    e = _td()
    with pytest.raises(ec.InputError, match=match):
        e.check_input(x, t)
    with pytest.raises(ec.InputError, match=match):  # and through the public evaluation
        e.evaluate(x, t)


def test_check_input_wrong_types_are_input_type_errors():
    e = _td()
    with pytest.raises(InputTypeError, match="torch.Tensor"):
        e.check_input([[0.0, 0.0]], 0.5)
    with pytest.raises(InputTypeError, match="floating-point"):
        e.check_input(torch.zeros(2, 2, dtype=torch.long), 0.5)
    with pytest.raises(InputTypeError, match=r"t must be a number or a tensor"):
        e.check_input(torch.zeros(2, 2), "0.5")


def test_validate_false_only_broadcasts_t():
    e = _td()
    x = torch.ones(3, 2)
    ev = e.evaluate(x, 0.5, validate=False)
    torch.testing.assert_close(ev.energy, torch.full((3,), 1.0))
    with pytest.raises(ec.InputError, match="t has 2 entries"):
        e.evaluate(x, torch.tensor([0.1, 0.2]), validate=False)
