"""toy.scenes evaluator: agreement with the renderer's labels (clean and degraded) and the scores."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ebmcompose.errors import InputError
from toy import scenes

RES = (32, 64)
A, B, C = (0.2, 0.65), (0.75, 0.3), (0.7, 0.8)  # not symmetric: (y, x) of A is far from every object


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make(*objs, res=32):
    """Render one scene of (x, y, shape, color, size) tuples: Tensor (1, 3, res, res)."""
    return scenes.render([scenes.Scene(tuple(scenes.SceneObject(*o) for o in objs))], res)


def blur(images, sigma):
    """Gaussian blur of std ``sigma`` pixels, edges replicated."""
    half = max(1, math.ceil(3 * sigma))
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(images.reshape(-1, 1, *images.shape[-2:]), (half,) * 4, mode="replicate")
    x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return x.view_as(images)


def agreement(scene_list, detections):
    """Fractions of images with the right count, and of true objects whose one-to-one matched
    detection (nearest by the assignment) is within 0.02 / has the right colour, shape, size."""
    hits = dict(count=0, position=0, color=0, shape=0, size=0)
    n_obj = 0
    for s, dets in zip(scene_list, detections):
        hits["count"] += len(dets) == len(s)
        n_obj += len(s)
        if not dets:
            continue
        truth = np.array(s.positions)
        found = np.array([(d.x, d.y) for d in dets])
        dist = np.linalg.norm(truth[:, None] - found[None], axis=-1)
        for i, j in zip(*linear_sum_assignment(dist)):
            o, d = s.objects[i], dets[j]
            hits["position"] += dist[i, j] < 0.02
            hits["color"] += o.color == d.color
            hits["shape"] += o.shape == d.shape
            hits["size"] += o.size == d.size
    return {k: v / (len(scene_list) if k == "count" else n_obj) for k, v in hits.items()}


@pytest.fixture(scope="module")
def truth():
    return scenes.random_scenes(300, gen(11))


@pytest.mark.parametrize("res", RES)
def test_detector_agrees_with_renderer(truth, res):
    images = scenes.render(truth, res)
    dets = scenes.detect(images)
    got = agreement(truth, dets)
    assert min(got.values()) >= 0.99, got
    worst = max(math.hypot(d.x - o.x, d.y - o.y) for s, ds in zip(truth, dets) for o in s.objects
                for d in [min(ds, key=lambda d: math.hypot(d.x - o.x, d.y - o.y))])
    assert worst < 0.01
    # areas are the shapes' areas (all shapes of a size have that of its disc)
    for s, ds in zip(truth[:50], dets[:50]):
        assert sorted(d.area for d in ds) == pytest.approx(
            sorted(math.pi * o.radius**2 for o in s.objects), rel=0.05)


def test_transposed_images_fail(truth):
    """The agreement measure can fail: a detector that swapped x and y would be caught."""
    images = scenes.render(truth[:100], 32).transpose(-1, -2)
    got = agreement(truth[:100], scenes.detect(images))
    assert got["position"] < 0.2


@pytest.mark.parametrize("res, degrade", [(32, "noise"), (32, "blur"), (32, "both"), (64, "both")])
def test_detector_robust(truth, res, degrade):
    """Gaussian pixel noise (σ = 0.05) and a slight blur (σ = 0.5 pixel at 32, scaled)."""
    images = scenes.render(truth[:200], res)
    if degrade in ("blur", "both"):
        images = blur(images, 0.5 * res / 32)
    if degrade in ("noise", "both"):
        images = (images + 0.05 * torch.randn(images.shape, generator=gen(res))).clamp(0, 1)
    got = agreement(truth[:200], scenes.detect(images))
    assert min(got.values()) >= 0.95, got


def test_detector_off_colours():
    """Objects faded 30% towards the background with a per-image colour cast keep colour, shape and size."""
    sl = scenes.random_scenes(200, gen(12))
    images = scenes.render(sl, 32)
    bg = torch.tensor(scenes.BACKGROUND)[:, None, None]
    cast = 0.06 * (2 * torch.rand(200, 3, 1, 1, generator=gen(13)) - 1)
    images = (bg + 0.7 * (images - bg) + cast).clamp(0, 1)
    got = agreement(sl, scenes.detect(images))
    assert min(got.values()) >= 0.95, got


def test_background_and_specks_are_not_objects():
    empty = scenes.render([scenes.Scene(())] * 4, 32)
    noisy = (empty + 0.05 * torch.randn(empty.shape, generator=gen(1))).clamp(0, 1)
    assert scenes.detect(noisy) == [[]] * 4
    speck = empty[:1].clone()
    speck[0, :, 10, 10:12] = torch.tensor(scenes.COLORS["red"])[:, None]  # 2 pixels
    assert scenes.detect(speck) == [[]]
    assert scenes.attribute_accuracy(speck, require=["red"]).tolist() == [False]


def test_partial_object_still_found():
    img = make((*A, "square", "green", "large"))
    bg = torch.tensor(scenes.BACKGROUND)
    row, col = int(A[1] * 32), int(A[0] * 32)
    img[0, :, row - 4:row, col - 4:col] = bg[:, None, None]  # a corner bitten off
    (det,) = scenes.detect(img)[0]
    assert det.color == "green" and math.hypot(det.x - A[0], det.y - A[1]) < 0.05


# ---------------------------------------------------------------- scores on constructed cases


@pytest.fixture(scope="module")
def two():
    """One image with objects at A and B, and the same image empty."""
    return torch.cat([make((*A, "circle", "red", "large"), (*B, "triangle", "blue", "small")),
                      scenes.render([scenes.Scene(())], 32)])


def test_position_accuracy(two):
    assert scenes.position_accuracy(two, at=[A]).tolist() == [True, False]
    assert scenes.position_accuracy(two, at=[A, B]).tolist() == [True, False]
    assert scenes.position_accuracy(two, at=A).tolist() == [True, False]  # one bare pair
    assert scenes.position_accuracy(two, at=[A[::-1]]).tolist() == [False, False]  # (y, x) is not (x, y)
    assert scenes.position_accuracy(two, at=[A, C]).tolist() == [False, False]
    assert scenes.position_accuracy(two, at=[(A[0] + 0.08, A[1])]).tolist() == [True, False]
    assert scenes.position_accuracy(two, at=[(A[0] + 0.08, A[1])], radius=0.05).tolist() == [False, False]
    # NOT: a negated position must be free
    assert scenes.position_accuracy(two, not_at=[C]).tolist() == [True, True]
    assert scenes.position_accuracy(two, not_at=[B]).tolist() == [False, True]
    assert scenes.position_accuracy(two, at=[A], not_at=[C]).tolist() == [True, False]
    assert scenes.position_accuracy(two, at=[A], not_at=[B]).tolist() == [False, False]


def test_position_strict(two):
    assert scenes.position_strict(two, at=[A, B]).tolist() == [True, False]
    assert scenes.position_strict(two, at=[B, A]).tolist() == [True, False]
    assert scenes.position_strict(two, at=[A]).tolist() == [False, False]  # an extra object at B
    assert scenes.position_strict(two, at=[A, B, C]).tolist() == [False, False]
    # two requests near one object: accurate (each has an object near) but not strict (one-to-one)
    near_a = [A, (A[0] + 0.05, A[1])]
    assert scenes.position_accuracy(two, at=near_a + [B]).tolist() == [True, False]
    assert scenes.position_strict(two, at=near_a).tolist() == [False, False]
    assert scenes.position_strict(two, at=[]).tolist() == [False, True]  # nothing asked, nothing there
    three = make((*A, "circle", "red", "large"), (*B, "triangle", "blue", "small"), (*C, "square", "cyan", "small"))
    assert scenes.position_strict(three, at=[A, B]).tolist() == [False]
    assert scenes.position_strict(three, at=[A, B, C]).tolist() == [True]


def test_count_near_and_precomputed_detections(two):
    assert scenes.count_near(two, B).tolist() == [True, False]
    assert scenes.count_near(two, C).tolist() == [False, False]
    dets = scenes.detect(two)
    assert [len(d) for d in dets] == [2, 0]
    assert scenes.count_near(dets, B).tolist() == [True, False]
    assert scenes.position_strict(dets, at=[A, B]).tolist() == [True, False]


def test_attribute_accuracy():
    imgs = torch.cat([make((0.5, 0.5, "square", "red", "large")), make((0.4, 0.6, "circle", "red", "small")),
                      make((0.5, 0.4, "triangle", "cyan", "large"), res=32)])
    acc = scenes.attribute_accuracy
    assert acc(imgs, require=["red"]).tolist() == [True, True, False]
    assert acc(imgs, require=["red", "square"], forbid=["small"]).tolist() == [True, False, False]
    assert acc(imgs, forbid=["small"]).tolist() == [True, False, True]
    assert acc(imgs, require="triangle").tolist() == [False, False, True]
    assert acc(imgs, require=["large", "cyan"]).tolist() == [False, False, True]
    # the largest object decides when there are two
    both = make((*A, "circle", "green", "large"), (*B, "square", "magenta", "small"))
    assert acc(both, require=["green", "circle", "large"]).tolist() == [True]
    assert acc(both, require=["magenta"]).tolist() == [False]


@pytest.mark.parametrize("call, match", [
    (lambda im: scenes.position_accuracy(im, at=[(1.2, 0.3)]), r"outside \[0, 1\]"),
    (lambda im: scenes.position_accuracy(im, at=[(0.1,)]), "pair of numbers"),
    (lambda im: scenes.position_accuracy(im, at="ab"), "pair of numbers|list of"),
    (lambda im: scenes.position_accuracy(im), "at least one position"),
    (lambda im: scenes.position_accuracy(im, at=[A], radius=0), "radius"),
    (lambda im: scenes.count_near(im, (0.5, 2.0)), r"outside \[0, 1\]"),
    (lambda im: scenes.position_strict(im, at=torch.zeros(2, 3)), r"\(K, 2\)"),
    (lambda im: scenes.attribute_accuracy(im, require=["purple"]), "valid attributes are: red"),
    (lambda im: scenes.attribute_accuracy(im), "require"),
    (lambda im: scenes.detect(im[0]), r"\(N, 3, H, W\)"),
    (lambda im: scenes.detect(im[:, :, :, :20]), "square"),
    (lambda im: scenes.position_accuracy("image", at=[A]), "Tensor"),
])
def test_score_errors(two, call, match):
    with pytest.raises(InputError, match=match):
        call(two)
