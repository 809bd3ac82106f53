"""Plots of 2-D densities, samples and sampler diagnostics.

Every function returns a :class:`matplotlib.figure.Figure` and never calls ``show``. Figures
are built with the object-oriented API (``matplotlib.figure.Figure``, not ``pyplot``), so they
work under any backend (including the headless ``Agg``), are not registered with pyplot's
global figure manager, and are freed when no longer referenced. In Jupyter a returned figure
displays as the cell's value. matplotlib is imported inside the functions, so
``import ebmcompose`` stays light.

``bounds`` is ``(lo, hi)`` for a square or ``((x_lo, x_hi), (y_lo, y_hi))``.
"""

from __future__ import annotations

import dataclasses
import os
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .energy import Energy, TimeLike
from .errors import InputError, InputTypeError
from .grid import Bounds, grid_density, parse_bounds
from .io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["density", "samples", "compare", "traces", "save"]

#: Above this many points :func:`samples` draws a 2-D histogram instead of a scatter.
HIST_THRESHOLD = 50_000


# ------------------------------------------------------------------------------- helpers
def _new_axes(ax: Optional["Axes"], figsize: Tuple[float, float] = (4.0, 4.0)) -> Tuple["Figure", "Axes"]:
    """``(figure, axes)``: ``ax``'s figure, or a new pyplot-free figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _points(x, name: str = "x"):
    """Samples as a finite ``(N, 2)`` NumPy array (non-finite rows dropped)."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != 2:
        raise InputError(
            f"{name} must be 2-D points of shape (N, 2), got shape {tuple(x.shape)}; project "
            f"higher-dimensional samples first, e.g. {name}[:, :2]"
        )
    x = x.detach().to("cpu", torch.float64)
    return x[torch.isfinite(x).all(dim=1)].numpy()


def _set_bounds(ax: "Axes", bounds: Optional[Bounds]) -> None:
    if bounds is None:
        return
    (xl, xh), (yl, yh) = parse_bounds(bounds)
    ax.set_xlim(xl, xh)
    ax.set_ylim(yl, yh)
    ax.set_aspect("equal", adjustable="box")


# ------------------------------------------------------------------------------- panels
def density(
    energy: Energy,
    bounds: Bounds,
    resolution: int = 200,
    t: TimeLike = None,
    ax: Optional["Axes"] = None,
    samples: Optional[Tensor] = None,
    style: str = "image",
    cmap: str = "viridis",
    log: bool = False,
    colorbar: bool = False,
    title: Optional[str] = None,
    scatter_kwargs: Optional[Dict[str, Any]] = None,
) -> "Figure":
    """Plot the normalised density ``exp(−E) / Z`` of a 2-D energy on a grid.

    Parameters
    ----------
    energy : Energy
        A 2-D energy providing energy values.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi))
        Plotted region (the density is normalised over it, see
        :func:`ebmcompose.grid.grid_density`).
    resolution : int
        Grid cells per axis (default 200).
    t : float, Tensor or None
        Diffusion time for time-dependent energies.
    ax : matplotlib Axes, optional
        Draw here; default a new figure.
    samples : Tensor, optional
        ``(N, 2)`` points scattered on top.
    style : {"image", "contour"}
        An image of the cells or filled contours.
    cmap : str
        Colour map.
    log : bool
        Show the log density instead.
    colorbar : bool
        Add a colour bar (an extra axes).
    title : str, optional
        Axes title.
    scatter_kwargs : dict, optional
        Passed to ``ax.scatter`` for ``samples``.

    Returns
    -------
    Figure
    """
    if style not in ("image", "contour"):
        raise InputError(f"style must be 'image' or 'contour', got {style!r}")
    grid = grid_density(energy, bounds, resolution=resolution, t=t)
    dx, dy = grid.cell_size
    dens = (grid.probs / (dx * dy)).cpu()
    values = torch.log(dens) if log else dens
    fig, ax = _new_axes(ax)
    (xl, xh), (yl, yh) = parse_bounds(bounds)
    img = values.T.numpy()  # rows = y, columns = x
    if style == "image":
        mappable = ax.imshow(img, origin="lower", extent=(xl, xh, yl, yh), cmap=cmap, aspect="auto")
    else:
        xc = (0.5 * (grid.x_edges[1:] + grid.x_edges[:-1])).cpu().numpy()
        yc = (0.5 * (grid.y_edges[1:] + grid.y_edges[:-1])).cpu().numpy()
        finite = img[torch.isfinite(values.T).numpy()]
        vmin = float(finite.min()) if log else 0.0
        mappable = ax.contourf(xc, yc, img.clip(min=vmin), levels=20, cmap=cmap)
    if colorbar:
        fig.colorbar(mappable, ax=ax, label="log density" if log else "density")
    if samples is not None:
        pts = _points(samples, "samples")
        kw = {"s": 2, "c": "white", "alpha": 0.5, "linewidths": 0}
        kw.update(scatter_kwargs or {})
        ax.scatter(pts[:, 0], pts[:, 1], **kw)
    _set_bounds(ax, bounds)
    if title is not None:
        ax.set_title(title)
    return fig


