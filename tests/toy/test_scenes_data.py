"""toy.scenes data: vocabulary, rendering geometry, placement, datasets and their conditions."""

import ast
import itertools
import math
import pathlib

import pytest
import torch

from ebmcompose.errors import InputError
from toy import scenes
from toy.scenes.render import coverage

RES = (32, 64)


def one(shape="square", color="red", size="large", x=0.5, y=0.5):
    return scenes.Scene((scenes.SceneObject(x, y, shape, color, size),))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def background_distance(images):
    """(N, H, W) RGB distance of each pixel from the background."""
    return torch.linalg.vector_norm(images - torch.tensor(scenes.BACKGROUND)[:, None, None], dim=1)


# ---------------------------------------------------------------- vocabulary


def test_vocabulary():
    assert scenes.SHAPES == ("circle", "square", "triangle")
    assert list(scenes.COLORS) == ["red", "green", "blue", "yellow", "magenta", "cyan"]
    assert list(scenes.SIZES) == ["small", "large"] and scenes.SIZES["small"] < scenes.SIZES["large"]
    assert scenes.ATTRIBUTES == tuple(scenes.COLORS) + scenes.SHAPES + tuple(scenes.SIZES)
    assert len(set(scenes.ATTRIBUTES)) == 11
    rgb = torch.tensor(list(scenes.COLORS.values()))
    bg = torch.tensor(scenes.BACKGROUND)
    assert ((rgb >= 0) & (rgb <= 1)).all()
    assert torch.linalg.vector_norm(rgb - bg, dim=1).min() > 0.6  # far from the background
    pair = torch.cdist(rgb, rgb) + 10 * torch.eye(6)
    assert pair.min() > 0.6  # well separated from each other


def test_package_surface_and_light_import():
    import toy

    assert "scenes" in toy.__all__ and toy.scenes is scenes
    for name in scenes.__all__:
        assert hasattr(scenes, name), name
    # `import toy` stays cheap: scipy is imported inside the detector only, never at module level
    for path in pathlib.Path(scenes.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "scipy" for n in names), path.name


def test_scene_object_validation():
    o = scenes.SceneObject(0.25, 0.75, "triangle", "cyan", "small")
    assert (o.x, o.y) == (0.25, 0.75) and o.attributes == ("cyan", "triangle", "small")
    with pytest.raises(AttributeError):
        o.x = 0.5  # frozen
    with pytest.raises(InputError, match="valid shapes are: circle, square, triangle"):
        scenes.SceneObject(0.5, 0.5, "star", "red", "small")
    with pytest.raises(InputError, match="valid colors are: red, green"):
        scenes.SceneObject(0.5, 0.5, "circle", "purple", "small")
    with pytest.raises(InputError, match="valid sizes are: small, large"):
        scenes.SceneObject(0.5, 0.5, "circle", "red", "huge")
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        scenes.SceneObject(1.5, 0.5, "circle", "red", "small")
    with pytest.raises(InputError, match="must be a number"):
        scenes.SceneObject("a", 0.5, "circle", "red", "small")
    with pytest.raises(InputError, match="SceneObject"):
        scenes.Scene(("not an object",))


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("res", RES)
def test_render_output(res):
    sl = scenes.random_scenes(8, gen())
    img = scenes.render(sl, res)
    assert img.shape == (8, 3, res, res) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1
    corner = scenes.render([scenes.Scene(())], res)[0, :, 0, 0]
    assert torch.allclose(corner, torch.tensor(scenes.BACKGROUND))


@pytest.mark.parametrize("bad", [16, 31.0, "32", 512, True])
def test_render_bad_resolution(bad):
    with pytest.raises(InputError, match="resolution"):
        scenes.render([one()], bad)


def test_render_bad_scenes():
    with pytest.raises(InputError, match="list of scenes.Scene"):
        scenes.render([[0.5, 0.5]], 32)
    with pytest.raises(InputError, match="supersample"):
        scenes.render([one()], 32, supersample=0)


