"""toy.train (DSM in both parameterisations), checkpoints of trained models, shipped checkpoints."""

import json

import pytest
import torch

import ebmcompose as ec
import toy
from ebmcompose import checkpoint as ckpt
from ebmcompose.consistency import curl_2d
from toy import pretrained
from toy.train import (
    load_trained,
    save_trained,
    schedule_config,
    schedule_from_config,
    score_relative_error,
    train,
)

SMALL = dict(hidden=32, n_blocks=2, batch_size=256, lr=5e-3)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets train faster on one thread (and the machine is shared); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gaussian(mean=(1.0, -0.5), std=0.5):
    return toy.GaussianMixture(torch.tensor([mean], dtype=torch.float64), stds=[std])


@pytest.fixture(scope="module")
def gaussian_runs():
    """One short run per parameterisation on a 2-D Gaussian N((1, -0.5), 0.5² I)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {k: train(k, _gaussian(), n_iters=400, seed=0, **SMALL) for k in ("epsilon", "energy")}
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize("kind", ["epsilon", "energy"])
def test_dsm_loss_decreases(gaussian_runs, kind):
    losses = gaussian_runs[kind].losses
    assert losses.shape == (400,) and torch.isfinite(losses).all()
    # ε̂ ≈ 0 at init gives loss ≈ 1; the optimum for N(m, s²) is E_t[α²s²/(α²s² + σ²)] ≈ 0.33
    first, last = float(losses[:5].mean()), float(losses[-50:].mean())
    assert first > 0.8 and last < 0.4, (first, last)


@pytest.mark.parametrize("kind", ["epsilon", "energy"])
def test_learned_score_matches_exact_gaussian_score(gaussian_runs, kind):
    # Threshold 0.15: an untrained net (score ≈ 0) has relative error 1, the best constant
    # field about 0.8 at t = 0.3; 400 steps of this small net reach ≈ 0.03–0.06, so 0.15
    # leaves room for platform differences but fails for anything that has not learned the
    # linear field -(x - α m) / (α² s² + σ²).
    tr = gaussian_runs[kind]
    gm = _gaussian()
    g = torch.Generator().manual_seed(5)
    x0 = gm.sample(2000, generator=g)
    for t in (0.3, 0.7):
        err = score_relative_error(tr.model, gm.diffused(tr.schedule), x0, t, tr.schedule, generator=g)
        assert err < 0.15, (kind, t, err)


def test_energy_model_is_conservative_epsilon_model_is_not(gaussian_runs):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    curls = {}
    for kind, tr in gaussian_runs.items():
        m = load_like_double(tr)
        curls[kind] = curl_2d(m, x, 0.4, h=1e-4).abs().max().item()
    assert curls["energy"] < 1e-6, curls  # an autograd gradient: zero up to FD error
    assert curls["epsilon"] > 100 * curls["energy"], curls  # the check can tell the difference
    assert gaussian_runs["energy"].model.has_energy and not gaussian_runs["epsilon"].model.has_energy


def load_like_double(tr):
    """The trained model in float64 (for finite differences), built like load_trained does."""
    import copy

    from toy.train import build_model

    net = copy.deepcopy(tr.net).double()
    return build_model(tr.config["parameterisation"], net, tr.schedule)


def test_conditional_training_learns_each_concept_and_the_union():
    left = _gaussian((-2.0, 0.0), 0.5)
    right = _gaussian((2.0, 0.0), 0.5)
    tr = train("epsilon", {"left": left, "right": right}, n_iters=400, label_dropout=0.2, seed=1, **SMALL)
    assert tr.concepts == ("left", "right") and tr.net.null_label == 2
    comps = tr.components()
    g = torch.Generator().manual_seed(3)
    union = toy.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64), stds=[0.5, 0.5])
    for name, exact in (("left", left), ("right", right)):
        x0 = exact.sample(1000, generator=g)
        err = score_relative_error(comps[name], exact.diffused(tr.schedule), x0, 0.5, tr.schedule, generator=g)
        # the other concept's score would be off by ~the distance between the modes
        wrong = score_relative_error(
            comps["right" if name == "left" else "left"], exact.diffused(tr.schedule), x0, 0.5, tr.schedule, generator=g
        )
        assert err < 0.2 and wrong > 1.0, (name, err, wrong)
    x0 = union.sample(1000, generator=g)
    err = score_relative_error(tr.model.unconditional(), union.diffused(tr.schedule), x0, 0.5, tr.schedule, generator=g)
    assert err < 0.3, err


def test_seed_determinism():
    data = {"a": _gaussian((0.0, 1.0)), "b": _gaussian((0.0, -1.0))}
    a = train("energy", data, n_iters=15, seed=7, **SMALL)
    b = train("energy", data, n_iters=15, seed=7, **SMALL)
    c = train("energy", data, n_iters=15, seed=8, **SMALL)
    assert torch.equal(a.losses, b.losses)
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.losses, c.losses)


def test_data_sources_and_bad_arguments():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(500, 2, generator=g)
    for data in (table, "moons", lambda n, gen: torch.randn(n, 2, generator=gen)):
        tr = train("epsilon", data, n_iters=3, **SMALL)
        assert tr.concepts == () and tr.net.n_classes is None
        with pytest.raises(ValueError, match="unconditional"):
            tr.components()
    with pytest.raises(ValueError, match="model_kind"):
        train("score", table, n_iters=3)
    with pytest.raises(ValueError, match="t_min"):
        train("epsilon", table, n_iters=3, t_min=0.0)
    with pytest.raises(ValueError, match="cannot store schedule"):
        train("epsilon", table, n_iters=3, schedule=ec.VPSchedule.from_diffusers(torch.linspace(0.999, 0.01, 50)))


def test_schedule_config_roundtrip():
    for s in (ec.VPSchedule.cosine(), ec.VPSchedule.cosine(s=0.01), ec.VPSchedule.linear(0.1, 20.0)):
        s2 = schedule_from_config(json.loads(json.dumps(schedule_config(s))))
        grid = torch.linspace(0, 1, 101, dtype=torch.float64)
        assert torch.equal(s.alpha_bar(grid), s2.alpha_bar(grid))


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["epsilon", "energy"])
def test_save_load_bit_exact(tmp_path, kind):
    data = {"a": _gaussian((0.0, 1.0)), "b": _gaussian((0.0, -1.0))}
    tr = train(kind, data, n_iters=20, seed=3, name="ab", **SMALL)
    st = save_trained(tmp_path / "ab", tr, metrics={"note": "test"})
    assert st == tmp_path / "ab.safetensors" and [p.name for p in tmp_path.iterdir()] == ["ab.safetensors"]
    model, net, config = load_trained(tmp_path / "ab")
    assert type(model) is type(tr.model) and config["concepts"] == ["a", "b"]
    assert config["metrics"] == {"note": "test"} and config["train"]["n_iters"] == 20
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(50, generator=torch.Generator().manual_seed(1))
    for leaf_a, leaf_b in ((tr.model.condition(0), model.condition(0)), (tr.model.unconditional(), model.unconditional())):
        assert torch.equal(leaf_a.grad(x, t), leaf_b.grad(x, t))
    assert torch.equal(tr.net(x, t, torch.ones(50, dtype=torch.long)), net(x, t, torch.ones(50, dtype=torch.long)))
    if kind == "energy":
        assert torch.equal(tr.model.condition(1).energy(x, t), model.condition(1).energy(x, t))
    assert st.stat().st_size < 800_000


def _edit_config(path, edit):
    """Rewrite the config stored in a one-file checkpoint (as a hand-edited file would be)."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(json.loads(blob[8 : 8 + n])["__metadata__"][ckpt.METADATA_KEY])
    edit(header["config"])
    path.write_bytes(st_save(st_load(blob), metadata={ckpt.METADATA_KEY: json.dumps(header)}))