def samples(
    x: Tensor,
    ax: Optional["Axes"] = None,
    bounds: Optional[Bounds] = None,
    hist_threshold: int = HIST_THRESHOLD,
    bins: int = 100,
    title: Optional[str] = None,
    cmap: str = "viridis",
    **scatter_kwargs: Any,
) -> "Figure":
    """Scatter plot of 2-D samples, or a 2-D histogram when there are many.

    Parameters
    ----------
    x : Tensor
        ``(N, 2)`` samples (any device; non-finite rows are dropped).
    ax : matplotlib Axes, optional
        Draw here; default a new figure.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)), optional
        Axis limits (and histogram range).
    hist_threshold : int
        Draw a ``bins × bins`` histogram when ``N`` exceeds this (default 50 000).
    bins : int
        Histogram bins per axis.
    title : str, optional
        Axes title.
    cmap : str
        Colour map of the histogram.
    **scatter_kwargs
        Passed to ``ax.scatter`` (default ``s=2, alpha=0.5``).

    Returns
    -------
    Figure
    """
    pts = _points(x)
    fig, ax = _new_axes(ax)
    if pts.shape[0] > hist_threshold:
        rng = None
        if bounds is not None:
            (xl, xh), (yl, yh) = parse_bounds(bounds)
            rng = [[xl, xh], [yl, yh]]
        ax.hist2d(pts[:, 0], pts[:, 1], bins=bins, range=rng, cmap=cmap)
    else:
        kw = {"s": 2, "alpha": 0.5, "linewidths": 0}
        kw.update(scatter_kwargs)
        ax.scatter(pts[:, 0], pts[:, 1], **kw)
    _set_bounds(ax, bounds)
    if title is not None:
        ax.set_title(title)
    return fig


def compare(
    results: Mapping[str, Tensor],
    reference: Union[Energy, Tensor, None] = None,
    bounds: Optional[Bounds] = None,
    resolution: int = 200,
    t: TimeLike = None,
    ncols: Optional[int] = None,
    panel_size: float = 3.0,
    reference_title: str = "exact",
    **samples_kwargs: Any,
) -> "Figure":
    """A grid of panels: the reference first, then one panel of samples per sampler.

    Parameters
    ----------
    results : mapping of str to Tensor
        Sampler name -> ``(N, 2)`` samples (a ``SampleResult``'s ``.samples``).
    reference : Energy or Tensor, optional
        The exact target, drawn as its density (needs ``bounds``), or reference samples
        ``(N, 2)``; ``None`` for no reference panel.
    bounds : (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)), optional
        Shared axis limits (required with an energy reference).
    resolution : int
        Grid cells per axis of the density panel.
    t : float, Tensor or None
        Diffusion time of the reference energy.
    ncols : int, optional
        Panels per row (default ``min(panels, 4)``).
    panel_size : float
        Inches per panel.
    reference_title : str
        Title of the reference panel.
    **samples_kwargs
        Passed to :func:`samples` for each sampler panel.

    Returns
    -------
    Figure
        One axes per panel (``len(results) + 1`` with a reference).
    """
    if not isinstance(results, Mapping) or len(results) == 0:
        raise InputError("results must be a non-empty mapping {sampler name: (N, 2) samples}")
    n_panels = len(results) + (reference is not None)
    ncols = min(n_panels, 4) if ncols is None else int(ncols)
    if ncols < 1:
        raise InputError(f"ncols must be positive, got {ncols}")
    nrows = math.ceil(n_panels / ncols)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size * ncols, panel_size * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.remove()
    panels = iter(axes[:n_panels])
    if reference is not None:
        ax = next(panels)
        if isinstance(reference, Energy):
            if bounds is None:
                raise InputError("an energy reference needs bounds=(lo, hi) to draw its density")
            density(reference, bounds, resolution=resolution, t=t, ax=ax, title=reference_title)
        else:
            samples(reference, ax=ax, bounds=bounds, title=reference_title, **samples_kwargs)
    for (name, x), ax in zip(results.items(), panels):
        samples(x, ax=ax, bounds=bounds, title=str(name), **samples_kwargs)
    return fig