@pytest.mark.parametrize("res", RES)
@pytest.mark.parametrize("shape", scenes.SHAPES)
@pytest.mark.parametrize("size", list(scenes.SIZES))
def test_area_and_centroid(res, shape, size):
    """Coverage sums to the equal-area disc, and its centroid is (x, y) = (column, row)."""
    x, y = 0.3, 0.62  # not symmetric: a renderer that swapped rows and columns fails
    img = scenes.render([one(shape, "blue", size, x, y)], res)
    blue = torch.tensor(scenes.COLORS["blue"]) - torch.tensor(scenes.BACKGROUND)
    cov = ((img[0] - torch.tensor(scenes.BACKGROUND)[:, None, None]) * blue[:, None, None]).sum(0) / blue.dot(blue)
    area = cov.sum() / res**2
    assert area.item() == pytest.approx(math.pi * scenes.SIZES[size] ** 2, rel=0.01)
    centre = (torch.arange(res) + 0.5) / res
    cx = (cov.sum(0) * centre).sum() / cov.sum()
    cy = (cov.sum(1) * centre).sum() / cov.sum()
    assert abs(cx - x) < 0.003 and abs(cy - y) < 0.003
    assert cov.min() >= -1e-6 and cov.max() <= 1 + 1e-6
    partial = ((cov > 0.05) & (cov < 0.95)).sum()
    assert partial >= 8  # anti-aliased edge, not a hard mask


def test_shapes_look_right():
    """Fill of the bounding box (square 1, circle π/4, triangle 1/2) and the triangle points up."""
    res = 64
    fills = {}
    for shape in scenes.SHAPES:
        cov = coverage(torch.tensor([scenes.SHAPES.index(shape)]), torch.tensor([0.5]), torch.tensor([0.5]),
                       torch.tensor([0.2]), res, supersample=8)[0]
        width, height = cov.amax(0).sum(), cov.amax(1).sum()  # extents with fractional edge pixels
        fills[shape] = float(cov.sum() / (width * height))
        rows = (cov > 0.5).sum(1)
        if shape == "triangle":
            filled = torch.nonzero(rows).squeeze(1)
            assert rows[filled[0]] < rows[filled[-1]] / 3  # narrow at the top (small row index)
    assert fills["square"] == pytest.approx(1.0, abs=0.03)
    assert fills["circle"] == pytest.approx(math.pi / 4, abs=0.03)
    assert fills["triangle"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("color", list(scenes.COLORS))
def test_colour_at_centre(color):
    img = scenes.render([one("circle", color, "large", 0.7, 0.4)], 32)[0]
    row, col = int(0.4 * 32), int(0.7 * 32)
    assert torch.allclose(img[:, row, col], torch.tensor(scenes.COLORS[color]), atol=1e-5)
    assert torch.allclose(img[:, col, row], torch.tensor(scenes.BACKGROUND), atol=1e-5)  # the transposed spot is empty


def test_supersampling_converges():
    sl = scenes.random_scenes(16, gen(3))
    fine = scenes.render(sl, 32, supersample=8)
    err = [(scenes.render(sl, 32, supersample=s) - fine).abs().max().item() for s in (1, 2, 4)]
    assert err[0] > err[1] > err[2] and err[2] < 0.03


# ---------------------------------------------------------------- placement


def test_same_seed_same_scenes_and_pixels():
    a, b = scenes.random_scenes(64, gen(7)), scenes.random_scenes(64, gen(7))
    assert a == b
    assert torch.equal(scenes.render(a, 32), scenes.render(b, 32))
    assert scenes.random_scenes(64, gen(8)) != a


def _coverages(scene, res):
    objs = scene.objects
    return coverage(torch.tensor([scenes.SHAPES.index(o.shape) for o in objs]), torch.tensor([o.x for o in objs]),
                    torch.tensor([o.y for o in objs]), torch.tensor([o.radius for o in objs]), res, supersample=4)


def test_objects_inside_and_apart():
    """Checked on the rendered shapes themselves: no coverage at the border, none shared (dilated)."""
    sl = scenes.random_scenes(250, gen(1))
    counts = torch.tensor([len(s) for s in sl])
    assert counts.min() == 1 and counts.max() == 5
    for s in sl:
        cov = _coverages(s, 64)  # (K, 64, 64)
        total = scenes.SIZES["small"] ** 2 * math.pi * 64**2 * 0.99
        assert (cov.sum((1, 2)) > total).all()  # whole objects: nothing cut at the border
        grown = torch.nn.functional.max_pool2d((cov > 0).float()[:, None], 5, stride=1, padding=2)[:, 0]
        for i, j in itertools.combinations(range(len(s)), 2):
            assert not (grown[i].bool() & (cov[j] > 0)).any(), (s, i, j)  # >= 2 px apart at 64


def test_attributes_uniform():
    sl = scenes.random_scenes(2000, gen(2))
    objs = [o for s in sl for o in s.objects]
    n = len(objs)
    for names, key in ((scenes.COLORS, "color"), (scenes.SHAPES, "shape"), (scenes.SIZES, "size")):
        p = 1 / len(names)
        for name in names:
            freq = sum(getattr(o, key) == name for o in objs) / n
            assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (key, name, freq)
    per_count = torch.bincount(torch.tensor([len(s) for s in sl]), minlength=6)[1:].float() / len(sl)
    assert (per_count - 0.2).abs().max() < 5 * math.sqrt(0.2 * 0.8 / len(sl))


def test_restricted_choices_and_crowded_scenes():
    sl = scenes.random_scenes(200, gen(4), n_objects=5, shapes=["triangle"], sizes="large", colors=["red", "blue"])
    assert all(len(s) == 5 for s in sl)
    assert {(o.shape, o.size) for s in sl for o in s.objects} == {("triangle", "large")}
    assert {o.color for s in sl for o in s.objects} == {"red", "blue"}


def test_impossible_placement_is_a_clear_error():
    with pytest.raises(InputError, match="could not place 5 non-overlapping objects.*fewer objects"):
        scenes.random_scenes(4, gen(), n_objects=5, sizes=["large"], gap=0.3, restarts=5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_objects=(0, 2)), "n_objects"),
    (dict(n_objects=6), "n_objects"),
    (dict(n_objects="3"), "n_objects"),
    (dict(shapes=["star"]), "valid shapes"),
    (dict(colors=[]), "empty"),
    (dict(gap=-0.1), "gap"),
])
def test_random_scenes_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        scenes.random_scenes(4, gen(), **kwargs)


