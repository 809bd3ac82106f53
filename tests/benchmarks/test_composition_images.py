"""The image-composition study: its quick run produces every cell and the three files; findings follow the numbers."""

import json
import math

import pytest
import torch

from benchmarks import composition_images as ci


def _row(task, model, param, sampler, p, n=100, budget=10):
    return {"task": task, "k": 1, "model": model, "parameterisation": param, "sampler": sampler, "n": n, "nfe_budget": budget,
            "accuracy": p, "accuracy_se": math.sqrt(p * (1 - p) / n), "strict": None, "strict_se": None,
            "nfe": 10, "seconds_per_image": 0.1}


def test_findings_call_differences_significant_only_beyond_two_standard_errors():
    rows = [
        _row("positions K=1", "composed", "energy", "ddpm", 0.50),
        _row("positions K=1", "composed", "energy", "pc-mala", 0.80),
        _row("positions K=1", "composed", "energy", "pc-ula", 0.55),
        _row("positions K=1", "joint", "epsilon", "ddim", 0.70),
    ]
    found = ci.findings({"rows": rows, "settings": {"ks": [1]}})
    text = "\n".join(found)
    assert "K = 1, NFE 10: best composed (energy, pc-mala) vs best joint (ddim): 0.800 vs 0.700" in text
    mala = next(f for f in found if "pc-mala vs ddpm" in f)
    ula = next(f for f in found if "pc-ula vs ddpm" in f)
    assert "higher (beyond 2 SE)" in mala and "not significantly different" in ula


def test_quick_run_writes_every_cell(tmp_path):
    assert ci.main(["--quick", "--n", "1", "--nfe", "2", "--ks", "1", "--samplers", "ddim", "pc-mala", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "composition_images.json").read_text())
    rows = result["rows"]
    tasks = {r["task"] for r in rows}
    assert {"positions K=1", "NOT", "NOT (without the NOT)"} <= tasks and sum(t.startswith("attributes") for t in tasks) == len(ci.ATTRIBUTE_CELLS)
    assert {r["model"] for r in rows if r["task"] == "positions K=1"} == {"composed", "joint"}
    assert not any(r["sampler"] == "pc-mala" and r["parameterisation"] == "epsilon" for r in rows)  # needs energies
    for r in rows:
        p = r["accuracy"]
        assert abs(r["accuracy_se"] - math.sqrt(p * (1 - p) / r["n"])) < 1e-3 and r["nfe"] <= 2
    md = (tmp_path / "composition_images.md").read_text()
    assert "Quick mode" in md and "## Findings" in md
    assert (tmp_path / "composition_images.png").read_bytes()[:4] == b"\x89PNG"


def test_subsets_restrict_the_cells_and_variants_get_their_own_rows():
    from toy.image_train import config_for
    from toy.scene_model import SceneModel
    from toy.scene_nets import SceneUNet

    net = SceneUNet(**config_for("position", "epsilon", "quick", condition_map=False).net_config()).eval().requires_grad_(False)
    result = ci.run(quick=True, n=1, nfe=2, ks=[1, 2], samplers=["ddim"], energy_ks=[2], energy_samplers=["ddpm", "pc-mala"],
                    tasks=["positions"], variants={"embedding": SceneModel.from_net(net)}, log=lambda *a: None)
    rows = result["rows"]
    assert {r["task"] for r in rows} == {"positions K=1", "positions K=2"}
    energy = {(r["k"], r["sampler"]) for r in rows if r["parameterisation"] == "energy"}
    assert energy == {(2, "ddpm"), (2, "pc-mala")}
    assert {r["k"] for r in rows if r["model"] == "composed (embedding)"} == {1, 2}
    assert {r["sampler"] for r in rows if r["parameterisation"] == "epsilon"} == {"ddim"}
    not_rows = [
        {**_row("NOT", "composed", "epsilon", "ddim", 0.5), "object_at_p": 0.9, "object_at_q": 0.1},
        {**_row("NOT (without the NOT)", "composed", "epsilon", "ddim", 0.5), "object_at_p": 0.9, "object_at_q": 0.4},
    ]
    text = "\n".join(ci.findings({"rows": not_rows, "settings": {"ks": []}}))
    assert "at the negated q in 0.100 (without the NOT 0.400, ratio 0.25)" in text


def test_findings_compare_only_cells_of_the_same_budget():
    rows = [
        _row("positions K=1", "composed", "energy", "ddpm", 0.50, budget=50),
        _row("positions K=1", "composed", "energy", "pc-mala", 0.90, budget=100),
        _row("positions K=1", "joint", "epsilon", "ddim", 0.70, budget=100),
    ]
    found = ci.findings({"rows": rows, "settings": {}})
    assert not any("pc-mala vs ddpm" in f for f in found)  # different budgets: no comparison
    assert any(f.startswith("K = 1, NFE 100: best composed (energy, pc-mala)") for f in found)
    assert not any("NFE 50: best composed" in f for f in found)  # no joint cell at 50


