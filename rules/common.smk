# The study plan (tasks x methods x grid points) and the paths every rule shares with the CLI.
import shlex
import sys

from vpeft import layout
from vpeft.config import load_study

OVERRIDES = list(config["overrides"])
if config.get("data_root"):
    OVERRIDES.append(f"study.data.root={config['data_root']}")
if config.get("weights"):
    OVERRIDES.append(f"model.weights={config['weights']}")

PLAN = load_study(config["study"], OVERRIDES)
CFG = PLAN.cfg
STUDY = PLAN.name
RUNS = f"{CFG.paths.runs}/{STUDY}"
PREPARED = f"{CFG.paths.data}/prepared/{STUDY}"
LOGS = f"logs/{STUDY}"
WEIGHTS = str(CFG.model.weights)
REPORT = str(layout.report_dir(CFG) / "index.html")


wildcard_constraints:
    task=r"[^/]+",
    method=r"[^/]+",
    point=r"[^/]+",


# Training jobs ask for one GPU through the executor's resources (the slurm plugin turns them into
# --gpus / --cpus-per-gpu; set gpu_model=... in a user profile to pin a model). Their time limit
# grows with each retry. Local runs ignore all of this.
GPU_JOB = {
    "gpu": 1,
    "cpus_per_gpu": config["threads"],
    "runtime": lambda wildcards, attempt: config["train_runtime_min"] * attempt,
    "mem_mb": 16000,
}


def vpeft(verb):
    """The shell command of one CLI verb, with this run's study and overrides."""
    args = [sys.executable, "-m", "vpeft", verb, "--study", STUDY]
    for override in OVERRIDES:
        args += ["-o", override]
    return " ".join(shlex.quote(a) for a in args)


def grid_metrics(wildcards):
    return [f"{RUNS}/{wildcards.task}/{wildcards.method}/grid/{p.id}/{layout.METRICS}"
            for p in PLAN.points[wildcards.method]]
