"""Find the objects in (generated) scene images and score compositions.

Detection, per image:

1. *foreground*: pixels whose RGB distance from the background exceeds ``threshold``;
   8-connected components of it (``scipy.ndimage.label``) are candidate objects;
2. *colour*: each palette colour ``c`` explains a pixel as ``background + α (c − background)``
   with the best ``α`` in [0, 1]; a component takes the colour of least summed residual;
3. *coverage*: that ``α`` over the component grown by a pixel or two (to recover edges a blur
   spread out) gives the area (all shapes of one size have the same area, so the size follows)
   and the centroid (the object's ``(x, y)``, pixel centres at ``(i + 0.5) / W``);
4. *shape*: the coverage map is compared with the three shapes rendered at the measured
   centroid and area, sharp and with two Gaussian blurs; the least squared difference wins.

Components smaller than ``min_area`` (a fraction of the small objects' area) are dropped as noise.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ebmcompose.errors import InputError

from .render import coverage, window_origin, window_side
from .scene import ATTRIBUTES, BACKGROUND, COLORS, SHAPES, SIZES, check_positions

__all__ = [
    "Detection",
    "attribute_accuracy",
    "count_near",
    "detect",
    "position_accuracy",
    "position_strict",
]

_PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32)  # (6, 3)
_BG = torch.tensor(BACKGROUND, dtype=torch.float32)
# equal-area radius between the two sizes (geometric mean): below it an object is small
_SIZE_SPLIT = math.sqrt(SIZES["small"] * SIZES["large"])
_BLURS = (0.0, 0.7, 1.4)  # template blurs, in pixels at 32×32 (scaled with the resolution)


@dataclass(frozen=True)
class Detection:
    """An object found in an image.

    ``x``, ``y``: centroid (column, row) in [0, 1]; ``color``, ``shape``, ``size``: names from
    :data:`COLORS`, :data:`SHAPES`, :data:`SIZES`; ``area``: covered fraction of the image.
    """

    x: float
    y: float
    color: str
    shape: str
    size: str
    area: float

    @property
    def attributes(self):
        """``(color, shape, size)``."""
        return self.color, self.shape, self.size


def _check_images(images) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"images must be a Tensor (N, 3, H, W) of RGB values in [0, 1], got {got}")
    if images.shape[-1] != images.shape[-2] or images.shape[-1] < 16:
        raise InputError(f"images must be square with a side of at least 16 pixels, got {tuple(images.shape[-2:])}")
    return images.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur (B, 1, H, W) by a Gaussian of std ``sigma`` pixels (zero padding, truncated at 3σ)."""
    if sigma <= 0:
        return x
    half = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-half, half + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(x, k.view(1, 1, 1, -1), padding=(0, half))
    return F.conv2d(x, k.view(1, 1, -1, 1), padding=(half, 0))


def _label(fg: Tensor, grow: int):
    """8-connected components of each image's foreground (N, H, W) bool.

    Returns global labels (N, H, W) long (0 = none), the same grown by ``grow`` pixels into free
    pixels (a free pixel next to two components joins the higher label), and the image of each
    component (M,) long.
    """
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # connect within an image, never across images
    labels, m = ndimage.label(fg.numpy(), structure=structure)
    labels = torch.from_numpy(labels.astype(np.int64))
    owner = torch.zeros(m, dtype=torch.long)
    hit = labels > 0
    owner[labels[hit] - 1] = torch.nonzero(hit)[:, 0]
    grown = labels
    for _ in range(grow):
        near = F.max_pool2d(grown[:, None].double(), 3, stride=1, padding=1)[:, 0].long()
        grown = torch.where(grown > 0, grown, near)
    return labels, grown, owner