def test_checkpoint_errors(tmp_path):
    tr = train("epsilon", {"a": _gaussian()}, n_iters=2, **SMALL)
    st = save_trained(tmp_path / "m", tr)
    # config says another width than the tensors hold
    _edit_config(st, lambda c: c["net"].update(hidden=64))
    with pytest.raises(ckpt.CheckpointError, match=r"does not match the model built from its config: time_mlp\.0\.weight: model expects shape \(64, 32\) float32, checkpoint has shape \(32, 32\)"):
        load_trained(tmp_path / "m")
    # unknown kind
    _edit_config(st, lambda c: (c["net"].update(hidden=32), c.update(kind="toy.Other")))
    with pytest.raises(ckpt.CheckpointError, match="unknown checkpoint kind 'toy.Other'"):
        load_trained(tmp_path / "m")
    # a config that cannot build the net
    _edit_config(st, lambda c: (c.update(kind="toy.ResMLP/epsilon"), c["net"].update(hidden="wide")))
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint config of .*m\.safetensors cannot rebuild the model"):
        load_trained(tmp_path / "m")
    # truncated tensors
    save_trained(tmp_path / "m", tr)
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint tensors"):
        load_trained(tmp_path / "m")


def test_missing_shipped_checkpoint_says_how_to_regenerate(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"product_energy\.safetensors.*python -m benchmarks\.train_toy --out toy/checkpoints --tasks product"):
        pretrained.load("product", "energy")
    with pytest.raises(ValueError, match="unknown task"):
        pretrained.checkpoint_path("nope")
    with pytest.raises(ValueError, match="parameterisation"):
        pretrained.checkpoint_path("product", "score")


