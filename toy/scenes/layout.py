"""Random scenes: attributes drawn uniformly, positions by vectorised rejection sampling.

Objects are placed largest first. For each object every unfinished scene draws ``tries``
candidate centroids at once (uniform over the positions that keep the shape inside the image) and
keeps the first that clears every placed object by ``gap`` along one of 12 directions (the
separating-axis test with the support functions of the shapes); a scene with no valid candidate
restarts its positions, up to ``restarts`` times.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, List, Optional, Tuple, Union

import torch

from ebmcompose.errors import InputError

from .scene import (
    COLORS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    check_choices,
    check_n_objects,
    support,
)

__all__ = ["random_scenes"]


def _check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise InputError(f"n must be a non-negative integer number of scenes, got {n!r}")
    return int(n)


def _pick(values: Tuple[str, ...], valid: Tuple[str, ...], shape, g) -> torch.Tensor:
    """Indices into ``valid`` of values drawn uniformly from ``values``."""
    idx = torch.tensor([valid.index(v) for v in values])
    return idx[torch.randint(len(values), shape, generator=g)]


_ANGLES = [math.pi * d / 6 for d in range(12)]  # every 30°: all edge normals of the square and the triangle
_DIRS = torch.tensor([[math.cos(a), math.sin(a)] for a in _ANGLES], dtype=torch.float64)  # (D, 2)
_OPPOSITE = [(d + len(_ANGLES) // 2) % len(_ANGLES) for d in range(len(_ANGLES))]
_BLOCK = 1024  # scenes placed at a time (bounds memory)


def _place(combo, active, reach, gap: float, tries: int, restarts: int, g):
    """Centroids (m, K, 2) for one block of scenes, and which scenes failed (m,) bool.

    Two objects are apart when some test direction separates them by ``gap`` (separating axes:
    exact for squares and triangles, conservative with a circle).
    """
    m, k_max = combo.shape
    half_w, top, bottom = reach[combo, 0], reach[combo, 9], reach[combo, 3]  # directions 0°, 270°, 90°
    pos = torch.zeros(m, k_max, 2, dtype=torch.float64)
    pending = torch.arange(m)
    for _ in range(restarts):
        if pending.numel() == 0:
            break
        p = pending.numel()
        failed = torch.zeros(p, dtype=torch.bool)
        for j in range(k_max):
            u = torch.rand(p, tries, 2, generator=g, dtype=torch.float64)
            hw, tp, bt = half_w[pending, j, None], top[pending, j, None], bottom[pending, j, None]
            cand = torch.stack([hw + (1 - 2 * hw) * u[..., 0], tp + (1 - tp - bt) * u[..., 1]], dim=-1)  # (p, T, 2)
            if j > 0:
                proj = (cand[:, :, None] - pos[pending, None, :j]) @ _DIRS.T  # (p, T, j, D)
                # placed object A reaches h_A(n) towards the candidate, the candidate B reaches h_B(−n) back
                need = reach[combo[pending, :j]][:, None] + reach[combo[pending, j]][:, None, None, _OPPOSITE] + gap
                ok = (proj >= need).any(-1).all(-1)  # (p, T)
            else:
                ok = torch.ones(p, tries, dtype=torch.bool)
            first = ok.to(torch.int8).argmax(dim=1)
            pos[pending, j] = cand[torch.arange(p), first]
            failed |= active[pending, j] & ~ok.any(dim=1)
        pending = pending[failed]
    out = torch.zeros(m, dtype=torch.bool)
    out[pending] = True
    return pos, out


def random_scenes(
    n: int,
    generator: Optional[torch.Generator] = None,
    n_objects: Union[int, Tuple[int, int]] = (1, MAX_OBJECTS),
    shapes: Optional[Iterable[str]] = None,
    colors: Optional[Iterable[str]] = None,
    sizes: Optional[Iterable[str]] = None,
    gap: float = 0.06,
    tries: int = 64,
    restarts: int = 100,
) -> List[Scene]:
    """Draw ``n`` scenes of non-overlapping objects inside the image.

    Parameters
    ----------
    n : int
        Number of scenes.
    generator : torch.Generator, optional
        CPU generator; the same seed gives the same scenes.
    n_objects : int or (lo, hi)
        Objects per scene, uniform on ``lo..hi`` inclusive (1..5).
    shapes, colors, sizes : iterable of str, optional
        Allowed values (default all), each drawn uniformly per object.
    gap : float
        Least clearance between two objects (fraction of the side; 0.06 is about 2 pixels at 32,
        which keeps objects apart for the detector).
    tries, restarts : int
        Candidate positions per object per attempt, and attempts per scene.

    Returns
    -------
    list of Scene (length n), objects ordered from the farthest-reaching shape down.

    Raises
    ------
    InputError
        When some scene cannot be placed within the budget (too many or too large objects).
    """
    n = _check_count(n)
    lo, hi = check_n_objects(n_objects)
    shapes = check_choices(shapes, SHAPES, "shape")
    colors = check_choices(colors, tuple(COLORS), "color")
    sizes = check_choices(sizes, tuple(SIZES), "size")
    if isinstance(gap, bool) or not isinstance(gap, numbers.Real) or not 0.0 <= gap < 0.5:
        raise InputError(f"gap must be a number in [0, 0.5) (fraction of the image side), got {gap!r}")
    for name, v in (("tries", tries), ("restarts", restarts)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError("generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None")
    if generator is not None and generator.device.type != "cpu":
        raise InputError("scenes are drawn on the CPU: pass a CPU torch.Generator (render(..., device=...) "
                         f"puts the images on {generator.device})")
    g = generator
    k_max = hi
    count = lo + torch.randint(hi - lo + 1, (n,), generator=g)
    shape_i = _pick(shapes, SHAPES, (n, k_max), g)
    color_i = _pick(colors, tuple(COLORS), (n, k_max), g)
    size_i = _pick(sizes, tuple(SIZES), (n, k_max), g)

    # per (shape, size) support in each test direction, indexed by shape * len(SIZES) + size
    combos = [(sh, z) for sh in SHAPES for z in SIZES]
    reach = torch.tensor([[support(sh, z, a) for a in _ANGLES] for sh, z in combos], dtype=torch.float64)  # (6, D)
    combo = shape_i * len(SIZES) + size_i
    active = torch.arange(k_max) < count[:, None]  # (n, K)
    # largest first; absent slots last
    order = torch.argsort(torch.where(active, reach.amax(1)[combo], -1.0), dim=1, descending=True, stable=True)
    shape_i, color_i, size_i, combo = (t.gather(1, order) for t in (shape_i, color_i, size_i, combo))

    pos = torch.zeros(n, k_max, 2, dtype=torch.float64)
    failed = torch.zeros(n, dtype=torch.bool)
    for lo in range(0, n, _BLOCK):
        sl = slice(lo, lo + _BLOCK)
        pos[sl], failed[sl] = _place(combo[sl], active[sl], reach, float(gap), int(tries), int(restarts), g)
    if failed.any():
        i = int(torch.nonzero(failed)[0])
        k = int(count[i])
        what = ", ".join(f"{tuple(SIZES)[int(size_i[i, j])]} {SHAPES[int(shape_i[i, j])]}" for j in range(k))
        raise InputError(
            f"could not place {k} non-overlapping objects ({what}) inside the image in {restarts} attempts of "
            f"{tries} tries each; use fewer objects (n_objects), smaller sizes (sizes=['small']) or a smaller gap"
        )

    names_c, names_z = tuple(COLORS), tuple(SIZES)
    pos_l, shape_l, color_l, size_l = pos.tolist(), shape_i.tolist(), color_i.tolist(), size_i.tolist()
    out = []
    for i, k in enumerate(count.tolist()):
        out.append(Scene(tuple(
            SceneObject(pos_l[i][j][0], pos_l[i][j][1], SHAPES[shape_l[i][j]], names_c[color_l[i][j]],
                        names_z[size_l[i][j]])
            for j in range(k)
        )))
    return out
