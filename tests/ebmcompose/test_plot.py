"""Tests of ebmcompose.plot: figures with the expected axes and artists, atomic saving, no
show(), and matplotlib kept out of `import ebmcompose`."""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

import ebmcompose as ec  # noqa: E402
from ebmcompose import plot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def forbid_show(monkeypatch):
    """Any call to show() fails the test."""

    def boom(*args, **kwargs):
        raise AssertionError("plot functions must never call show()")

    monkeypatch.setattr(plt, "show", boom)
    monkeypatch.setattr(Figure, "show", boom)
    yield


@pytest.fixture
def ring():
    return ec.EnergyFunction(lambda x: (x.norm(dim=-1) - 2.0) ** 2 / 0.1, name="ring")


@pytest.fixture
def points():
    return torch.randn(300, 2, generator=torch.Generator().manual_seed(0))


def test_density_image_and_contour_with_samples(ring, points):
    n_open = len(plt.get_fignums())
    fig = plot.density(ring, (-3, 3), resolution=40, samples=points, title="ring")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.images) == 1 and isinstance(ax.images[0], AxesImage)
    assert ax.images[0].get_array().shape == (40, 40)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 1 and scatters[0].get_offsets().shape == (300, 2)
    assert ax.get_xlim() == (-3.0, 3.0) and ax.get_title() == "ring"
    # The image is the normalised density: it integrates to 1 over the bounds.
    cell = (6 / 40) ** 2
    assert float(ax.images[0].get_array().sum()) * cell == pytest.approx(1.0)
    fig = plot.density(ring, ((-3, 3), (-2, 4)), resolution=30, style="contour", log=True, colorbar=True)
    assert len(fig.axes) == 2  # the panel and its colour bar
    assert fig.axes[0].get_ylim() == (-2.0, 4.0)
    assert len(plt.get_fignums()) == n_open  # not registered with pyplot


def test_density_orientation_x_horizontal_y_vertical():
    bump = ec.EnergyFunction(lambda x: ((x - torch.tensor([2.0, -2.0])) ** 2).sum(-1) / 0.1, name="bump")
    img = plot.density(bump, (-3, 3), resolution=30).axes[0].images[0].get_array()
    row, col = divmod(int(img.argmax()), 30)
    assert col > 20 and row < 10  # x = 2 to the right, y = -2 near the bottom (origin="lower")


def test_density_draws_into_given_axes(ring):
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plot.density(ring, (-3, 3), resolution=20, ax=ax) is fig
    assert len(ax.images) == 1


def test_samples_scatter_and_histogram(points):
    fig = plot.samples(points, bounds=(-4, 4), title="s")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.collections) == 1
    assert ax.collections[0].get_offsets().shape == (300, 2)
    bad = points.clone()
    bad[:5] = float("nan")
    fig = plot.samples(bad.double())  # non-finite rows are dropped
    assert fig.axes[0].collections[0].get_offsets().shape == (295, 2)
    big = torch.randn(2000, 2)
    fig = plot.samples(big, hist_threshold=1000, bins=25, bounds=(-4, 4))
    mesh = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    assert len(mesh) == 1 and mesh[0].get_array().size == 25 * 25
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        plot.samples(torch.randn(10, 3))


def test_compare_has_one_panel_per_sampler_plus_reference(ring, points):
    results = {"ULA": points, "MALA": points + 0.1, "HMC": points * 0.5}
    fig = plot.compare(results, reference=ring, bounds=(-3, 3), resolution=20)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["exact", "ULA", "MALA", "HMC"]
    assert len(fig.axes[0].images) == 1
    assert all(len(ax.collections) == 1 for ax in fig.axes[1:])
    fig = plot.compare(results, ncols=2)  # no reference, 2x2 grid with one slot removed
    assert len(fig.axes) == 3
    fig = plot.compare({"a": points}, reference=points)  # reference samples
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="needs bounds"):
        plot.compare(results, reference=ring)
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot.compare({})


def test_traces_one_panel_per_present_key():
    info = {
        "acceptance": torch.rand(50),
        "energy_trace": torch.randn(50, 8),  # (steps, chains): mean line + quantile band
        "acceptance_per_chain": torch.rand(8),
        "nfe": 100,
    }
    fig = plot.traces(info)
    assert len(fig.axes) == 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["acceptance", "energy_trace"]
    assert len(fig.axes[0].lines) == 1 and len(fig.axes[0].lines[0].get_xdata()) == 50
    band = [c for c in fig.axes[1].collections if isinstance(c, PolyCollection)]
    assert len(fig.axes[1].lines) == 1 and len(band) == 1
    fig = plot.traces({"energy": [3.0, 2.0, 1.0]}, keys=("energy",))
    assert list(fig.axes[0].lines[0].get_ydata()) == [3.0, 2.0, 1.0]
    assert len(plot.traces(info, keys=None).axes) == 3  # every array with a step axis
    with pytest.raises(ValueError, match=r"available: \['acceptance'"):
        plot.traces(info, keys=("divergence",))
    with pytest.raises(TypeError, match="needs a mapping"):
        plot.traces([1, 2, 3])


def test_save_writes_png_atomically(tmp_path, points):
    fig = plot.samples(points)
    target = tmp_path / "deep" / "er" / "fig.png"
    out = plot.save(fig, target, dpi=50)
    assert out == target and target.read_bytes()[:8] == PNG_MAGIC
    assert os.listdir(target.parent) == ["fig.png"]  # no temporary file left behind
    # Overwrite an existing file; other formats follow the suffix.
    plot.save(fig, target, dpi=40)
    assert target.read_bytes()[:8] == PNG_MAGIC
    plot.save(fig, tmp_path / "fig.pdf")
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"


def test_save_failure_leaves_no_file(tmp_path, monkeypatch, points):
    fig = plot.samples(points)

    def broken(fname, **kwargs):
        fname.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plot.save(fig, tmp_path / "out.png")
    assert os.listdir(tmp_path) == []
    # A failure never clobbers an existing file either.
    (tmp_path / "out.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        plot.save(fig, tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.png"]


def test_import_ebmcompose_does_not_import_matplotlib():
    root = Path(ec.__file__).resolve().parents[1]
    code = (
        "import sys, ebmcompose\n"
        "assert 'matplotlib' not in sys.modules, 'import ebmcompose pulled in matplotlib'\n"
        "assert hasattr(ebmcompose, 'metrics') and hasattr(ebmcompose, 'plot')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
