"""The image-speed benchmark's quick run, and the memory-format choice it measures (same outputs)."""

import copy
import json

import torch

from benchmarks import scene_speed


def test_loaded_scene_nets_are_channels_last_and_compute_the_same_as_contiguous():
    from toy import pretrained

    sm = pretrained.scene_model("position", "epsilon")
    net = sm.model.net
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = copy.deepcopy(net).to(memory_format=torch.contiguous_format)
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(3, 3, 32, 32, generator=g), torch.rand(3, generator=g), torch.rand(3, 3, generator=g)
    with torch.no_grad():
        assert torch.allclose(net(x, t, c), nchw(x, t, c), atol=1e-4)


def test_quick_run_writes_both_baselines(tmp_path):
    assert scene_speed.main(["--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "scene_speed.json").read_text())
    ms = r["forward"]["ms_per_image"]
    assert set(ms) == {"contiguous", "channels_last"} and all(v > 0 for v in ms.values())
    assert abs(r["forward"]["speedup"] - ms["contiguous"] / ms["channels_last"]) < 1e-9
    cli = r["cli"]["default"]
    assert cli["wall_s"] >= cli["sampling_s"] > 0 and len(cli["accuracy"]) == 1
    md = (tmp_path / "scene_speed.md").read_text()
    assert "Quick mode" in md and "channels-last (used)" in md