def test_merge_keeps_every_part_and_later_rows_replace_earlier_ones(tmp_path):
    a = {"settings": {"quick": False, "n": 200, "nfe_budget": 50, "weight": 3.0, "radius": 0.1, "threads": 1, "models": "m"},
         "rows": [_row("positions K=1", "composed", "epsilon", "ddim", 0.5, budget=None), {**_row("NOT", "composed", "epsilon", "ddim", 0.9, budget=None), "object_at_p": 0.9, "object_at_q": 0.0, "object_at_q_se": 0.0}],
         "missing": ["joint:epsilon", "position:energy"]}
    b = {"settings": {**a["settings"], "nfe_budget": 50, "argv": ["--models", "position:energy"]},
         "rows": [_row("positions K=1", "composed", "epsilon", "ddim", 0.75, budget=50), {**_row("positions K=2", "composed", "energy", "ddpm", 0.25, budget=50), "k": 2}],
         "missing": ["joint:epsilon"]}
    merged = ci.merge([a, b])
    acc = {(r["task"], r["parameterisation"]): r["accuracy"] for r in merged["rows"]}
    assert acc == {("positions K=1", "epsilon"): 0.75, ("NOT", "epsilon"): 0.9, ("positions K=2", "energy"): 0.25}
    assert merged["missing"] == ["joint:epsilon"] and merged["settings"]["ks"] == [1, 2]
    md = ci.markdown(merged)
    assert "python -m benchmarks.composition_images --models position:energy" in md and "--merge" in md
    paths = []
    for i, part in enumerate((a, b)):
        paths.append(tmp_path / f"p{i}.json")
        paths[-1].write_text(__import__("json").dumps(part))
    assert ci.main(["--merge", *map(str, paths), "--out", str(tmp_path / "out")]) == 0
    assert len(json.loads((tmp_path / "out" / "composition_images.json").read_text())["rows"]) == 3


def test_models_restricts_the_checkpoints_and_rejects_unknown_names():
    result = ci.run(quick=True, n=1, nfe=2, ks=[1], samplers=["ddim"], tasks=["positions"], models=["joint:epsilon"], log=lambda *a: None)
    assert {r["model"] for r in result["rows"]} == {"joint"}
    import pytest

    import ebmcompose as ec
    with pytest.raises(ec.InputError, match="unknown models"):
        ci.load_models(True, only=["position:eps"])


def test_findings_compare_only_cells_of_the_same_guidance_scale():
    rows = [{**_row("positions K=1", "composed", "energy", "ddpm", 0.60), "weight": 3.0},
            {**_row("positions K=1", "composed", "energy", "pc-mala", 0.90), "weight": 7.0},
            {**_row("positions K=1", "composed", "energy", "ddpm", 0.85), "weight": 7.0}]
    found = [f for f in ci.findings({"rows": rows, "settings": {}}) if "pc-mala vs ddpm" in f]
    assert found == ["positions K=1, energy: pc-mala vs ddpm at NFE 10, α = 7: 0.900 vs 0.850 (+0.050 ± 0.047): not significantly different."]


def test_a_multi_hot_attribute_model_adds_the_joint_baseline_to_the_and_cells(monkeypatch):
    from toy.image_train import config_for
    from toy.scene_model import SceneModel
    from toy.scene_nets import SceneUNet

    net = SceneUNet(**config_for("attribute", "epsilon", "quick").net_config()).eval().requires_grad_(False)
    one = SceneModel.from_net(net)
    multi = SceneModel(one.model, "attribute", one.resolution, {"train": {"attribute_labels": "multi"}})
    for sm, joint_cells in ((one, set()), (multi, {"attributes: colour AND shape", "attributes: colour AND shape AND size"})):
        monkeypatch.setattr(ci, "load_models", lambda *a, sm=sm: {"attribute:epsilon": sm})
        rows = ci.run(quick=True, n=2, nfe=2, samplers=["ddim"], tasks=["attributes"], log=lambda *a: None)["rows"]
        assert {r["task"] for r in rows if r["model"] == "joint"} == joint_cells
        assert len([r for r in rows if r["model"] == "composed"]) == len(ci.ATTRIBUTE_CELLS)


def _cells(path):
    rows = json.loads((path / "composition_images.json").read_text())["rows"]
    return {(r["task"], r["model"], r["parameterisation"], r["sampler"]): (r["images_sha1"], r["accuracy"], r["strict"], r["nfe"])
            for r in rows}


