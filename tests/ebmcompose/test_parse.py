"""ec.parse: expression strings give the same energies as the algebra written in Python."""

import pytest
import torch

import ebmcompose as ec
from ebmcompose.parse import ParseError


def _leaf(name, c):
    return ec.EnergyFunction(lambda x, c=c: ((x - c) ** 2).sum(-1) / 2, name=name)


NAMES = {k: _leaf(k, c) for k, c in [("a", 0.0), ("b", 1.0), ("c", -1.0), ("u", 0.5), ("c1", 2.0)]}
X = torch.randn(7, 2, dtype=torch.float64)


@pytest.mark.parametrize(
    "text, build",
    [
        ("a AND b", lambda n: n["a"] + n["b"]),
        ("a & b", lambda n: n["a"] + n["b"]),
        ("a AND NOT 0.5*b", lambda n: n["a"] - 0.5 * n["b"]),
        ("a and not b", lambda n: n["a"] - n["b"]),
        ("a OR b", lambda n: n["a"] | n["b"]),
        ("a | b | c", lambda n: n["a"] | n["b"] | n["c"]),
        ("u + 7.5*(c1 - u)", lambda n: n["u"] + 7.5 * (n["c1"] - n["u"])),
        ("2*a - b/4", lambda n: 2 * n["a"] - 0.25 * n["b"]),
        ("a*3", lambda n: 3 * n["a"]),
        ("-a + NOT b", lambda n: -n["a"] - n["b"]),
        ("a AND b OR c", lambda n: (n["a"] + n["b"]) | n["c"]),
        ("a AND (b OR c)", lambda n: n["a"] + (n["b"] | n["c"])),
        ("1e-1*a + .5*b", lambda n: 0.1 * n["a"] + 0.5 * n["b"]),
    ],
)
def test_parse_matches_python_algebra(text, build):
    got = ec.parse(text, NAMES)
    want = build(NAMES)
    e1, g1 = got.energy_and_grad(X)
    e2, g2 = want.energy_and_grad(X)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(g1, g2)


def test_precedence_or_is_lowest_and_and_binds_looser_than_plus():
    # "a AND b + c" = a + (b + c); "a OR b AND c" = a | (b + c)
    e = ec.parse("a OR b AND c", NAMES).energy(X)
    want = (NAMES["a"] | (NAMES["b"] + NAMES["c"])).energy(X)
    torch.testing.assert_close(e, want)


@pytest.mark.parametrize(
    "text, message, position",
    [
        ("a AND d", "unknown name 'd'", 6),
        ("a AND", "ends too early", 5),
        ("a + * b", "unexpected '\\*'", 4),
        ("(a + b", "expected '\\)'", 6),
        ("a b", "unexpected 'b'", 2),
        ("a * b", "multiplied or divided by a number", 4),
        ("a / 0", "division by zero", 2),
        ("0.5 b", "'\\*' after a weight", 4),
        ("a $ b", "unexpected character '\\$'", 2),
        ("", "empty expression", 0),
    ],
)
def test_errors_point_at_the_position(text, message, position):
    with pytest.raises(ParseError, match=message) as info:
        ec.parse(text, NAMES)
    assert info.value.position == position
    assert "^" in str(info.value) and text in str(info.value)


def test_unknown_name_lists_known_names_and_bad_mapping():
    with pytest.raises(ParseError, match="known names: a, b, c, c1, u"):
        ec.parse("zz", NAMES)
    with pytest.raises(TypeError, match="must be an ebmcompose.Energy"):
        ec.parse("a", {"a": lambda x: x})
