"""Package-level contracts: light imports, layering, public names."""

import subprocess
import sys

import ebmcompose as ec


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_ebmcompose_is_light():
    out = _run(
        "import sys, ebmcompose; "
        "print(sorted(m for m in ('diffusers', 'matplotlib', 'scipy', 'samplers', 'toy', 'safetensors') if m in sys.modules))"
    )
    assert out == "[]", f"import ebmcompose pulled in {out}"


def test_core_never_imports_samplers_or_toy():
    import pathlib

    import ast

    root = pathlib.Path(ec.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.relative_to(root).parts[0] == "cli":
            # the CLI (the top floor under the ebmcompose name) may import them lazily, inside functions
            tree = ast.parse(text)
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    offenders += [f"{path.name}: {m}" for m in names if m.split(".")[0] in ("samplers", "toy", "benchmarks")]
            continue
        for bad in ("import samplers", "from samplers", "import toy", "from toy", "import benchmarks", "from benchmarks"):
            if bad in text:
                offenders.append(f"{path.name}: {bad}")
    assert offenders == [], offenders


def test_samplers_import_ebmcompose_only():
    import pathlib

    import samplers

    root = pathlib.Path(samplers.__file__).parent
    offenders = [
        p.name for p in root.rglob("*.py")
        if any(b in p.read_text() for b in ("import toy", "from toy", "import benchmarks", "from benchmarks"))
    ]
    assert offenders == [], offenders


def test_public_names_of_the_design_contract_exist():
    for name in (
        "Energy", "EnergyFunction", "ScoreFunction", "conjunction", "negation", "VPSchedule",
        "EpsilonModel", "parse", "metrics", "DiffusionEnergy", "mixture",
    ):
        assert hasattr(ec, name), name
    for name in ("mmd", "energy_distance", "sliced_wasserstein", "histogram_tv"):
        assert callable(getattr(ec.metrics, name)), name
    import samplers
    import toy

    for name in ("ULA", "MALA", "HMC", "AnnealedLangevin", "ReverseDiffusion", "PredictorCorrector"):
        assert getattr(samplers, name) is not None, name
    for name in ("GaussianMixture", "gmm_product", "reference_sample"):
        assert callable(getattr(toy, name)), name
    assert set(ec.__all__) <= set(dir(ec))
