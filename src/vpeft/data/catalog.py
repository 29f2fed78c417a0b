"""The demo's synthetic tasks: names, groups, classes, descriptions.

The registry is here, in the core, because the core reads it (the synthetic study kind's task
entries, :mod:`vpeft.kinds.synthetic`; the robustness miniature's label space); their pixels are
rendered by :mod:`vpeft.demo.synthetic`, which takes the class-defining constants from here.
"""
from __future__ import annotations

from dataclasses import dataclass


# ---------------------------------------------------------------------------------------------
# The offline demo's synthetic tasks (study.data.kind: synthetic) and its pretraining source set
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticTask:
    """A synthetic classification task and where its pixels come from."""

    name: str
    group: str  # "natural" | "specialized" | "structured" (VTAB groups); "source" for pretraining
    num_classes: int
    description: str
    source: str  # where the pixels come from, shown in the report
    class_names: tuple[str, ...] = ()


# One photo per `textures` class (texture-like / remote-sensing-like surfaces).
TEXTURE_PHOTOS = ("skimage:brick", "skimage:grass", "skimage:gravel", "skimage:moon",
                  "skimage:immunohistochemistry", "skimage:hubble_deep_field",
                  "sklearn:china", "sklearn:flower")
# Photos for the texture classes of `source` (disjoint from `textures`).
SOURCE_PHOTOS = ("skimage:camera", "skimage:coins", "skimage:text", "skimage:cell",
                 "skimage:clock", "skimage:colorwheel")

POSITION_BINS = 8
SOURCE_SHAPES = ("circle", "square", "triangle", "cross")
SOURCE_COLOURS = {"red": 0.0, "green": 1 / 3, "blue": 2 / 3}  # hue centres of colour families
SOURCE_GLYPH_COUNTS = (1, 2, 3)
SOURCE_ORIENTATIONS = ("upright", "rot90")


DEMO_TASKS: dict[str, SyntheticTask] = {
    "digits": SyntheticTask(
        name="digits", group="natural", num_classes=10,
        description="Handwritten digit (0-9) at a random offset and scale on a coloured "
                    "natural-photo crop (SVHN-like).",
        source="sklearn.datasets.load_digits (1,797 real 8x8 digits; every fifth digit of a class "
               "held out for test) on crops of skimage.data coffee/rocket/astronaut/chelsea and "
               "sklearn sample images china/flower",
        class_names=tuple(str(d) for d in range(10))),
    "faces": SyntheticTask(
        name="faces", group="natural", num_classes=2,
        description="Face vs non-face patch with crop, flip, brightness/contrast and tint jitter.",
        source="skimage.data.lfw_subset (100 real LFW faces, 100 non-face patches; every fifth "
               "held out for test)",
        class_names=("face", "non-face")),
    "textures": SyntheticTask(
        name="textures", group="specialized", num_classes=len(TEXTURE_PHOTOS),
        description="Which surface a small random crop (random scale, 90-degree rotation, flip, "
                    "brightness) comes from, like texture / remote-sensing tasks.",
        source="crops of skimage.data brick/grass/gravel/moon/immunohistochemistry/"
               "hubble_deep_field and sklearn sample images china/flower (test crops from the "
               "bottom quarter of each photo, train/val from the rest)",
        class_names=tuple(ref.split(":")[1] for ref in TEXTURE_PHOTOS)),
    "count": SyntheticTask(
        name="count", group="structured", num_classes=6,
        description="How many (1-6) non-overlapping circles/squares/triangles of random colours "
                    "and sizes lie on a plain background (CLEVR-count-like); label = count - 1.",
        source="rendered with PIL ImageDraw",
        class_names=tuple(str(n) for n in range(1, 7))),
    "position": SyntheticTask(
        name="position", group="structured", num_classes=POSITION_BINS,
        description=f"x-position bin ({POSITION_BINS} bins) of one white square/ellipse/heart "
                    "sprite of random scale, rotation and y on black, stored grey-scale "
                    "(dSprites-location-like).",
        source="rendered with PIL ImageDraw",
        class_names=tuple(f"x{b}" for b in range(POSITION_BINS))),
}

DEMO_SOURCE = SyntheticTask(
    name="source", group="source",
    num_classes=len(SOURCE_SHAPES) * len(SOURCE_COLOURS) + len(SOURCE_PHOTOS)
    + len(SOURCE_GLYPH_COUNTS) * len(SOURCE_ORIENTATIONS),
    description="Pretraining set: shape x colour family (12 classes), photo crops (6), number and "
                "orientation of digit glyphs (6).",
    source="rendered with PIL ImageDraw; crops of skimage.data camera/coins/text/cell/clock/"
           "colorwheel; glyphs from sklearn.datasets.load_digits",
    class_names=tuple(f"{s}-{c}" for s in SOURCE_SHAPES for c in SOURCE_COLOURS)
    + tuple(ref.split(":")[1] for ref in SOURCE_PHOTOS)
    + tuple(f"glyphs{n}-{o}" for n in SOURCE_GLYPH_COUNTS for o in SOURCE_ORIENTATIONS),
)
