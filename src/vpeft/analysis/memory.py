"""What one ``vpeft analyze`` job holds, and so asks the scheduler for."""
from __future__ import annotations

import math
from typing import Any

from vpeft import layout

# Work arrays of one block of examples (softmax, ensemble sums): the streamed analysis holds
# these, the methods' per-example outcomes and nothing of size methods x examples x classes.
WORK_BYTES = 64 << 20


# Peak RSS of `vpeft analyze` measured by benchmarks/analysis_memory.py (docs/benchmarks.md,
# "Analysis memory"): 358 MiB for 21,750 x 397 x 16 methods, 373 MiB for 50,000 x 1,000 x 16.
# A fixed part (interpreter, numpy, Arrow and its readers, the CLI's config; ~286 MiB) plus the
# block work arrays, plus ~35 bytes per example and method (saved predictions, max probability
# and their masks) and a little per example; the constants below round those up, and
# _MARGIN covers allocator variance and other machines.
_FIXED_MB = 286.0
_PER_EXAMPLE_METHOD_BYTES = 48.0
_PER_EXAMPLE_BYTES = 256.0
_MARGIN = 1.3


# Test-set size assumed for a job sized before its task is prepared and whose study does not fix
# it: above every VTAB-1K test set (dsprites: 73,728) and ImageNet val (50,000).
PLANNING_NUM_TEST = 100_000


def planned_num_test(cfg: Any, task: str) -> int:
    """The test-set size to size ``task``'s jobs by, before they run: the study's
    ``study.data.split_sizes.test``, else the prepared task's manifest (once prepared), else
    :data:`PLANNING_NUM_TEST`."""
    from vpeft.data.shards import read_manifest
    from vpeft.kinds import study_kind

    declared = study_kind(cfg).split_sizes(task)["test"]
    if declared is not None:
        return int(declared)
    prepared = layout.prepared_task(cfg, task)
    if (prepared / "manifest.json").is_file():
        return int(read_manifest(prepared)["splits"]["test"]["count"])
    return PLANNING_NUM_TEST


def memory_mb(num_test: int, num_classes: int, num_methods: int) -> int:
    """Memory (MB) for one ``vpeft analyze`` job: its measured peak for ``num_test`` examples x
    ``num_classes`` x ``num_methods``, with a 30 % margin.

    The streamed analysis never holds a methods x examples x classes array: its blocks hold
    :data:`WORK_BYTES` whatever the class count, so only the per-example outcomes grow with the
    test set (483 MB for sun397-sized, 519 MB for ImageNet-val-sized, 16 methods).
    """
    if min(num_test, num_classes, num_methods) < 0:
        raise ValueError(f"sizes must be >= 0, got {(num_test, num_classes, num_methods)}")
    per_example = _PER_EXAMPLE_METHOD_BYTES * num_methods + _PER_EXAMPLE_BYTES
    peak = _FIXED_MB + WORK_BYTES / 2**20 + num_test * per_example / 2**20
    return int(math.ceil(_MARGIN * peak))
