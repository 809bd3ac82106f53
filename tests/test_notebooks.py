"""Execute every notebook in ``notebooks/`` in its small configuration.

Each notebook reads ``EBMCOMPOSE_NOTEBOOK_SMALL=1`` and shrinks its sizes, so a run takes a few
seconds. A failing cell fails the test with the cell's source and the kernel's traceback. The
committed notebooks carry the outputs of a full run; this test never writes them back.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="executing notebooks needs nbformat (pip install -e .[dev])")
nbclient = pytest.importorskip("nbclient", reason="executing notebooks needs nbclient (pip install -e .[dev])")
pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel (pip install -e .[dev])")

from nbclient.exceptions import CellExecutionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell; the small configuration needs a few seconds in all


def _kernel_available() -> bool:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return False
    return True


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_composition_on_toy.ipynb", "02_compare_samplers.ipynb", "03_custom_energy.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_configuration(path, monkeypatch):
    if not _kernel_available():
        pytest.skip("no 'python3' Jupyter kernel installed (pip install ipykernel)")
    # The kernel is a subprocess that inherits this environment; the repository root goes on its
    # path so that the packages import from this checkout.
    monkeypatch.setenv("EBMCOMPOSE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:  # the message holds the cell's source and traceback
        pytest.fail(f"{path.name} failed in its small configuration:\n{err}", pytrace=False)
    # every code cell ran
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip():
            assert cell.get("execution_count") is not None, f"{path.name}: a cell did not run:\n{cell.source[:200]}"