def test_two_torchrun_processes_give_the_cells_of_one(tmp_path):
    """Under torchrun the study draws each cell's images in blocks (each block the energy of its own
    images' requests): the same cells as one process with the same --block; without --block it refuses."""
    import _distributed_worker as worker

    argv = ["--quick", "--n", "5", "--nfe", "3", "--ks", "2", "--samplers", "ddpm", "--tasks", "positions", "not",
            "--models", "position:epsilon", "--block", "2"]
    assert ci.main([*argv, "--out", str(tmp_path / "one")]) == 0
    proc = worker.torchrun(["-m", "--", "benchmarks.composition_images", *argv, "--out", tmp_path / "two"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    one, two = _cells(tmp_path / "one"), _cells(tmp_path / "two")
    assert len(one) == 3 and one == two  # K = 2, NOT, NOT without the NOT
    settings = json.loads((tmp_path / "two" / "composition_images.json").read_text())["settings"]
    assert settings["processes"] == 2 and settings["block"] == 2


def test_blocks_give_each_block_the_energy_of_its_own_requests(monkeypatch):
    """Drawn in blocks, block b's energy holds the conditions of images [lo, hi) only."""
    seen = []
    real = ci._builder

    def spy(sm, keep, negs=(), weight=3.0):
        build = real(sm, keep, negs, weight)

        def traced(lo, hi):
            seen.append((lo, hi, keep[0][lo:hi].clone(), keep[0]))
            return build(lo, hi)
        return traced

    monkeypatch.setattr(ci, "_builder", spy)
    ci.run(quick=True, n=5, nfe=2, ks=[1], samplers=["ddim"], tasks=["positions"], models=["position:epsilon"], block=2,
           log=lambda *a: None)
    assert [(lo, hi) for lo, hi, *_ in seen] == [(0, 2), (2, 4), (4, 5)]
    for lo, hi, rows, full in seen:
        assert torch.equal(rows, full[lo:hi]) and rows.shape[0] == hi - lo


def test_torchrun_without_block_is_refused(monkeypatch, capsys):
    import pytest

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        ci.main(["--quick", "--out", "unused"])
    assert exc.value.code == 2 and "--block" in capsys.readouterr().err


def test_per_image_smc_gives_each_image_its_own_population():
    """PerImageSMC: image i's m particles are one population on rows [i m, (i + 1) m) of the energy (its
    request repeated m times); here image i's target is an exact diffused N((3 i, 3 i), 0.1² I)."""
    import ebmcompose as ec

    schedule, n = ec.VPSchedule.cosine(), 3
    sampler = ci.PerImageSMC(schedule, 30, "energy", m=8)
    centres = (3.0 * torch.arange(n, dtype=torch.float32)).repeat_interleave(sampler.m)[:, None]

    def energy_fn(x, t):
        ab = schedule.alpha_bar(t)[:, None]
        var = ab * 0.01 + (1 - ab)
        return ((x - ab.sqrt() * centres).square() / (2 * var)).sum(1)

    energy = ec.EnergyFunction(energy_fn, time_dependent=True)
    res = sampler.sample(energy, shape=(n, 2), generator=torch.Generator().manual_seed(0))
    assert res.samples.shape == (n, 2) and res.info.populations == n and res.info.log_z_populations.shape == (n,)
    target = (3.0 * torch.arange(n, dtype=torch.float32))[:, None].expand(n, 2)
    assert (res.samples - target).abs().max() < 0.5, res.samples


def test_the_smc_cells_run_on_both_parameterisations():
    import ebmcompose as ec

    rows = ci.run(quick=True, n=2, nfe=3, ks=[1], samplers=["smc", "smc-fkc"], tasks=["positions"],
                  models=["position:epsilon", "position:energy"], log=lambda *a: None)["rows"]
    assert {(r["parameterisation"], r["sampler"]) for r in rows} == {(p, s) for p in ("epsilon", "energy") for s in ("smc", "smc-fkc")}
    assert "weights='fkc'" in repr(ci.PerImageSMC(ec.VPSchedule.cosine(), 5, "energy", weights="fkc").smc)
    assert "weights='energy'" in repr(ci.PerImageSMC(ec.VPSchedule.cosine(), 5, "energy").smc)
    assert all(r["nfe"] == 3 and r["n"] == 2 and 0 < r["smc_mean_ess_fraction"] <= 1 for r in rows)


def test_attribute_cells_request_the_kinds_they_name():
    from toy import scenes

    kind = lambda a: "colour" if a in scenes.COLORS else "shape" if a in scenes.SHAPES else "size"
    want = {"colour": (["colour"], []), "colour AND shape": (["colour", "shape"], []),
            "colour AND shape AND size": (["colour", "shape", "size"], []), "colour AND NOT shape": (["colour"], ["shape"]),
            "shape": (["shape"], []), "size": (["size"], []), "colour AND shape AND NOT size": (["colour", "shape"], ["size"])}
    assert set(ci.ATTRIBUTE_CELLS) == set(want)
    for cell in ci.ATTRIBUTE_CELLS:
        require, forbid = ci.attribute_requests(cell, 40, torch.Generator().manual_seed(1))
        assert all([kind(a) for a in r] == want[cell][0] for r in require), cell
        assert all([kind(a) for a in f] == want[cell][1] for f in forbid), cell
        assert len({tuple(r) for r in require}) > 1  # drawn per image
    with pytest.raises(ValueError, match="unknown attribute cell"):
        ci.attribute_requests("colour OR shape", 4, torch.Generator())
