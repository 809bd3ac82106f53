"""Procedural RGB scenes for composing image concepts, and an evaluator of generated images.

Coordinates: an object's ``(x, y)`` is its centroid, ``x`` the column (0 left, 1 right) and ``y``
the row (0 top, 1 bottom), both fractions of the image side; pixel ``(i, j)`` (row, column) has
its centre at ``((j + 0.5) / W, (i + 0.5) / H)``. Images are ``(N, 3, H, W)`` float32 RGB in
[0, 1] on a flat grey background, 32×32 by default (64×64 too); each holds 1-5 non-overlapping
objects with a shape (:data:`SHAPES`), a colour (:data:`COLORS`) and a size (:data:`SIZES`).

Concept families (as in Liu et al., 2022, which composes CLEVR objects by position):

* **position** (:class:`PositionScenes`, :func:`at`): an image is labelled with the ``(x, y)`` of
  one of its objects, so ``at(a) AND at(b)`` asks for objects at both places;
* **attributes** (:class:`AttributeScenes`, :func:`attribute`): a single object labelled by one of
  its colour, shape or size (or a multi-hot of some of them, :func:`attributes`), so
  ``red AND square AND NOT small`` composes;
* **joint** (:class:`JointPositionScenes`, :func:`joint_at`): all positions in one condition, the
  non-compositional baseline.

The evaluator (:func:`detect`, :func:`position_accuracy`, :func:`position_strict`,
:func:`attribute_accuracy`, :func:`count_near`) finds objects in generated images; everything
is deterministic given a ``torch.Generator``.
"""

from .datasets import ATTRIBUTE_LABELS, AttributeScenes, JointPositionScenes, PositionScenes, at, attribute, attributes, joint_at
from .evaluate import Detection, attribute_accuracy, count_near, detect, position_accuracy, position_strict
from .layout import random_scenes
from .render import coverage, render
from .scene import ATTRIBUTES, BACKGROUND, COLORS, MAX_OBJECTS, SHAPES, SIZES, Scene, SceneObject

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_LABELS",
    "AttributeScenes",
    "BACKGROUND",
    "COLORS",
    "Detection",
    "JointPositionScenes",
    "MAX_OBJECTS",
    "PositionScenes",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "at",
    "attribute",
    "attributes",
    "attribute_accuracy",
    "count_near",
    "coverage",
    "detect",
    "joint_at",
    "position_accuracy",
    "position_strict",
    "random_scenes",
    "render",
]
