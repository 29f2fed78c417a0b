"""Peak memory of ``vpeft analyze`` on a fabricated task of a given size.

    python -m benchmarks.analysis_memory --sizes sun397 imagenet [--old REV] [--out DIR]

Writes, under a temporary directory, one task's final runs of every method of the study in
vpeft's own on-disk formats (``runs/<study>/<task>/<method>/selection.json`` and
``final/{test_predictions.parquet,test_eval.json}``, the Parquet built by the same function
``vpeft evaluate`` uses), then runs ``python -m vpeft analyze`` on it in a child process and
reports the job's peak resident set size (``ru_maxrss`` of ``RUSAGE_CHILDREN`` in a small
launcher whose only child is the job)
next to :func:`vpeft.analysis.memory_mb`, the memory the workflow asks for. ``--old REV`` also
measures vpeft.analysis of an earlier git revision (its ``run_task_analysis``, that revision's
``src/`` first on the path) for a before/after figure; sizes: ``sun397`` (21,750 test images x
397 classes, the VTAB-1K study's 16 methods) and ``imagenet`` (50,000 x 1,000, the robustness
study's 16).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Config keys the studies require but the analysis never reads.
_UNUSED_PATHS = ["study.data.root=/nonexistent", "model.weights=/nonexistent.npz"]


@dataclass(frozen=True)
class Size:
    study: str
    task: str
    num_test: int
    num_classes: int
    overrides: tuple[str, ...] = ()


SIZES: dict[str, Size] = {
    "sun397": Size("vtab1k", "sun397", 21_750, 397),
    "imagenet": Size("robustness", "imagenet", 50_000, 1_000,
                     ("study.robustness.test.root=/nonexistent",
                      "study.robustness.test.devkit=/nonexistent")),
}


def _env() -> dict[str, str]:
    src = str(REPO / "src")
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH", "")] if p)}


def study_methods(size: Size, runs: Path) -> list[str]:
    """The study's methods, as ``vpeft analyze`` will see them."""
    from vpeft.config import load_study

    return list(load_study(size.study, overrides(size, runs)).methods)


def overrides(size: Size, runs: Path) -> list[str]:
    return [f"paths.runs={runs}", *_UNUSED_PATHS, *size.overrides]


def fabricate(study_dir: Path, task: str, methods: list[str], num_test: int, num_classes: int,
              seed: int = 0) -> None:
    """One task's final runs: every method right on about 70 % of the test images.

    Files are written one method at a time with vpeft's writers (the test predictions through
    ``protocol.predictions_table`` + the label column, exactly as ``vpeft evaluate`` writes them).
    """
    import pyarrow as pa
    import torch

    from vpeft import layout
    from vpeft.io import write_json, write_parquet
    from vpeft.protocol import predictions_table

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_test)
    index = np.arange(num_test, dtype=np.int64)
    for m, method in enumerate(methods):
        logits = rng.standard_normal((num_test, num_classes), dtype=np.float32)
        right = rng.random(num_test) < 0.7
        logits[right, labels[right]] += 4.0
        table = predictions_table(index, torch.from_numpy(logits), None)
        table = table.add_column(1, "label", pa.array(labels, pa.int64()))
        mdir = study_dir / task / method
        write_parquet(mdir / "final" / layout.TEST_PREDICTIONS, table)
        top1 = float(100.0 * np.mean(table.column("pred").to_numpy() == labels))
        write_json(mdir / "final" / layout.TEST_EVAL,
                   {"task": task, "method": method, "point": "p0", "seed": 42, "test_top1": top1,
                    "num_test": num_test, "status": "ok"})
        write_json(mdir / "selection.json",
                   {"task": task, "method": method, "best_point": "p0",
                    "best_val_top1": 50.0 + m % 7})
        del logits, table


# A small launcher whose only child is the job: a child's ru_maxrss starts from its parent's
# RSS at fork (Linux copies it through exec), so the job must not be forked from this process,
# which holds torch and the fabricated arrays.
_LAUNCHER = ("import json, resource, subprocess, sys\n"
             "code = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], 'w'), "
             "stderr=subprocess.STDOUT).returncode\n"
             "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
             "print(json.dumps({'returncode': code, 'peak_rss_kib': peak}))\n")


def measure(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; its wall time, exit code and peak RSS in MiB (that job alone)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), *cmd], cwd=REPO, env=_env(),
                         check=True, capture_output=True, text=True).stdout
    child = json.loads(out)
    return {"peak_rss_mib": child["peak_rss_kib"] / 1024, "wall_s": time.perf_counter() - start,
            "returncode": child["returncode"], "log": str(log)}


def analyze_cmd(size: Size, runs: Path) -> list[str]:
    """The workflow's own command (rule analyze)."""
    args = [sys.executable, "-m", "vpeft", "analyze", "--study", size.study, "--task", size.task]
    for o in overrides(size, runs):
        args += ["-o", o]
    return args


def revision_cmd(src: Path, study_dir: Path, task: str, methods: list[str]) -> list[str]:
    """``run_task_analysis`` of the package in ``src`` (an old revision's ``src/``, first on the
    path: whether vpeft.analysis is one module or a package there)."""
    code = ("import sys\n"
            f"sys.path.insert(0, {str(src)!r})\n"
            "from vpeft.analysis import run_task_analysis\n"
            f"run_task_analysis({str(study_dir)!r}, {task!r}, {methods!r}, top_ks=(2, 3, 5), "
            "confidence_threshold=0.9)\n")
    return [sys.executable, "-c", code]


def run_size(name: str, root: Path, old: str | None = None) -> dict[str, Any]:
    """Fabricate ``SIZES[name]`` under ``root`` and measure the analysis on it."""
    from vpeft.analysis import memory_mb

    size = SIZES[name]
    runs = root / "runs"
    methods = study_methods(size, runs)
    study_dir = runs / size.study
    start = time.perf_counter()
    fabricate(study_dir, size.task, methods, size.num_test, size.num_classes)
    result: dict[str, Any] = {
        "size": name, "study": size.study, "task": size.task, "num_test": size.num_test,
        "num_classes": size.num_classes, "num_methods": len(methods),
        "logits_mib": len(methods) * size.num_test * size.num_classes * 4 / 2**20,
        "fabricate_s": time.perf_counter() - start,
        "requested_mb": memory_mb(size.num_test, size.num_classes, len(methods)),
        "new": measure(analyze_cmd(size, runs), root / f"{name}-analyze.log")}
    if old is not None:
        archive = subprocess.run(["git", "archive", old, "src"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        (root / "old").mkdir(exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(root / "old")], input=archive, check=True)
        result["old"] = {"revision": old, **measure(
            revision_cmd(root / "old" / "src", study_dir, size.task, methods),
            root / f"{name}-old.log")}
    return result


def machine() -> dict[str, Any]:
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["sun397"])
    parser.add_argument("--old", help="also measure vpeft.analysis of this git revision")
    parser.add_argument("--out", type=Path, help="write analysis_memory.json here")
    parser.add_argument("--keep", type=Path, help="fabricate under this directory (kept)")
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {"machine": machine(), "results": []}
    for name in args.sizes:
        with tempfile.TemporaryDirectory(prefix="vpeft-analysis-memory-") as tmp:
            root = args.keep / name if args.keep else Path(tmp)
            doc["results"].append(run_size(name, root, args.old))
        print(json.dumps(doc["results"][-1], indent=2), flush=True)
    if args.out:
        from vpeft.io import write_json

        write_json(args.out / "analysis_memory.json", doc)
    return 0 if all(r["new"]["returncode"] == 0 for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
