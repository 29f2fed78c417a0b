"""Pixel-identical images across a task's splits: which are a property of the data (recorded) and
which point to a mistake (refused).

Real datasets hold exact duplicates across their own official splits (published audits of
CIFAR-100 and ImageNet found them between train and test), so refusing every one would stop the
paper's studies on the official files. Duplicates that say the splits themselves are wrong stay
refusals:

* the same file listed in two splits (a list or a ``test:`` block naming the training files);
* in a task whose splits the user laid out (a VTAB-1K tree), a val200 image equal to a train800
  image: VTAB-1K's generators draw both from one source split, so a copy there is a generator
  or editing mistake, and selection would score training images;
* more than :data:`MAX_DUPLICATE_SHARE` of a split duplicated (and at least
  :data:`MIN_SHARE_COUNT` images: one or two in a tiny split say nothing): no audited dataset
  comes close; that is the same images under two names.

Everything else (a test image equal to a training image of the dataset's own train split; in a
split vpeft drew from a dataset's official parts, also val vs train) is recorded: counted, with
examples, in the prepared manifest's ``content.duplicates``, printed by ``vpeft check`` and shown in
the report. ``study.data.allow_duplicates=true`` records the refusals too.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MAX_DUPLICATE_SHARE", "MAX_EXAMPLES", "MIN_SHARE_COUNT", "Overlap", "duplicate_note", "judge_overlaps"]

MAX_DUPLICATE_SHARE = 0.10
MIN_SHARE_COUNT = 3
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Overlap:
    """An image of ``split`` whose pixels equal an image of an earlier split."""

    split: str        # "val200" (equal to a train800 image) or "test" (equal to any training image)
    message: str      # "file:line: ... has the same pixels as file:line (...)", no verdict
    same_file: bool   # both lines name one file on disk


def _policy(drawn_splits: bool, allow: bool) -> str:
    if allow:
        return "recorded (study.data.allow_duplicates)"
    return ("recorded: splits drawn from a dataset's official parts" if drawn_splits else
            "recorded: test images also in training; val200 vs train800 refused")


def judge_overlaps(task_dir: Path, overlaps: Sequence[Overlap], sizes: Mapping[str, int], *,
                   drawn_splits: bool, allow: bool) -> tuple[list[str], dict[str, Any]]:
    """(refusals, the manifest's ``duplicates`` record) for ``overlaps``.

    ``drawn_splits``: vpeft drew the task's train / val split itself from a dataset's official
    parts (many-shot subsets, the robustness few-shot split), so val vs train duplicates are the
    dataset's own. ``allow``: ``study.data.allow_duplicates``, every overlap recorded.
    """
    errors: list[str] = []
    if not allow:
        for o in overlaps:
            rule = ("train800 and val200 must be disjoint" if o.split == "val200" else
                    "test images must not be in a training split")
            if o.same_file:
                errors.append(f"{o.message} (the same file is listed in both splits); {rule}")
            elif o.split == "val200" and not drawn_splits:
                errors.append(f"{o.message}; {rule}")
        counts = Counter(o.split for o in overlaps)
        for split, n in sorted(counts.items()):
            size = sizes.get(split, 0)
            if size and n > MAX_DUPLICATE_SHARE * size and n >= MIN_SHARE_COUNT:
                errors.append(
                    f"{task_dir}: {n} of {size} {split} images ({100 * n / size:.0f} %) have the "
                    "same pixels as a training image; a dataset's own duplicates are far fewer "
                    f"(at most {100 * MAX_DUPLICATE_SHARE:.0f} % is accepted): the splits list "
                    "the same images twice")
        if errors:
            errors.append(f"{task_dir}: {len(overlaps)} image(s) shared between splits; if the "
                          "source genuinely holds these pixel-identical images, set "
                          "study.data.allow_duplicates=true to record them instead")
    record = {
        "policy": _policy(drawn_splits, allow),
        "val200_in_train800": sum(o.split == "val200" for o in overlaps),
        "test_in_training": sum(o.split == "test" for o in overlaps),
        "examples": [o.message for o in overlaps[:MAX_EXAMPLES]],
    }
    return errors, record


def duplicate_note(record: Mapping[str, Any] | None) -> str | None:
    """"n test images also appear in training" (and val200's count), or None when there are none."""
    if not record:
        return None
    parts = []
    if record.get("test_in_training"):
        n = int(record["test_in_training"])
        parts.append(f"{n} test image{'s' if n != 1 else ''} also appear{'' if n != 1 else 's'} "
                     "in training")
    if record.get("val200_in_train800"):
        n = int(record["val200_in_train800"])
        parts.append(f"{n} val200 image{'s' if n != 1 else ''} also in train800")
    return "; ".join(parts) or None
