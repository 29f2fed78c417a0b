"""The jobs `snakemake --dry-run` plans for every study and job-packing variant (VARIANTS), as a
normalised listing: one block per job (rule, group, outputs, inputs, log, benchmark, wildcards,
priority, threads, resources, shell command), sorted by outputs, with the work directory and the
interpreter replaced by placeholders. tests/test_rules_static.py checks the training jobs in it
against vpeft.jobs. To show that a change to rules/ leaves the DAG as it was:

    PYTHONPATH=src python tests/dag_listing.py write /tmp/before   # all variants (2-3 min)
    ... change rules/ ...
    PYTHONPATH=src python tests/dag_listing.py write /tmp/after
    diff -r /tmp/before /tmp/after                                # rule renames show up here
    PYTHONPATH=src python tests/dag_listing.py show smoke_groups   # one variant, to stdout
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Placeholder inputs (created empty in the work directory) that make the user-data studies
# plannable; the dry run reads no file's content.
_VTAB_ROOT = "inputs/vtab-1k"
_ROBUST = {"study.robustness.train.root": "inputs/imagenet/train",
           "study.robustness.test.root": "inputs/imagenet/val",
           "study.robustness.test.devkit": "inputs/imagenet/devkit",
           "study.robustness.shifts.imagenet_v2.root": "inputs/imagenet-v2",
           "study.robustness.shifts.imagenet_sketch.root": "inputs/imagenet-sketch",
           "study.robustness.shifts.imagenet_a.root": "inputs/imagenet-a",
           "study.robustness.shifts.imagenet_r.root": "inputs/imagenet-r"}
_ROBUST_CLIP = "inputs/open_clip_pytorch_model.bin"

# name: (study, target, extra `snakemake --config` items, Hydra overrides)
VARIANTS: dict[str, tuple[str, str, list[str], list[str]]] = {
    # smoke groups both methods (methods_per_job: 0) and has two seeds
    "smoke": ("smoke", "all", [], []),
    "smoke_per_method": ("smoke", "all", [], ["train.methods_per_job=1"]),
    "smoke_per_point": ("smoke", "all", [], ["train.methods_per_job=1", "train.points_per_job=1",
                                            "train.seeds=[1,2,3]"]),
    "smoke_chunks": ("smoke", "all", ["threads=2", "train_runtime_min=30"],
                     ["train.methods_per_job=1", "study.methods=[linear,lora,adapter]",
                      "train.seeds=[5]", "train.points_per_job=2",
                      "study.grid.lora.optim.lr=[0.001,0.01,0.1]"]),
    "smoke_groups": ("smoke", "all", [], ["train.methods_per_job=2", "train.seeds=[1,2]",
                                         "study.methods=[linear,lora,adapter]"]),
    "demo": ("demo", "all", [], []),
    "demo_per_method": ("demo", "all", [], ["train.methods_per_job=1", "train.seeds=[42,7]"]),
    "demo_manyshot": ("demo_manyshot", "all", [], []),
    "demo_robustness": ("demo_robustness", "all", [], []),
    "vtab1k": ("vtab1k", "all", [f"data_root={_VTAB_ROOT}", "weights=inputs/vit.npz"],
               ["study.tasks=[dtd,eurosat]"]),
    "vtab1k_per_point": ("vtab1k", "all", [f"data_root={_VTAB_ROOT}", "weights=inputs/vit.npz"],
                         ["study.tasks=[dtd]", "train.points_per_job=1"]),
    "vtab1k_groups": ("vtab1k", "all", [f"data_root={_VTAB_ROOT}", "weights=inputs/vit.npz"],
                      ["study.tasks=[dtd]", "train.methods_per_job=3", "train.seeds=[42,7]"]),
    "manyshot": ("manyshot", "all", ["data_root=inputs/manyshot", "weights=inputs/vit.npz"], []),
    "robustness": ("robustness", "all", ["weights=inputs/clip.safetensors"],
                   [f"study.robustness.clip.weights={_ROBUST_CLIP}",
                    *(f"{k}={v}" for k, v in _ROBUST.items())]),
}


def _placeholders(workdir: Path) -> None:
    for task in ("dtd", "eurosat"):
        (workdir / _VTAB_ROOT / task).mkdir(parents=True, exist_ok=True)
    for d in ("manyshot/cifar-100-python", "manyshot/NWPU-RESISC45", "manyshot/clevr_dist/images",
              *(p.removeprefix("inputs/") for p in _ROBUST.values())):
        (workdir / "inputs" / d).mkdir(parents=True, exist_ok=True)
    for f in ("vit.npz", "clip.safetensors", "open_clip_pytorch_model.bin",
              "manyshot/cifar-100-python/train", "manyshot/cifar-100-python/test",
              "manyshot/cifar-100-python/meta", "manyshot/clevr_dist/train.txt",
              "manyshot/clevr_dist/test.txt"):
        (workdir / "inputs" / f).touch()


def dry_run(workdir: Path, variant: str) -> str:
    """The raw `snakemake --dry-run --printshellcmds` output of ``variant`` in ``workdir``."""
    study, target, config, overrides = VARIANTS[variant]
    override = "overrides=[" + ",".join(f'"{o}"' for o in overrides) + "]"
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--dry-run", "--printshellcmds",
                           "--cores", "4", target, "--config", f"study={study}", *config, override],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}: snakemake -n failed\n"
                           f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


_KEYS = ("output", "input", "log", "benchmark", "wildcards", "priority", "threads", "resources")


def parse(text: str, workdir: Path) -> list[dict[str, str]]:
    """The jobs of a dry run's output: rule, group ("" if none) and the _KEYS and shell that
    Snakemake printed, with the work directory and interpreter replaced by placeholders."""
    python = os.path.join(sys.prefix, "bin", "python")
    text = text.replace(str(workdir) + "/", "<wd>/").replace(python, "<python>")
    jobs: list[dict[str, str]] = []
    job, group = None, ""
    for line in text.splitlines():
        stripped = line.strip()
        if m := re.match(r".*Group job (\S+) ", line):
            group = m.group(1)
        elif m := re.match(r"(\s*)(?:local)?rule (\w+):$", line):
            job = {"rule": m.group(2), "group": group if m.group(1) else ""}
            jobs.append(job)
            if not m.group(1):
                group = ""
        elif job is not None and stripped.startswith("Shell command: "):
            if stripped != "Shell command: None":  # a target rule's
                job["shell"] = stripped.removeprefix("Shell command: ")
        elif job is not None and (m := re.match(r"(\w+): (.*)$", stripped)) and m.group(1) in _KEYS:
            value = m.group(2)
            if m.group(1) == "resources":  # tmpdir is the machine's
                value = ", ".join(r for r in value.split(", ") if not r.startswith("tmpdir="))
            job[m.group(1)] = value
    return jobs


def normalise(jobs: list[dict[str, str]]) -> str:
    """One block per job, sorted by outputs (see the module doc)."""
    blocks = []
    for job in jobs:
        head = f"rule {job['rule']}" + (f" (group {job['group']})" if job["group"] else "")
        body = [f"  {k}: {job[k]}" for k in (*_KEYS, "shell") if k in job]
        blocks.append("\n".join([head, *body]))
    return "\n\n".join(sorted(blocks, key=lambda b: (b.split("\n")[1], b))) + "\n"


def planned_jobs(variant: str, root: Path | None = None) -> list[dict[str, str]]:
    """The jobs `snakemake -n` plans for ``variant`` (in a fresh copy of the workflow)."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        workdir = Path(tmp).resolve()
        for item in ("Snakefile", "rules", "params"):
            src = REPO / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / item)
        _placeholders(workdir)
        return parse(dry_run(workdir, variant), workdir)


def listing(variant: str) -> str:
    """The normalised dry-run listing of ``variant``."""
    return normalise(planned_jobs(variant))


def main(argv: list[str]) -> int:
    if argv[:1] == ["show"]:
        for variant in argv[1:] or VARIANTS:
            print(listing(variant), end="")
        return 0
    if argv[:1] == ["write"] and len(argv) > 1:
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        for variant in argv[2:] or VARIANTS:
            text = listing(variant)
            (out / f"{variant}.txt").write_text(text)
            print(f"{variant}: {text.count(chr(10) + chr(10)) + 1} jobs")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
