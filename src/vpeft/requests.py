"""What each training job asks the scheduler for: memory, time and (on GPU) device memory,
from the study's calibration file (:mod:`vpeft.calibration`) when there is one.

For a job of ``points`` grid points of one method in one phase, on a task whose split sizes are
known when the plan is made (``study.data.split_sizes``, else the prepared manifest):

* ``runtime`` (minutes) = ``TIME_SAFETY`` x (start-up + points x (epochs x training images /
  training images/s + evaluation images / evaluation images/s)), times the attempt number;
  Head-only runs on cached features add the frozen forward over both splits, once a job, at
  the measured extraction images/s;
* ``mem_mb`` = ``MEM_SAFETY`` x (measured peak host RSS + the job's splits as uint8 pixels +
  (points - 1) x one more point's model state: its parameters, and the gradients and two AdamW
  moments of its trainable ones). The splits are added because a rehearsal measures its peak
  with a few batches; a 73,728-image test split at 224 px holds 11.1 GB;
* ``gpu_mem_mb`` (only when the calibration ran on CUDA) the same with the device peak: a
  profile maps it to a GPU type (docs/cluster.md).

WiSE-FT jobs (:meth:`Requests.wise`): ``alphas`` x (ID test + every prepared shift set) images at
the method's final-phase evaluation speed, memory as above with the largest set's pixels.

A rehearsal (``train.rehearsal``) is sized for what it runs: its steps and batches. Without a
calibration file, or for a method or phase it does not measure, the requests fall back to the
old constants (``train_runtime_min`` x runs, ``FALLBACK_MEM_MB``), and say so once in the log.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vpeft import calibration, layout

log = logging.getLogger("vpeft.requests")

MEM_SAFETY = 1.5    # measured peaks x this: allocator slack, other tasks' larger images
TIME_SAFETY = 2.0   # measured seconds x this: a busier node, a cold file cache, a slower copy
MIN_RUNTIME_MIN = 5
FALLBACK_MEM_MB = 16000  # the request of every training job before calibration
SPLITS = {"grid": ("train800", "val200"), "final": ("train800val200", "test")}


@dataclass
class Requests:
    """The requests of a study's training jobs (built once per Snakemake plan)."""

    cfg: Any
    fallback_runtime_min: float
    path: Path
    data: Mapping[str, Any] | None
    _told: set = field(default_factory=set)
    # sizes once known (they do not change within a plan): each job's resources are several
    # callables (runtime, mem_mb, gpu_mem_mb), each asking for the same sizes
    _known_sizes: dict = field(default_factory=dict)   # (task, phase) -> _images()
    _shift_counts: dict = field(default_factory=dict)  # prepared shift set -> test images

    @classmethod
    def of(cls, cfg: Any, fallback_runtime_min: float, path: Path | str | None = None) -> Requests:
        """Read ``path`` (default: ``layout.calibration_file(cfg)``); a bad file raises
        :class:`vpeft.calibration.CalibrationError` naming it."""
        path = Path(path) if path is not None else layout.calibration_file(cfg)
        return cls(cfg, float(fallback_runtime_min), path, calibration.load(path))

    def _fallback(self, why: str, runs: int, attempt: int) -> dict[str, Any]:
        if why not in self._told:
            self._told.add(why)
            log.warning("requests: %s; training jobs ask for the fallback train_runtime_min "
                        "(%g min) per run and %d MB", why, self.fallback_runtime_min,
                        FALLBACK_MEM_MB)
        return {"runtime": math.ceil(self.fallback_runtime_min * attempt * runs),
                "mem_mb": FALLBACK_MEM_MB, "source": "fallback"}

    def train(self, task: str, methods: Sequence[str], phase: str,
              points: int | Mapping[str, int] = 1, attempt: int = 1) -> dict[str, Any]:
        """Requests of one job training ``points`` points (per method, or of each) of
        ``methods`` (one after another) in ``phase``: times add up, memory is the largest
        method's."""
        count = {m: points[m] if isinstance(points, Mapping) else points for m in methods}
        runs = sum(count.values())
        if self.data is None:
            return self._fallback(f"no calibration file {self.path}", runs, attempt)
        sizes = self._images(task, phase)
        if sizes is None:
            return self._fallback(f"split sizes of task '{task}' unknown before prepare", runs,
                                  attempt)
        seconds, device = 0.0, None
        side = int(self.cfg.study.data.get("image_size") or self.cfg.model.img_size)
        mem = pixels = sizes[3] * side * side * 3 / 2**20
        for method in methods:
            entry = (self.data["methods"].get(method) or {}).get(phase)
            if entry is None:
                return self._fallback(f"{self.path} does not measure {method} ({phase})", runs,
                                      attempt)
            seconds += self._seconds(entry, sizes, count[method])
            state = entry["total_params"] * 4 + entry["trainable_params"] * 12
            extra = (count[method] - 1) * state / 2**20
            mem = max(mem, entry["peak_host_rss_mb"] + pixels + extra)
            if entry.get("peak_device_mb") is not None:
                device = max(device or 0.0, entry["peak_device_mb"] + extra)
        return self._measured(seconds, mem, device, attempt)

    def _measured(self, seconds: float, mem_mb: float, device_mb: float | None,
                  attempt: int) -> dict[str, Any]:
        """A job's requests from its measured need: the safety factors, the minimum runtime and
        the attempt's scaling; ``gpu_mem_mb`` only when the calibration measured a device."""
        out = {"runtime": max(MIN_RUNTIME_MIN, math.ceil(TIME_SAFETY * seconds / 60)) * attempt,
               "mem_mb": math.ceil(MEM_SAFETY * mem_mb), "source": str(self.path)}
        if device_mb is not None:
            out["gpu_mem_mb"] = math.ceil(MEM_SAFETY * device_mb)
        return out

    def wise(self, task: str, method: str, shift_dirs: Sequence[Path | str], alphas: int,
             attempt: int = 1) -> dict[str, Any]:
        """Requests of one WiSE-FT job: ``alphas`` predictions of the ID test set and of every
        prepared shift set, at the method's measured final-phase evaluation speed; memory: the
        final run's peak plus the largest set's pixels (the sets are read one at a time)."""
        if self.data is None:
            return self._fallback(f"no calibration file {self.path}", 1, attempt)
        entry = (self.data["methods"].get(method) or {}).get("final")
        if entry is None:
            return self._fallback(f"{self.path} does not measure {method} (final)", 1, attempt)
        from vpeft.analysis import planned_num_test

        sets = [planned_num_test(self.cfg, task)]
        for folder in shift_dirs:
            count = self._shift_counts.get(str(folder))
            if count is None:
                if not (Path(folder) / "manifest.json").is_file():
                    return self._fallback(f"shift set {folder} not prepared yet: its size is "
                                          "unknown", 1, attempt)
                from vpeft.data.shards import read_manifest

                count = int(read_manifest(folder)["splits"]["test"]["count"])
                self._shift_counts[str(folder)] = count
            sets.append(count)
        side = int(self.cfg.model.img_size)
        seconds = entry["setup_s"] + alphas * sum(sets) / entry["eval_images_per_s"]
        mem = entry["peak_host_rss_mb"] + max(sets) * side * side * 3 / 2**20
        return self._measured(seconds, mem, entry.get("peak_device_mb"), attempt)

    def _seconds(self, entry: Mapping[str, Any], sizes: tuple[int, int, int, int],
                 points: int) -> float:
        train_images, eval_images, epochs, _ = sizes
        per_point = (epochs * train_images / entry["train_images_per_s"]
                     + eval_images / entry["eval_images_per_s"])
        # cached features (linear probing): the frozen forward over both splits, once a job
        extract = entry.get("extract_images_per_s")
        once = (train_images + eval_images) / extract if extract else 0.0
        return entry["setup_s"] + once + points * per_point

    def _images(self, task: str, phase: str) -> tuple[int, int, int, int] | None:
        """(training images, evaluation images, epochs, images read) a run of ``phase`` on
        ``task`` goes through, as the plan knows them (a rehearsal: what its cut leaves; it
        still reads its splits whole)."""
        if (task, phase) in self._known_sizes:
            return self._known_sizes[task, phase]
        from vpeft.analysis import planned_num_test
        from vpeft.kinds import study_kind

        train_split, eval_split = SPLITS[phase]
        declared = study_kind(self.cfg).split_sizes(task)
        n_train = declared.get(train_split)
        if n_train is None:
            n_train = _prepared_count(self.cfg, task, train_split)
        n_eval = planned_num_test(self.cfg, task) if eval_split == "test" else \
            declared.get(eval_split) or _prepared_count(self.cfg, task, eval_split)
        if n_train is None or n_eval is None:
            return None
        read = int(n_train) + int(n_eval)
        train = self.cfg.train
        epochs = int(train.epochs)
        cut = train.get("rehearsal") or {}
        if cut.get("max_steps"):
            n_train = min(n_train, int(cut["max_steps"]) * int(train.batch_size))
            epochs = 1
        if cut.get("max_eval_batches"):
            n_eval = min(n_eval, int(cut["max_eval_batches"]) * int(train.eval_batch_size))
        sizes = int(n_train), int(n_eval), epochs, read
        # the test size is a placeholder until the task is prepared (planned_num_test): not kept
        if eval_split != "test" or declared.get("test") is not None or \
                (layout.prepared_task(self.cfg, task) / "manifest.json").is_file():
            self._known_sizes[task, phase] = sizes
        return sizes


def _prepared_count(cfg: Any, task: str, split: str) -> int | None:
    from vpeft.data.shards import read_manifest

    prepared = layout.prepared_task(cfg, task)
    if not (prepared / "manifest.json").is_file():
        return None
    return int(read_manifest(prepared)["splits"][split]["count"])


def table(requests: Requests, plan: Any, task: str) -> list[dict[str, Any]]:
    """One row per (method, phase) of one task: what its largest job asks for (``vpeft check``)."""
    from vpeft import jobs

    rows = []
    for method in plan.methods:
        for phase in SPLITS:
            points = 1 if phase == "final" else max(len(c) for c in jobs.grid_chunks(plan, method))
            rows.append({"method": method, "phase": phase, "points": points,
                         **requests.train(task, [method], phase, points)})
    return rows
