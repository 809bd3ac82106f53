"""Scene vocabulary: shapes, palette, sizes, the object and scene records, and input checks.

Geometry (all lengths are fractions of the image side, so a scene renders alike at any
resolution): an object's ``(x, y)`` is the centroid of its shape (``x`` = column, ``y`` = row,
top-left origin). Its size names a *radius* ``r`` (:data:`SIZES`), the radius of the circle of the
same area: every shape of one size covers the same area ``π r²`` (a square of half-side
``r √π / 2``, an upward equilateral triangle of circumradius ``r √(4π / 3√3)``), so the size of a
detected object follows from its area whatever its shape.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import torch

from ebmcompose.errors import InputError

__all__ = [
    "ATTRIBUTES",
    "BACKGROUND",
    "COLORS",
    "MAX_OBJECTS",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
]

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")

#: Six saturated colours (read-only mapping, in this order), each at RGB distance >= 0.64 from the background and >= 0.65 from each other.
COLORS: Mapping[str, Tuple[float, float, float]] = MappingProxyType({
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.10),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.10, 0.90),
    "cyan": (0.10, 0.90, 0.90),
})

#: Radius of the equal-area circle, as a fraction of the image side.
SIZES: Mapping[str, float] = MappingProxyType({"small": 0.08, "large": 0.12})

BACKGROUND: Tuple[float, float, float] = (0.5, 0.5, 0.5)

#: Every attribute name: colours, then shapes, then sizes (the order of the one-hot conditions).
ATTRIBUTES: Tuple[str, ...] = tuple(COLORS) + SHAPES + tuple(SIZES)

#: The most objects a scene of the datasets holds (the joint condition has this many slots).
MAX_OBJECTS = 5

#: Half-side of the square and circumradius of the triangle, per unit of equal-area radius.
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2.0
TRIANGLE_CIRCUMRADIUS = math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))


def support(shape: str, size: str, angle: float) -> float:
    """How far the shape reaches from its centroid along the direction at ``angle`` radians
    (``(cos, sin)`` in (x, y), y pointing down), as a fraction of the side: its support function."""
    r = SIZES[size]
    c, s = math.cos(angle), math.sin(angle)
    if shape == "circle":
        return r
    if shape == "square":
        return SQUARE_HALF_SIDE * r * (abs(c) + abs(s))
    big_r = TRIANGLE_CIRCUMRADIUS * r  # apex up: (0, -R), base corners (±R√3/2, R/2)
    return big_r * max(-s, math.sqrt(3.0) / 2.0 * c + 0.5 * s, -math.sqrt(3.0) / 2.0 * c + 0.5 * s)

def _choice(value, valid: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in valid:
        raise InputError(f"unknown {what} {value!r}; valid {what}s are: {', '.join(valid)}")
    return value


def check_unit(value, what: str) -> float:
    """A real number in [0, 1] (a coordinate); a one-element tensor counts as its number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InputError(f"{what} must be a number in [0, 1] (fraction of the image side), got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(
            f"{what} = {value} is outside [0, 1]; positions are fractions of the image side "
            "(x = column from the left, y = row from the top)"
        )
    return value


def check_position(pos, what: str = "position") -> Tuple[float, float]:
    """An ``(x, y)`` pair in [0, 1]², from a sequence or a tensor of two numbers."""
    if isinstance(pos, torch.Tensor):
        pos = pos.detach().cpu().reshape(-1).tolist() if pos.numel() == 2 else pos.tolist()
    if isinstance(pos, (str, bytes)) or not isinstance(pos, Iterable):
        raise InputError(f"{what} must be a pair of numbers (x, y) in [0, 1], got {pos!r}")
    pos = list(pos)
    if len(pos) != 2:
        raise InputError(f"{what} must be a pair of numbers (x, y) in [0, 1], got {len(pos)} values: {pos!r}")
    return check_unit(pos[0], f"{what} x"), check_unit(pos[1], f"{what} y")


