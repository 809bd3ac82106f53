"""Random scenes: attributes drawn uniformly, positions by vectorised rejection sampling.

Objects are placed largest first. For each object every unfinished scene draws ``tries``
candidate centroids at once (uniform over the positions that keep the shape inside the image) and
keeps the first that clears every placed object by ``gap`` (discs about the centroids that hold
the shapes); a scene with no valid candidate restarts its positions, up to ``restarts`` times.
"""

from __future__ import annotations

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
    bounding_radius,
    check_choices,
    check_n_objects,
    extents,
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


def random_scenes(
    n: int,
    generator: Optional[torch.Generator] = None,
    n_objects: Union[int, Tuple[int, int]] = (1, MAX_OBJECTS),
    shapes: Optional[Iterable[str]] = None,
    colors: Optional[Iterable[str]] = None,
    sizes: Optional[Iterable[str]] = None,
    gap: float = 0.05,
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
        Least clearance between the bounding discs of two objects (fraction of the side; 0.05 is
        1.6 pixels at 32, which keeps objects apart for the detector).
    tries, restarts : int
        Candidate positions per object per attempt, and attempts per scene.

    Returns
    -------
    list of Scene (length n), objects ordered from the largest bounding disc down.

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
    g = generator
    k_max = hi
    count = lo + torch.randint(hi - lo + 1, (n,), generator=g)
    shape_i = _pick(shapes, SHAPES, (n, k_max), g)
    color_i = _pick(colors, tuple(COLORS), (n, k_max), g)
    size_i = _pick(sizes, tuple(SIZES), (n, k_max), g)

    # per (shape, size) geometry tables, indexed by shape * 2 + size
    combos = [(s, z) for s in SHAPES for z in SIZES]
    ext = torch.tensor([extents(s, z) for s, z in combos], dtype=torch.float64)  # (6, 3)
    bound = torch.tensor([bounding_radius(s, z) for s, z in combos], dtype=torch.float64)  # (6,)
    combo = shape_i * len(SIZES) + size_i
    active = torch.arange(k_max) < count[:, None]  # (n, K)
    # largest bounding disc first; absent slots last
    order = torch.argsort(torch.where(active, bound[combo], -1.0), dim=1, descending=True, stable=True)
    shape_i, color_i, size_i, combo = (t.gather(1, order) for t in (shape_i, color_i, size_i, combo))
    half_w, top, bottom = ext[combo].unbind(-1)  # (n, K)
    rad = bound[combo]

    pos = torch.zeros(n, k_max, 2, dtype=torch.float64)
    pending = torch.arange(n)
    for _ in range(restarts):
        if pending.numel() == 0:
            break
        m = pending.numel()
        failed = torch.zeros(m, dtype=torch.bool)
        for j in range(k_max):
            u = torch.rand(m, tries, 2, generator=g, dtype=torch.float64)
            hw, tp, bt = half_w[pending, j, None], top[pending, j, None], bottom[pending, j, None]
            cand = torch.stack([hw + (1 - 2 * hw) * u[..., 0], tp + (1 - tp - bt) * u[..., 1]], dim=-1)  # (m, T, 2)
            if j > 0:
                dist = torch.linalg.vector_norm(cand[:, :, None] - pos[pending, None, :j], dim=-1)  # (m, T, j)
                need = rad[pending, None, j, None] + rad[pending, None, :j] + gap
                ok = (dist >= need).all(dim=-1)  # (m, T)
            else:
                ok = torch.ones(m, tries, dtype=torch.bool)
            first = ok.to(torch.int8).argmax(dim=1)
            pos[pending, j] = cand[torch.arange(m), first]
            failed |= active[pending, j] & ~ok.any(dim=1)
        pending = pending[failed]
    if pending.numel() > 0:
        i = int(pending[0])
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
            SceneObject(pos_l[i][j][0], pos_l[i][j][1], SHAPES[shape_l[i][j]], names_c[color_l[i][j]], names_z[size_l[i][j]])
            for j in range(k)
        )))
    return out
