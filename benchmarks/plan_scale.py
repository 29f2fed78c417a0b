"""How long Snakemake takes to plan the full VTAB-1K paper grid (`snakemake -n`).

    python -m benchmarks.plan_scale --out benchmarks/results

Builds, under a temporary directory, a copy of the workflow (Snakefile, rules/, params/), a
stand-in VTAB-1K root (the study's 19 task directories, each with its four list files and one
tiny JPEG per split) and a stand-in weights file, then times
``snakemake -n all --config study=vtab1k data_root=... weights=...`` there: every method of the
study with its paper grid (params/method/*.yaml) on every task, about ten thousand jobs. The
repository itself is not touched. Wall and CPU seconds (user + sys of the child processes) are
reported with the load average, because the machine may be shared. Components are timed on their
own to show where the time goes: the study's config expansion (``vpeft.config.load_study``, in a
fresh process) and Snakemake's fixed start-up (a one-rule workflow), including the SLURM executor
plugin's ``scontrol show config`` probe when ``scontrol`` is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train800", "val200", "train800val200", "test")
TARGET_SECONDS = 30.0


def _env() -> dict[str, str]:
    src = str(REPO / "src")
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH", "")] if p)}


def _timed(cmd: list[str], cwd: Path, log: Path | None = None, timeout: float = 900) -> dict[str, Any]:
    """Run ``cmd``; wall and CPU seconds, exit code, and its output (to ``log`` if given)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log or os.devnull, "w") as sink:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=sink, stderr=subprocess.STDOUT,
                              timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "returncode": proc.returncode,
            "load_average_1min": load}


def write_stand_in(root: Path, tasks: list[str]) -> tuple[Path, Path]:
    """A VTAB-1K-shaped data root (list files + one 8x8 JPEG per split) and a weights file."""
    import numpy as np
    from PIL import Image

    data = root / "vtab-1k"
    for task in tasks:
        for split in SPLITS:
            image = data / task / "images" / split / "000000.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (127, 127, 127)).save(image)
            (data / task / f"{split}.txt").write_text(f"images/{split}/000000.jpg 0\n")
    weights = root / "ViT-B_16.npz"
    np.savez(weights, stand_in=np.zeros(1, np.float32))
    return data, weights


def _copy_workflow(dest: Path) -> None:
    dest.mkdir(parents=True)
    for item in ("Snakefile", "rules", "params"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)


def _jobs(log: Path) -> int | None:
    totals = re.findall(r"^total\s+(\d+)\s*$", log.read_text(errors="replace"), re.MULTILINE)
    return int(totals[-1]) if totals else None


def measure_plan_scale(study: str = "vtab1k", repeats: int = 1) -> dict[str, Any]:
    from vpeft.config import load_study

    snakemake = [sys.executable, "-m", "snakemake"]
    with tempfile.TemporaryDirectory(prefix="vpeft-plan-scale-") as tmp:
        root = Path(tmp)
        workflow = root / "workflow"
        _copy_workflow(workflow)
        cwd = os.getcwd()
        try:  # the task list, from the workflow's own params/ (no data needed to compose it)
            os.chdir(workflow)
            plan = load_study(study, ["study.data.root=/stand-in", "model.weights=/stand-in.npz"])
        finally:
            os.chdir(cwd)
        tasks = list(plan.tasks)
        data, weights = write_stand_in(root, tasks)
        config = ["--config", f"study={study}", f"data_root={data}", f"weights={weights}"]
        cases = [("snakemake -n (every job printed, to a file)", [], []),
                 ("snakemake -n --quiet rules (job table only)", ["--quiet", "rules"], [])]
        if "points_per_job" in plan.cfg.train:  # grid points batched into jobs: also one per job
            cases.append(("snakemake -n, one job per grid point (train.points_per_job=1)", [],
                          ["train.points_per_job=1"]))
        variants = []
        for name, extra, overrides in cases:
            more = [f"overrides={json.dumps(overrides)}"] if overrides else []
            for repeat in range(repeats):
                log = root / f"plan-{len(variants)}.log"
                timing = _timed([*snakemake, "-n", "all", *extra, *config, *more], workflow, log)
                if timing["returncode"] != 0:
                    raise RuntimeError(f"{name} failed ({timing['returncode']}):\n"
                                       f"{log.read_text()[-3000:]}")
                variants.append({"name": name, "overrides": overrides, "repeat": repeat,
                                 "jobs": _jobs(log), **timing})

        components: dict[str, float] = {}
        probe = ("from vpeft.config import load_study; import time; t = time.perf_counter(); "
                 f"load_study({study!r}, ['study.data.root={data}', 'model.weights={weights}']); "
                 "print(time.perf_counter() - t)")
        proc = subprocess.run([sys.executable, "-c", probe], cwd=workflow, env=_env(),
                              capture_output=True, text=True, check=True)
        components["vpeft.config.load_study (Hydra compose + grids)"] = float(proc.stdout.split()[-1])
        components["python -c 'import vpeft.config' + load_study, fresh process"] = _timed(
            [sys.executable, "-c", probe], workflow)["wall_seconds"]
        trivial = root / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text("rule all:\n    output: 'x'\n    shell: 'touch x'\n")
        components["snakemake -n of a one-rule workflow (start-up)"] = _timed(
            [*snakemake, "-n", "all"], trivial)["wall_seconds"]
        if shutil.which("scontrol"):  # the SLURM plugin runs this while Snakemake parses its CLI
            components["scontrol show config (SLURM plugin probe)"] = _timed(
                ["scontrol", "show", "config"], root, timeout=60)["wall_seconds"]
    main_runs = [v for v in variants if v["name"] == cases[0][0]]
    best = min(v["wall_seconds"] for v in main_runs)
    return {"command": f"snakemake -n all --config study={study} data_root=<stand-in> "
                       "weights=<stand-in>",
            "study": study, "tasks": len(tasks), "variants": variants, "components": components,
            "target_seconds": TARGET_SECONDS, "best_wall_seconds": best,
            "meets_target": best <= TARGET_SECONDS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plan_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default="vtab1k")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)

    from benchmarks.report import plan_scale_lines
    from vpeft.io import atomic_path, write_json

    result = measure_plan_scale(args.study, args.repeats)
    write_json(args.out / f"plan_scale-{args.study}.json", result)
    text = "\n".join(plan_scale_lines(result)).lstrip() + "\n"
    with atomic_path(args.out / f"plan_scale-{args.study}.md") as tmp:
        tmp.write_text(text)
    print(text)
    print(f"target {TARGET_SECONDS:.0f} s: {'met' if result['meets_target'] else 'NOT met'} "
          f"(best {result['best_wall_seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