def test_random_scenes_bad_generator():
    with pytest.raises(InputError, match="torch.Generator"):
        scenes.random_scenes(4, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
def test_random_scenes_cuda_generator_and_device_rendering():
    with pytest.raises(InputError, match="CPU torch.Generator"):
        scenes.random_scenes(4, torch.Generator(device="cuda"))
    sl = scenes.random_scenes(64, gen())
    assert torch.allclose(scenes.render(sl, 32, device="cuda").cpu(), scenes.render(sl, 32), atol=1e-5)


# ---------------------------------------------------------------- datasets and conditions


def test_condition_vectors():
    assert torch.equal(scenes.at(0.25, 0.75), torch.tensor([0.25, 0.75, 1.0]))
    assert torch.equal(scenes.at(*torch.tensor([0.25, 0.75])), torch.tensor([0.25, 0.75, 1.0]))
    red = scenes.attribute("red")
    assert red.shape == (11,) and red.sum() == 1 and red[scenes.ATTRIBUTES.index("red")] == 1
    j = scenes.joint_at([(0.8, 0.1), (0.2, 0.9)])
    assert j.shape == (15,)
    assert torch.equal(j[:6], torch.tensor([0.2, 0.9, 1.0, 0.8, 0.1, 1.0]))  # sorted by x
    assert torch.equal(j[6:], torch.zeros(9))
    assert torch.equal(scenes.joint_at((0.5, 0.5))[:3], torch.tensor([0.5, 0.5, 1.0]))  # one bare pair


@pytest.mark.parametrize("call, match", [
    (lambda: scenes.at(1.2, 0.5), r"outside \[0, 1\]"),
    (lambda: scenes.at(0.5, float("nan")), "must be a number"),
    (lambda: scenes.attribute("purple"), "valid attributes are: red, green, blue, yellow, magenta, cyan, circle"),
    (lambda: scenes.joint_at([]), "1 to 5"),
    (lambda: scenes.joint_at([(0.1, 0.1)] * 6), "1 to 5"),
    (lambda: scenes.joint_at([(0.1, 0.2, 0.3)]), "pair of numbers"),
    (lambda: scenes.PositionScenes(resolution=48.5), "resolution"),
    (lambda: scenes.PositionScenes(n_objects=(2, 9)), "n_objects"),
    (lambda: scenes.PositionScenes().sample(0, gen()), "positive integer"),
    (lambda: scenes.AttributeScenes().sample(2.5, gen()), "positive integer"),
])
def test_condition_errors(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_position_scenes():
    ds = scenes.PositionScenes(resolution=32)
    assert ds.condition_dim == 3 and torch.equal(ds.null_condition, torch.zeros(3))
    images, cond, sl = ds.sample(300, gen(5))
    assert images.shape == (300, 3, 32, 32) and cond.shape == (300, 3) and len(sl) == 300
    assert (cond[:, 2] == 1).all()
    picked = []
    for c, s in zip(cond.tolist(), sl):
        j = [k for k, p in enumerate(s.positions) if math.isclose(p[0], c[0], abs_tol=1e-6)
             and math.isclose(p[1], c[1], abs_tol=1e-6)]
        assert len(j) == 1
        picked.append((j[0], len(s)))
    # the labelled object is in the image at (row y, column x); swapped axes would land on background
    rows, cols = (cond[:, 1] * 32).long(), (cond[:, 0] * 32).long()
    assert (background_distance(images)[torch.arange(300), rows, cols] > 0.5).all()
    # the label picks each object of a scene alike (not always the first)
    last = sum(j == n - 1 for j, n in picked if n > 1) / sum(n > 1 for _, n in picked)
    assert 0.25 < last < 0.55
    images2, cond2, _ = ds.sample(300, gen(5))
    assert torch.equal(images, images2) and torch.equal(cond, cond2)


def test_attribute_scenes():
    ds = scenes.AttributeScenes(resolution=64)
    assert ds.condition_dim == 11 and torch.equal(ds.null_condition, torch.zeros(11))
    images, cond, sl = ds.sample(300, gen(6))
    assert images.shape == (300, 3, 64, 64) and cond.shape == (300, 11)
    assert all(len(s) == 1 for s in sl) and (cond.sum(1) == 1).all()
    kinds = []
    for c, s in zip(cond, sl):
        name = scenes.ATTRIBUTES[int(c.argmax())]
        assert name in s.objects[0].attributes
        kinds.append(s.objects[0].attributes.index(name))
    kinds = torch.bincount(torch.tensor(kinds), minlength=3).float() / 300
    assert (kinds - 1 / 3).abs().max() < 0.1  # colour, shape and size labels alike


def test_multi_hot_attribute_labels_keep_each_attribute_with_probability_half():
    ds = scenes.AttributeScenes(labels="multi")
    n = 2000
    _, cond, sl = ds.sample(n, gen(8))
    kept = torch.zeros(n, 3)
    for i, (c, s) in enumerate(zip(cond, sl)):
        names = [scenes.ATTRIBUTES[int(j)] for j in torch.nonzero(c).flatten()]
        assert set(names) <= set(s.objects[0].attributes)  # only the object's own attributes
        kept[i] = torch.tensor([a in names for a in s.objects[0].attributes], dtype=torch.float32)
        assert torch.equal(c, scenes.attributes(names)) if names else not c.any()
    se = math.sqrt(0.25 / n)
    assert ((kept.mean(0) - 0.5).abs() < 4.5 * se).all(), kept.mean(0)  # each kind kept half the time
    both = (kept[:, 0] * kept[:, 1]).mean()
    assert abs(float(both) - 0.25) < 4.5 * math.sqrt(0.25 * 0.75 / n)  # independently
    one = scenes.AttributeScenes()  # labels="one": the same draws as before multi-hot labels existed
    assert "labels='one'" in repr(one) and (one.sample(50, gen(8))[1].sum(1) == 1).all()


def test_attributes_condition_and_its_errors():
    assert torch.equal(scenes.attributes("red"), scenes.attribute("red"))
    both = scenes.attributes(["red", "square", "small"])
    assert both.sum() == 3 and all(both[scenes.ATTRIBUTES.index(a)] == 1 for a in ("red", "square", "small"))
    with pytest.raises(InputError, match="at most one colour"):
        scenes.attributes(["red", "blue"])
    with pytest.raises(InputError, match="unknown attribute"):
        scenes.attributes(["red", "hexagon"])
    with pytest.raises(InputError, match="at least one"):
        scenes.attributes([])
    with pytest.raises(InputError, match="labels must be one of"):
        scenes.AttributeScenes(labels="all")


def test_joint_scenes():
    ds = scenes.JointPositionScenes(resolution=32, n_objects=(2, 4))
    assert ds.condition_dim == 15 and torch.equal(ds.null_condition, torch.zeros(15))
    _, cond, sl = ds.sample(100, gen(7))
    assert cond.shape == (100, 15)
    for c, s in zip(cond, sl):
        assert torch.equal(c, scenes.joint_at(s.positions))
        slots = c.view(5, 3)
        assert slots[:, 2].sum() == len(s) and 2 <= len(s) <= 4
        xs = slots[: len(s), 0]
        assert (xs[1:] >= xs[:-1]).all()
