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

    root = pathlib.Path(ec.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        # ebmcompose/cli is the top floor under the ebmcompose name: it imports samplers and toy
        # inside functions only (tests/benchmarks/test_cli_safety.py checks that with the AST).
        top_floor = (root / "cli") in path.parents
        for bad in ("import samplers", "from samplers", "import toy", "from toy", "import benchmarks", "from benchmarks"):
            if top_floor and "benchmarks" not in bad:
                continue
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


def test_names_stay_importable_from_where_they_were():
    """The split of energy.py and metrics.py keeps every public name at its old address."""
    import ebmcompose.energy as old
    from ebmcompose import leaves, metrics, nodes, operators
    from ebmcompose.metrics import exact2d, two_sample

    for name, home in (
        ("EnergyFunction", leaves), ("ScoreFunction", leaves), ("as_energy", leaves),
        ("Sum", nodes), ("Mixture", nodes),
        ("conjunction", operators), ("negation", operators), ("mixture", operators),
    ):
        assert getattr(old, name) is getattr(home, name) is getattr(ec, name), name
    for name in ("Energy", "Evaluation", "LeafGroup", "ScoreOnlyError", "ENERGY", "GRAD", "TimeLike"):
        assert hasattr(old, name), name
    for name in ("mmd", "energy_distance", "sliced_wasserstein", "median_distance"):
        assert getattr(metrics, name) is getattr(two_sample, name), name
    for name in ("histogram_tv", "histogram_tv_baseline", "cell_probabilities", "HistogramTV", "TVBaseline",
                 "mode_weight_error", "ModeWeightError", "mean_log_likelihood"):
        assert getattr(metrics, name) is getattr(exact2d, name), name
    assert set(metrics.__all__) <= set(dir(metrics))
