"""Vectorised anti-aliased rendering of scenes to RGB tensors.

Each shape is a signed distance field (circle: distance to the centre minus the radius; square
and triangle: the largest signed distance to their edge lines). A sub-pixel's coverage ramps
linearly across one sub-pixel around the edge, and ``supersample``² sub-pixels are averaged into a
pixel, so edges are smooth and an object's total coverage is its area. Objects never overlap in
generated scenes, so the image is the background plus each object's coverage times its colour offset.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ebmcompose.errors import InputError

from .scene import (
    BACKGROUND,
    COLORS,
    SHAPES,
    SIZES,
    SQUARE_HALF_SIDE,
    TRIANGLE_CIRCUMRADIUS,
    Scene,
    check_resolution,
)

__all__ = ["coverage", "render", "scene_tensors", "window_origin", "window_side"]

_SQRT3_2 = math.sqrt(3.0) / 2.0


def _sdf(shape: Tensor, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Signed distance (negative inside) to the shape of each leading index: (M, S, S).

    ``dx`` (M, 1, S) and ``dy`` (M, S, 1) are offsets from the centroid, ``r`` (M, 1, 1) the radius.
    """
    out = torch.empty(dx.shape[0], dy.shape[1], dx.shape[2], dtype=dx.dtype, device=dx.device)
    for kind in range(len(SHAPES)):
        sel = torch.nonzero(shape == kind).squeeze(1)
        if sel.numel() == 0:
            continue
        a, b, rr = dx[sel], dy[sel], r[sel]
        if kind == 0:  # circle
            d = torch.sqrt(a * a + b * b) - rr
        elif kind == 1:  # axis-aligned square
            d = torch.maximum(a.abs(), b.abs()) - SQUARE_HALF_SIDE * rr
        else:  # upward equilateral triangle: outward edge normals (0, 1), (±√3/2, −1/2); inradius R/2
            slanted = _SQRT3_2 * a.abs() - 0.5 * b
            d = torch.maximum(slanted, b.expand_as(slanted)) - 0.5 * TRIANGLE_CIRCUMRADIUS * rr
        out[sel] = d
    return out


def coverage(shape: Tensor, x: Tensor, y: Tensor, radius: Tensor, resolution: int, supersample: int = 4,
             origin: Optional[Tensor] = None, window: Optional[int] = None) -> Tensor:
    """Fraction of each pixel that a shape covers, over the image or over a window of it.

    Parameters
    ----------
    shape : Tensor (M,) long
        Index into :data:`SHAPES` (0 circle, 1 square, 2 triangle).
    x, y, radius : Tensor (M,)
        Centroid (column, row) and equal-area radius, fractions of the image side.
    resolution : int
        Image side ``H = W`` in pixels.
    supersample : int
        Sub-pixels per pixel side.
    origin : Tensor (M, 2) long, optional
        Pixel (row, column) of each window's top-left corner (default: the whole image).
    window : int, optional
        Window side in pixels (default ``resolution``).

    Returns
    -------
    Tensor (M, window, window), values in [0, 1], dtype and device of ``x``.
    """
    window = resolution if window is None else int(window)
    if origin is None:
        origin = torch.zeros(x.shape[0], 2, dtype=torch.long, device=x.device)
    side = window * supersample
    steps = (torch.arange(side, device=x.device, dtype=x.dtype) + 0.5) / supersample  # pixel units
    rows = (origin[:, 0, None].to(x.dtype) + steps) / resolution  # (M, S)
    cols = (origin[:, 1, None].to(x.dtype) + steps) / resolution
    dx = (cols - x[:, None])[:, None, :]  # (M, 1, S)
    dy = (rows - y[:, None])[:, :, None]  # (M, S, 1)
    sdf = _sdf(shape, dx, dy, radius[:, None, None])
    sub = (0.5 - sdf * (resolution * supersample)).clamp_(0.0, 1.0)
    if supersample == 1:
        return sub
    return F.avg_pool2d(sub[:, None], supersample)[:, 0]


def window_side(radius: float, resolution: int, pad: int = 1) -> int:
    """Side in pixels of a window that holds any shape of equal-area ``radius`` about its centroid."""
    reach = TRIANGLE_CIRCUMRADIUS * radius * resolution  # the farthest any shape reaches from its centroid
    return min(resolution, 2 * int(math.ceil(reach)) + 2 + 2 * pad)