def check_positions(positions, what: str = "positions") -> Tuple[Tuple[float, float], ...]:
    """A list of ``(x, y)`` pairs: ``None`` or ``[]`` (none), one pair, a list of pairs or a ``(K, 2)`` tensor."""
    if positions is None:
        return ()
    if isinstance(positions, torch.Tensor):
        if positions.dim() == 1 and positions.numel() == 2:
            positions = positions[None]
        if positions.dim() != 2 or positions.shape[-1] != 2:
            raise InputError(f"{what} must be a (K, 2) tensor of (x, y) pairs, got shape {tuple(positions.shape)}")
        positions = positions.tolist()
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable):
        raise InputError(f"{what} must be a list of (x, y) pairs in [0, 1], got {positions!r}")
    positions = list(positions)
    if len(positions) == 2 and all(isinstance(p, numbers.Real) and not isinstance(p, bool) for p in positions):
        positions = [positions]  # one bare pair
    return tuple(check_position(p, f"{what}[{i}]") for i, p in enumerate(positions))


def check_resolution(resolution) -> int:
    """An integer image side between 32 and 256 pixels."""
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral):
        raise InputError(f"resolution must be an integer number of pixels (32 or 64), got {resolution!r}")
    resolution = int(resolution)
    if not 32 <= resolution <= 256:
        raise InputError(
            f"resolution {resolution} is not supported; use 32 (default) or 64 "
            "(any side from 32 to 256 renders, smaller ones make small shapes unrecognisable)"
        )
    return resolution


def check_n_objects(n_objects) -> Tuple[int, int]:
    """``k`` or an inclusive range ``(lo, hi)`` of objects per scene, within 1..MAX_OBJECTS."""
    if isinstance(n_objects, numbers.Integral) and not isinstance(n_objects, bool):
        n_objects = (int(n_objects), int(n_objects))
    try:
        lo, hi = n_objects
        ok = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (lo, hi))
    except (TypeError, ValueError):
        ok = False
    if not ok or not 1 <= lo <= hi <= MAX_OBJECTS:
        raise InputError(
            f"n_objects must be an integer or an inclusive range (lo, hi) with 1 <= lo <= hi <= {MAX_OBJECTS}, "
            f"got {n_objects!r}"
        )
    return int(lo), int(hi)


def check_choices(values: Optional[Iterable[str]], valid: Sequence[str], what: str) -> Tuple[str, ...]:
    """A non-empty subset of ``valid`` (``None`` means all of them)."""
    if values is None:
        return tuple(valid)
    if isinstance(values, str):
        values = (values,)
    values = tuple(_choice(v, valid, what) for v in values)
    if not values:
        raise InputError(f"the allowed {what}s are empty; give at least one of: {', '.join(valid)} (or None for all)")
    return values


@dataclass(frozen=True)
class SceneObject:
    """One object: centroid ``(x, y)`` in [0, 1]² (x = column, y = row), a shape, a colour and a size.

    Raises :class:`~ebmcompose.errors.InputError` on an unknown shape/colour/size or a position
    outside [0, 1].
    """

    x: float
    y: float
    shape: str
    color: str
    size: str

    def __post_init__(self):
        object.__setattr__(self, "x", check_unit(self.x, "x"))
        object.__setattr__(self, "y", check_unit(self.y, "y"))
        _choice(self.shape, SHAPES, "shape")
        _choice(self.color, tuple(COLORS), "color")
        _choice(self.size, tuple(SIZES), "size")

    @property
    def attributes(self) -> Tuple[str, str, str]:
        """``(color, shape, size)``: the attribute names of the object."""
        return self.color, self.shape, self.size

    @property
    def radius(self) -> float:
        """Equal-area radius (fraction of the image side)."""
        return SIZES[self.size]


@dataclass(frozen=True)
class Scene:
    """An image's objects (a tuple of :class:`SceneObject`, possibly empty); the background is flat."""

    objects: Tuple[SceneObject, ...] = ()

    def __post_init__(self):
        objects = tuple(self.objects) if isinstance(self.objects, Iterable) else None
        if objects is None or not all(isinstance(o, SceneObject) for o in objects):
            raise InputError(f"Scene(objects) takes a sequence of scenes.SceneObject, got {self.objects!r}")
        object.__setattr__(self, "objects", objects)

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def positions(self) -> Tuple[Tuple[float, float], ...]:
        """The ``(x, y)`` of every object, in order."""
        return tuple((o.x, o.y) for o in self.objects)