def _as_mapping(info) -> Mapping[str, Any]:
    if isinstance(info, Mapping):
        return info
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    raise InputTypeError(
        f"traces needs a mapping {{name: per-step values}} (e.g. a SampleResult's .info), got "
        f"{type(info).__name__}"
    )


def traces(
    info: Mapping[str, Any],
    keys: Optional[Sequence[str]] = ("acceptance", "energy", "energy_trace", "energy_error"),
    panel_size: Tuple[float, float] = (6.0, 2.0),
    title: Optional[str] = None,
) -> "Figure":
    """Line plots of per-step diagnostics, one panel per key, sharing the step axis.

    Parameters
    ----------
    info : mapping of str to array-like
        Name -> per-step values: ``(T,)``, or ``(T, B)`` per chain (drawn as the mean over
        chains with a band from the 10% to the 90% quantile). A ``SampleResult.info`` works.
    keys : sequence of str or None
        Keys to draw, in order; keys absent from ``info`` are skipped. ``None`` draws every
        entry with a step axis (1-D or 2-D array values).
    panel_size : (float, float)
        Inches per panel (width, height).
    title : str, optional
        Figure title.

    Returns
    -------
    Figure
        One axes per drawn key.

    Raises
    ------
    ValueError
        If none of ``keys`` is in ``info``, or a requested value is not 1-D/2-D.
    """
    info = _as_mapping(info)
    if keys is None:
        chosen = [k for k, v in info.items() if _ndim(v) in (1, 2)]
    else:
        chosen = [k for k in keys if k in info]
    if not chosen:
        raise InputError(
            f"none of the keys {list(keys) if keys is not None else '(any array)'} are in info; "
            f"available: {sorted(map(str, info))}. Pass keys=[...]"
        )
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0], panel_size[1] * len(chosen)), layout="constrained")
    axes = fig.subplots(len(chosen), 1, sharex=True, squeeze=False).ravel()
    for key, ax in zip(chosen, axes):
        v = torch.as_tensor(_to_cpu(info[key])).to(torch.float64)
        if v.dim() == 1:
            ax.plot(range(v.shape[0]), v.numpy(), lw=1)
        elif v.dim() == 2:
            steps = range(v.shape[0])
            lo, hi = torch.quantile(v, torch.tensor([0.1, 0.9], dtype=v.dtype), dim=1)
            ax.fill_between(steps, lo.numpy(), hi.numpy(), alpha=0.3, lw=0)
            ax.plot(steps, v.mean(1).numpy(), lw=1)
        else:
            raise InputError(
                f"info[{key!r}] has shape {tuple(v.shape)}; traces need (steps,) or (steps, chains)"
            )
        ax.set_ylabel(str(key))
    axes[-1].set_xlabel("step")
    if title is not None:
        fig.suptitle(title)
    return fig


def _to_cpu(v):
    return v.detach().cpu() if isinstance(v, Tensor) else v


def _ndim(v) -> int:
    """Number of dimensions of an array-like value, or -1 if it is not numeric."""
    try:
        return torch.as_tensor(_to_cpu(v)).dim()
    except (TypeError, ValueError, RuntimeError):
        return -1


# ------------------------------------------------------------------------------- output
def save(fig: "Figure", path: Union[str, os.PathLike], **savefig_kwargs: Any) -> Path:
    """Write ``fig`` to ``path`` atomically, creating parent directories.

    The figure is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so ``path`` is either the complete old file or the complete new one, and a
    failure while writing leaves no partial file behind.

    Parameters
    ----------
    fig : Figure
        The figure.
    path : str or PathLike
        Destination; the format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...; none:
        PNG).
    **savefig_kwargs
        Passed to ``fig.savefig`` (e.g. ``dpi=150``).

    Returns
    -------
    Path
        The written path.
    """
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or (path.suffix[1:].lower() or "png")
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, **savefig_kwargs)
    return path
