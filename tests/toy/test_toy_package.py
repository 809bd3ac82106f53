"""Package surface and layering of toy."""

import ast
import pathlib
import subprocess
import sys

import toy

TOY_DIR = pathlib.Path(toy.__file__).parent


def test_public_names():
    expected = {"GaussianMixture", "gmm_product", "reference_sample", "SmoothBox", "ring", "tasks", "datasets"}
    assert expected <= set(toy.__all__)
    for name in toy.__all__:
        assert hasattr(toy, name), name


def test_toy_imports_ebmcompose_only():
    """Layering: toy never imports samplers or benchmarks; diffusers only lazily, inside a function
    (the scene UNet of toy.scene_nets), so that ``import toy`` stays light."""
    for path in TOY_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text())
        lazy = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                banned = {"samplers", "benchmarks"} | (set() if id(node) in lazy else {"diffusers"})
                assert top not in banned, f"{path.name} imports {m}"


def test_import_is_light():
    code = "import sys, toy; print('diffusers' in sys.modules, 'samplers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(TOY_DIR.parent))
    assert out.stdout.split() == ["False", "False"]