def detect(images: Tensor, threshold: float = 0.3, min_area: float = 0.3,
           chunk: int = 128) -> List[List[Detection]]:
    """Detect the objects of each image.

    Parameters
    ----------
    images : Tensor (N, 3, H, W)
        RGB in [0, 1] (square, any side from 16; scenes are 32 or 64).
    threshold : float
        RGB distance from the background above which a pixel is foreground (palette colours sit
        at >= 0.64, so 0.3 is about half coverage).
    min_area : float
        Components covering less than this fraction of a small object's area are ignored.
    chunk : int
        Components whose shape templates are compared at a time (bounds memory).

    Returns
    -------
    list (N) of lists of Detection, each image's objects ordered from the largest area down.
    """
    x = _check_images(images)
    n, _, h, w = x.shape
    if not (isinstance(threshold, numbers.Real) and 0 < threshold < 1):
        raise InputError(f"threshold must be a number in (0, 1), got {threshold!r}")
    if not (isinstance(min_area, numbers.Real) and 0 <= min_area < 1):
        raise InputError(f"min_area must be a fraction in [0, 1) of a small object's area, got {min_area!r}")
    scale = h / 32.0
    v = x - _BG[:, None, None]  # (N, 3, H, W)
    fg = (v * v).sum(1) > threshold**2  # (N, H, W)
    labels, grown, image = _label(fg, grow=max(1, int(round(scale))))
    m = image.numel()
    if m == 0:
        return [[] for _ in range(n)]

    # coverage and residual of every palette colour at each pixel of the grown components
    pix = torch.nonzero(grown.reshape(-1)).squeeze(1)  # (Q,)
    comp = grown.reshape(-1)[pix] - 1  # component of each of those pixels
    core = labels.reshape(-1)[pix] > 0  # in the thresholded component itself
    vq = v.permute(0, 2, 3, 1).reshape(-1, 3)[pix]  # (Q, 3)
    u = _PALETTE - _BG  # (6, 3)
    uu = (u * u).sum(-1)
    dots = vq @ u.T  # (Q, 6)
    alpha = (dots / uu).clamp(0.0, 1.0)
    resid = (vq * vq).sum(-1, keepdim=True) - 2 * alpha * dots + alpha * alpha * uu  # (Q, 6)
    colour = torch.zeros(m, len(COLORS)).index_add_(0, comp[core], resid[core]).argmin(dim=1)  # (m,)

    # coverage under the component's colour; a faded or desaturated object is still whole, so
    # coverage is taken relative to the component's peak
    a = alpha.gather(1, colour[comp][:, None]).squeeze(1)  # (Q,)
    peak = torch.full((m,), 0.5).scatter_reduce_(0, comp[core], a[core], "amax")  # >= 0.5
    a = (a / peak[comp]).clamp(max=1.0)
    cov_img = torch.zeros(n * h * w).index_put_((pix,), a).view(n, h, w)
    row = (pix // w) % h
    col = pix % w
    area_px = torch.zeros(m).index_add_(0, comp, a)
    cx = torch.zeros(m).index_add_(0, comp, a * (col.float() + 0.5)) / area_px.clamp_min(1e-6) / w
    cy = torch.zeros(m).index_add_(0, comp, a * (row.float() + 0.5)) / area_px.clamp_min(1e-6) / h
    area = area_px / (h * w)
    radius = torch.sqrt(area / math.pi)
    keep = area >= min_area * math.pi * SIZES["small"] ** 2

    # shape: least squares against templates at the measured centroid and radius, in a window
    shape = torch.zeros(m, dtype=torch.long)
    kept = torch.nonzero(keep).squeeze(1)
    kinds = torch.arange(len(SHAPES))
    supersample = 4 if h <= 32 else 2
    for lo in range(0, kept.numel(), chunk):
        idx = kept[lo:lo + chunk]
        k = idx.numel()
        win = window_side(float(radius[idx].max()), h, pad=2)
        origin = window_origin(cx[idx], cy[idx], h, win)  # (k, 2)
        grid = torch.arange(win)
        rows = (origin[:, 0, None] + grid)[:, :, None]  # (k, win, 1)
        cols = (origin[:, 1, None] + grid)[:, None, :]  # (k, 1, win)
        img = image[idx][:, None, None]
        observed = cov_img[img, rows, cols] * (grown[img, rows, cols] == idx[:, None, None] + 1)  # (k, win, win)
        rep = lambda t: t.repeat_interleave(len(SHAPES), dim=0)  # noqa: E731
        tmpl = coverage(kinds.repeat(k), rep(cx[idx]), rep(cy[idx]), rep(radius[idx]), h, supersample,
                        rep(origin), win)[:, None]  # (3k, 1, win, win)
        blurred = torch.stack([_gaussian_blur(tmpl, b * scale) for b in _BLURS])  # (blurs, 3k, 1, win, win)
        err = ((blurred.view(len(_BLURS), k, len(SHAPES), win, win) - observed[:, None]) ** 2).sum((-1, -2))
        best = err.amin(dim=0)  # (k, 3)
        shape[idx] = best.argmin(dim=1)

    out: List[List[Detection]] = [[] for _ in range(n)]
    names_c, names_z = tuple(COLORS), tuple(SIZES)
    for j in kept.tolist():
        size = names_z[0] if float(radius[j]) < _SIZE_SPLIT else names_z[1]
        out[int(image[j])].append(Detection(float(cx[j]), float(cy[j]), names_c[int(colour[j])],
                                            SHAPES[int(shape[j])], size, float(area[j])))
    for dets in out:
        dets.sort(key=lambda d: -d.area)
    return out


Detections = List[List[Detection]]


def _detections(images) -> Detections:
    """Detect in a Tensor of images, or pass through a list of detection lists already computed."""
    if isinstance(images, Tensor):
        return detect(images)
    if isinstance(images, (list, tuple)) and all(isinstance(d, (list, tuple)) for d in images):
        return [list(d) for d in images]
    raise InputError("images must be a Tensor (N, 3, H, W) in [0, 1] or the output of scenes.detect(images)")


def _check_radius(radius) -> float:
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not 0 < radius <= 1:
        raise InputError(
            f"radius must be a number in (0, 1] (fraction of the image side; 0.1 in the article), got {radius!r}")
    return float(radius)


def _near(dets: Sequence[Detection], pos, radius: float) -> bool:
    return any(math.hypot(d.x - pos[0], d.y - pos[1]) <= radius for d in dets)


def count_near(images, position, radius: float = 0.1) -> Tensor:
    """Whether each image has a detected object within ``radius`` of ``position = (x, y)``.

    ``images``: Tensor (N, 3, H, W) in [0, 1], or ``detect(images)``. Returns Tensor (N,) bool.
    """
    (pos,) = check_positions([position], "position")
    radius = _check_radius(radius)
    return torch.tensor([_near(d, pos, radius) for d in _detections(images)], dtype=torch.bool)


def position_accuracy(images, at=(), not_at=(), radius: float = 0.1) -> Tensor:
    """The article's position accuracy: every ``at`` position has an object within ``radius`` and no
    ``not_at`` position has one.

    ``images``: Tensor (N, 3, H, W) in [0, 1], or ``detect(images)``; ``at``, ``not_at``: lists of
    ``(x, y)`` (or one pair). Returns Tensor (N,) bool.
    """
    want, avoid = check_positions(at, "at"), check_positions(not_at, "not_at")
    if not want and not avoid:
        raise InputError("position_accuracy needs at least one position in at=[(x, y), ...] or not_at=[...]")
    radius = _check_radius(radius)
    res = [all(_near(d, p, radius) for p in want) and not any(_near(d, p, radius) for p in avoid)
           for d in _detections(images)]
    return torch.tensor(res, dtype=torch.bool)


def _perfect_matching(dets: Sequence[Detection], want, radius: float) -> bool:
    """Whether the detections and the positions pair up one-to-one, each pair within ``radius``."""
    if len(dets) != len(want):
        return False
    if not want:
        return True
    from scipy.optimize import linear_sum_assignment

    d = np.array([[d.x, d.y] for d in dets])
    p = np.array(want)
    far = (np.linalg.norm(d[:, None] - p[None], axis=-1) > radius).astype(float)
    r, c = linear_sum_assignment(far)
    return float(far[r, c].sum()) == 0.0


def position_strict(images, at, radius: float = 0.1) -> Tensor:
    """Exactly the requested objects: as many detections as ``at`` positions, matched one-to-one
    within ``radius``. Returns Tensor (N,) bool."""
    want = check_positions(at, "at")
    radius = _check_radius(radius)
    return torch.tensor([_perfect_matching(d, want, radius) for d in _detections(images)], dtype=torch.bool)


def _check_attributes(names, what: str):
    if names is None:
        return ()
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for a in names:
        if not isinstance(a, str) or a not in ATTRIBUTES:
            raise InputError(f"unknown attribute {a!r} in {what}; valid attributes are: {', '.join(ATTRIBUTES)}")
    return names


def attribute_accuracy(images, require=(), forbid=()) -> Tensor:
    """(Single-object images) the largest detected object has every ``require``d attribute and none of
    the ``forbid``den ones; an image with no object fails. Returns Tensor (N,) bool."""
    require, forbid = _check_attributes(require, "require"), _check_attributes(forbid, "forbid")
    if not require and not forbid:
        raise InputError(f"attribute_accuracy needs require=[...] or forbid=[...] from: {', '.join(ATTRIBUTES)}")
    res = []
    for dets in _detections(images):
        if not dets:
            res.append(False)
            continue
        top = max(dets, key=lambda d: d.area)
        have = set(top.attributes)
        res.append(all(a in have for a in require) and not any(a in have for a in forbid))
    return torch.tensor(res, dtype=torch.bool)