def window_origin(x: Tensor, y: Tensor, resolution: int, window: int) -> Tensor:
    """Top-left pixel (row, column), (M, 2) long, of windows of side ``window`` about ``(x, y)`` (M,),
    kept inside the image."""
    centre = torch.stack([y, x], dim=-1) * resolution
    return (torch.floor(centre) - window // 2).long().clamp(0, resolution - window)


def scene_tensors(scene_list: Sequence[Scene], dtype=torch.float32, device=None) -> Tuple[Tensor, ...]:
    """Pack scenes into padded tensors.

    Returns
    -------
    shape : Tensor (N, K) long; x, y, radius : Tensor (N, K); rgb : Tensor (N, K, 3); present : Tensor (N, K) bool
        ``K`` is the largest object count (at least 1); absent slots have ``present`` False.
    """
    if isinstance(scene_list, Scene):
        scene_list = [scene_list]
    scene_list = list(scene_list)
    if not all(isinstance(s, Scene) for s in scene_list):
        raise InputError("render takes a list of scenes.Scene (e.g. from scenes.random_scenes(n, generator))")
    n = len(scene_list)
    k = max([len(s) for s in scene_list] + [1])
    shape = [[0] * k for _ in range(n)]
    geom = [[(0.0, 0.0, 0.0)] * k for _ in range(n)]  # x, y, radius
    rgb = [[(0.0, 0.0, 0.0)] * k for _ in range(n)]
    present = [[False] * k for _ in range(n)]
    for i, s in enumerate(scene_list):
        for j, o in enumerate(s.objects):
            shape[i][j] = SHAPES.index(o.shape)
            geom[i][j] = (o.x, o.y, SIZES[o.size])
            rgb[i][j] = COLORS[o.color]
            present[i][j] = True
    geom = torch.tensor(geom, dtype=torch.float64).reshape(n, k, 3).to(device=device, dtype=dtype)
    return (torch.tensor(shape, dtype=torch.long, device=device).reshape(n, k), geom[..., 0], geom[..., 1],
            geom[..., 2], torch.tensor(rgb, dtype=dtype, device=device).reshape(n, k, 3),
            torch.tensor(present, dtype=torch.bool, device=device).reshape(n, k))


def render(scene_list: Sequence[Scene], resolution: int = 32, supersample: Optional[int] = None,
           device: Optional[torch.device] = None, chunk: int = 4096) -> Tensor:
    """Render scenes to RGB images.

    Parameters
    ----------
    scene_list : list of Scene (length N), or one Scene
    resolution : int
        Image side in pixels, 32 (default) or 64 (any of 32..256 renders).
    supersample : int, optional
        Anti-aliasing sub-pixels per pixel side (1..8); default 4 at 32, 2 at 64 and above.
    device : torch.device, optional
        Where to render (default CPU).
    chunk : int
        Objects rendered at a time (bounds memory).

    Returns
    -------
    Tensor (N, 3, H, W) float32 in [0, 1], ``H = W = resolution``.
    """
    resolution = check_resolution(resolution)
    if supersample is None:
        supersample = max(2, min(4, 128 // resolution))
    if isinstance(supersample, bool) or not isinstance(supersample, numbers.Integral) or not 1 <= supersample <= 8:
        raise InputError(f"supersample must be an integer from 1 to 8 or None (automatic), got {supersample!r}")
    shape, x, y, radius, rgb, present = scene_tensors(scene_list, device=device)
    n = shape.shape[0]
    bg = torch.tensor(BACKGROUND, dtype=torch.float32, device=x.device)
    hw = resolution * resolution
    img = bg[None, :, None].repeat(n, 1, hw)  # (N, 3, H*W)
    channels = torch.arange(3, device=x.device)
    batches = []  # objects of one size share a window side
    for r in SIZES.values():
        which = torch.nonzero(present & (radius == torch.tensor(r, dtype=radius.dtype)))  # (M, 2): image, slot
        batches += [(which[lo:lo + chunk], window_side(r, resolution)) for lo in range(0, which.shape[0], chunk)]
    for which, win in batches:
        grid = torch.arange(win, device=x.device)
        i, j = which.unbind(1)
        origin = window_origin(x[i, j], y[i, j], resolution, win)
        cov = coverage(shape[i, j], x[i, j], y[i, j], radius[i, j], resolution, int(supersample), origin, win)
        pixel = ((origin[:, 0, None, None] + grid[:, None]) * resolution
                 + origin[:, 1, None, None] + grid).reshape(len(i), 1, -1)  # (m, 1, win*win)
        index = (i[:, None, None] * 3 + channels[:, None]) * hw + pixel  # (m, 3, win*win) into img
        value = cov.reshape(len(i), 1, -1) * (rgb[i, j] - bg)[:, :, None]
        img.view(-1).index_add_(0, index.reshape(-1), value.reshape(-1))
    return img.view(n, 3, resolution, resolution).clamp_(0.0, 1.0)
