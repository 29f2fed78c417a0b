"""Which tasks a study can use: the 19 VTAB-1K tasks, or the demo's synthetic ones.

The synthetic tasks' registry (names, groups, classes, descriptions) is here, in the core, because
the core reads it (a study's task entries, the robustness miniature's label space); their pixels
are rendered by :mod:`vpeft.demo.synthetic`, which takes the class-defining constants from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from vpeft.errors import UserError
from vpeft.layout import SOURCE_TASK


@dataclass(frozen=True)
class TaskEntry:
    name: str
    num_classes: int
    group: str
    description: str = ""


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


def task_entry(cfg: DictConfig, task: str) -> TaskEntry:
    """Class count and group of ``task`` under the study's data kind.

    ``study.task_info.<task>: {num_classes, group}`` declares a task vpeft does not know
    (a user's own dataset in the VTAB-1K layout).
    """
    declared = (cfg.study.get("task_info") or {}).get(task)
    if declared is not None:
        return TaskEntry(task, int(declared.num_classes), str(declared.group),
                         str(declared.get("description", "")))
    kind = cfg.study.data.kind
    if kind == "synthetic" or (kind == "manyshot" and task == SOURCE_TASK):  # a miniature's pretraining set
        known = {**DEMO_TASKS, SOURCE_TASK: DEMO_SOURCE}
        if task not in known:
            raise UserError(f"study.tasks: '{task}' is not a synthetic demo task; known: "
                           f"{sorted(known)}")
        t = known[task]
        return TaskEntry(task, t.num_classes, t.group, f"{t.description} ({t.source})")
    if kind == "vtab":
        from vpeft.data.vtab import VTAB_TASKS

        if task not in VTAB_TASKS:
            raise UserError(f"study.tasks: '{task}' is not a VTAB-1K task; known: "
                           f"{sorted(VTAB_TASKS)}; declare others under study.task_info")
        t = VTAB_TASKS[task]
        return TaskEntry(task, t.num_classes, t.group)
    if kind == "manyshot" and task != SOURCE_TASK:
        from vpeft.data.manyshot import resolve_task

        ds = resolve_task(cfg, task).dataset
        return TaskEntry(task, ds.num_classes, ds.group, ds.description)
    raise UserError(f"study.data.kind: '{kind}' is not one of 'synthetic', 'vtab', 'manyshot'")


def split_sizes(cfg: DictConfig, task: str) -> dict[str, int | None]:
    """The split sizes ``task``'s lists must have: the study's ``study.data.split_sizes`` (800 /
    200 / 1000 for VTAB-1K), or any size (None) for the pretraining source set and many-shot
    tasks, whose sizes the data decides."""
    if task == SOURCE_TASK or cfg.study.data.kind == "manyshot":
        return dict.fromkeys(("train800", "val200", "train800val200", "test"))
    return dict(cfg.study.data.split_sizes)


def prepare_study_task(cfg: DictConfig, task: str) -> dict[str, Any]:
    """``vpeft prepare``: validate the study's raw ``task`` and write its Parquet shards, with the
    class count and group of :func:`task_entry`, the split sizes of :func:`split_sizes` and the
    study's image size; returns the manifest."""
    from vpeft import layout
    from vpeft.data.vtab import prepare_task

    entry = task_entry(cfg, task)
    manyshot = cfg.study.data.kind == "manyshot" and task != SOURCE_TASK
    sizes = split_sizes(cfg, task)
    # Many-shot images are stored larger than the model input (crops happen per batch).
    size = int(cfg.study.data.stored_size) if manyshot else int(cfg.model.img_size)
    return prepare_task(layout.raw_task(cfg, task), layout.prepared_task(cfg, task), task=task,
                        image_size=size, num_classes=entry.num_classes, group=entry.group,
                        split_sizes=sizes,
                        allow_duplicates=bool(cfg.study.data.get("allow_duplicates", False)))
