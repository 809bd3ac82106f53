"""Conditioned scene datasets (rendered on the fly) and the condition vectors of each concept family.

=======================  ==========================================================================
:class:`PositionScenes`  1-5 objects; condition ``(x, y, 1)`` of one of them (:func:`at`)
:class:`AttributeScenes` one object; condition a one-hot of one attribute (:func:`attribute`), or a
                         multi-hot of some of them (:func:`attributes`)
:class:`JointPositionScenes`  1-5 objects; condition all positions at once (:func:`joint_at`), the
                         jointly-conditioned baseline of Liu et al. (2022)
=======================  ==========================================================================

Every ``sample(n, generator)`` returns ``(images, cond, scene_list)``: images ``(n, 3, H, W)``
float32 in [0, 1], conditions ``(n, condition_dim)`` float32, and the scenes drawn. The all-zero
vector :attr:`null_condition` means "no condition" (for condition dropout).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ebmcompose.errors import InputError

from .layout import random_scenes
from .render import render
from .scene import ATTRIBUTES, MAX_OBJECTS, Scene, check_n_objects, check_position, check_positions, check_resolution

__all__ = ["ATTRIBUTE_LABELS", "AttributeScenes", "JointPositionScenes", "PositionScenes", "at", "attribute", "attributes",
           "joint_at"]


def at(x: float, y: float) -> Tensor:
    """The position condition ``(x, y, 1)``, Tensor (3,) float32 (x = column, y = row, in [0, 1])."""
    x, y = check_position((x, y))
    return torch.tensor([x, y, 1.0], dtype=torch.float32)


def attribute(name: str) -> Tensor:
    """The one-hot attribute condition, Tensor (11,) float32, in the order of :data:`ATTRIBUTES`."""
    if not isinstance(name, str) or name not in ATTRIBUTES:
        raise InputError(f"unknown attribute {name!r}; valid attributes are: {', '.join(ATTRIBUTES)}")
    out = torch.zeros(len(ATTRIBUTES), dtype=torch.float32)
    out[ATTRIBUTES.index(name)] = 1.0
    return out


def _canonical(positions) -> List[Tuple[float, float]]:
    return sorted(positions)


def joint_at(positions) -> Tensor:
    """The joint condition of up to 5 positions: Tensor (15,) float32, slots of ``(x, y, present)``.

    Positions are sorted by ``x`` then ``y`` (the order the datasets use); unused slots are zero.
    """
    positions = check_positions(positions)
    if not 1 <= len(positions) <= MAX_OBJECTS:
        raise InputError(f"joint_at takes 1 to {MAX_OBJECTS} (x, y) positions, got {len(positions)}")
    out = torch.zeros(MAX_OBJECTS, 3, dtype=torch.float32)
    for j, (x, y) in enumerate(_canonical(positions)):
        out[j] = torch.tensor([x, y, 1.0])
    return out.reshape(-1)


class _SceneSet:
    """Shared configuration: resolution, objects per scene, anti-aliasing."""

    condition_dim: int = 0

    def __init__(self, resolution: int = 32, n_objects=(1, MAX_OBJECTS), supersample: Optional[int] = None):
        self.resolution = check_resolution(resolution)
        self.n_objects = check_n_objects(n_objects)
        self.supersample = supersample

    @property
    def null_condition(self) -> Tensor:
        """Tensor (condition_dim,) of zeros: no condition."""
        return torch.zeros(self.condition_dim, dtype=torch.float32)

    def _scenes(self, n: int, generator) -> List[Scene]:
        return random_scenes(n, generator, n_objects=self.n_objects)  # checks the generator

    def _conditions(self, scene_list: List[Scene], generator) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor, List[Scene]]:
        """Draw ``n`` scenes with their conditions.

        Returns
        -------
        images : Tensor (n, 3, H, W) float32 in [0, 1]
        cond : Tensor (n, condition_dim) float32
        scene_list : list of Scene (length n)
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"n must be a positive integer number of images, got {n!r}")
        scene_list = self._scenes(n, generator)
        cond = self._conditions(scene_list, generator)
        images = render(scene_list, self.resolution, supersample=self.supersample, device=device)
        return images, cond.to(images.device), scene_list

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resolution={self.resolution}, n_objects={self.n_objects})"


class PositionScenes(_SceneSet):
    """Scenes of 1-5 objects, each labelled with the position ``(x, y, 1)`` of one random object."""

    condition_dim = 3

    def _conditions(self, scene_list, generator) -> Tensor:
        counts = torch.tensor([len(s) for s in scene_list], dtype=torch.float64)
        pick = (torch.rand(len(scene_list), generator=generator, dtype=torch.float64) * counts).long()
        return torch.stack([at(*s.positions[int(j)]) for s, j in zip(scene_list, pick)])


#: How :class:`AttributeScenes` labels an object: ``"one"``, a one-hot of one random attribute;
#: ``"multi"``, each of its three attributes kept independently with probability ½ (a multi-hot).
ATTRIBUTE_LABELS = ("one", "multi")


def attributes(names) -> Tensor:
    """The multi-hot condition "the object is all of ``names``", Tensor (11,) float32.

    At most one name per kind (colour, shape, size); ``attributes(["red"])`` equals ``attribute("red")``.
    """
    if isinstance(names, str):
        names = [names]
    out = torch.zeros(len(ATTRIBUTES), dtype=torch.float32)
    kinds = {}
    for name in names:
        out += attribute(name)
        kind = _kind(name)
        if kind in kinds:
            raise InputError(f"attributes takes at most one {kind} (got {kinds[kind]!r} and {name!r}); "
                             "an object has one colour, one shape and one size")
        kinds[kind] = name
    if not kinds:
        raise InputError("attributes needs at least one attribute name")
    return out


def _kind(name: str) -> str:
    from .scene import COLORS, SHAPES

    return "colour" if name in COLORS else "shape" if name in SHAPES else "size"


class AttributeScenes(_SceneSet):
    """Single-object scenes labelled with their attributes (colour, shape, size).

    ``labels="one"``: a one-hot of one random attribute. ``labels="multi"``: each attribute is kept
    independently with probability ½, so the label "square" alone (probability 1/8) still means
    p(x | square), and a multi-hot such as "red AND square" is a jointly conditioned baseline.
    """

    condition_dim = len(ATTRIBUTES)

    def __init__(self, resolution: int = 32, supersample: Optional[int] = None, labels: str = "one"):
        super().__init__(resolution, n_objects=1, supersample=supersample)
        if labels not in ATTRIBUTE_LABELS:
            raise InputError(f"labels must be one of {', '.join(ATTRIBUTE_LABELS)}, got {labels!r}")
        self.labels = labels

    def __repr__(self) -> str:
        return f"AttributeScenes(resolution={self.resolution}, labels={self.labels!r})"

    def _conditions(self, scene_list, generator) -> Tensor:
        onehots = torch.stack([torch.stack([attribute(a) for a in s.objects[0].attributes]) for s in scene_list])
        if self.labels == "one":
            which = torch.randint(3, (len(scene_list),), generator=generator)
            return onehots[torch.arange(len(scene_list)), which]
        keep = torch.rand(len(scene_list), 3, generator=generator) < 0.5
        return (onehots * keep.unsqueeze(-1)).sum(1)


class JointPositionScenes(_SceneSet):
    """Scenes of 1-5 objects labelled with all their positions (:func:`joint_at`, 15 numbers)."""

    condition_dim = 3 * MAX_OBJECTS

    def _conditions(self, scene_list, generator) -> Tensor:
        return torch.stack([joint_at(s.positions) for s in scene_list])