# ---------------------------------------------------------------------------- shipped checkpoints
# SHA-256 over (key, dtype, shape, bytes) of every tensor, sorted by key, of the version-1 files
# (.safetensors + .json) the shipped one-file checkpoints were converted from.
V1_WEIGHTS_SHA256 = {
    "mixture_energy": "c814d745b364ba6619bed18db7b866a9d06722f68c5b574829631dd55fd3c244",
    "mixture_eps": "656a353fb30ce3fd4cf213d3e54585e306309ffc057dcb54db09d4898d60644e",
    "negation_energy": "251a7b332f17ad041147594f59af6ce613c93fbb019c7a196c1059ac775e95e0",
    "negation_eps": "bfcb529a2ac3af16d7e133b301d292353ea61add2052c250cff3294d14917d11",
    "product_energy": "7f0ea627973ed894a4a9d437282a60c4cef05b0843a2687115074a165b0e524c",
    "product_eps": "8f45793de0a0767ba6830987d2b6aab63990d4af7b7d0e5634e9c591cbb35790",
}


def _weights_sha256(state):
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("param", ["epsilon", "energy"])
@pytest.mark.parametrize("task_name", ["product", "mixture", "negation"])
def test_shipped_checkpoints_are_one_file_with_the_version_1_weights(task_name, param):
    stem = pretrained.checkpoint_path(task_name, param)
    assert not stem.with_name(stem.name + ".json").exists()  # one file, config inside
    state, config = ckpt.load_state(stem)
    assert _weights_sha256(state) == V1_WEIGHTS_SHA256[stem.name]
    _, net, _ = load_trained(stem)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]) and v.dtype == state[k].dtype
    assert config["kind"] == f"toy.ResMLP/{param}" and config["concepts"] == list(toy.tasks.get(task_name).components)


@pytest.mark.parametrize("param", ["epsilon", "energy"])
@pytest.mark.parametrize("task_name", ["product", "mixture", "negation"])
def test_shipped_checkpoints_match_exact_component_scores(task_name, param):
    task = toy.tasks.get(task_name)
    model, info = pretrained.load(task_name, param)
    assert info["concepts"] == tuple(task.components) and info["null_label"] == len(task.components)
    assert info["path"].with_suffix(".safetensors").stat().st_size < 800_000
    comps = pretrained.components(task_name, param)
    schedule = info["schedule"]
    for k, (name, exact) in enumerate(task.components.items()):
        g = torch.Generator().manual_seed(100 + k)
        x0 = exact.sample(1000, generator=g)
        for t, tol in ((0.1, 0.3), (0.5, 0.2)):
            err = score_relative_error(comps[name], exact.diffused(schedule), x0, t, schedule, generator=g)
            assert err < tol, (task_name, param, name, t, err)
    # the learned composition evaluates (one forward for all leaves of the one model) ...
    x = task.sample_exact(64, generator=torch.Generator().manual_seed(0)).float()
    if task_name == "mixture" and param == "epsilon":
        # ... except a mixture of score-only leaves, which needs energies (Du et al.)
        with pytest.raises(ec.ScoreOnlyError, match="mixture"):
            task.compose(comps).grad(x, 0.3)
        return
    ev = task.compose(comps).evaluate(x, 0.3, energy=param == "energy", grad=True)
    assert torch.isfinite(ev.grad).all() and ev.nfe == 1


def test_pretrained_load_reads_another_folder_and_names_the_fix_when_missing(tmp_path):
    import shutil

    from ebmcompose.checkpoint import CheckpointNotFoundError
    from toy import pretrained

    src = pretrained.checkpoint_path("mixture", "energy")
    shutil.copy(str(src) + ".safetensors", tmp_path / "mixture_energy.safetensors")
    model, info = pretrained.load("mixture", "energy", checkpoint_dir=tmp_path)
    shipped, _ = pretrained.load("mixture", "energy")
    x = torch.randn(5, 2)
    torch.testing.assert_close(model.grad(x, 0.3), shipped.grad(x, 0.3), rtol=0, atol=0)
    assert info["path"] == tmp_path / "mixture_energy"
    with pytest.raises(CheckpointNotFoundError, match=f"--out {tmp_path}"):
        pretrained.load("product", "energy", checkpoint_dir=tmp_path)
