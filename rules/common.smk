# The study plan (tasks x methods x grid points) and the paths every rule shares with the CLI.
import os
import shlex
import sys
from pathlib import Path

from vpeft import layout
from vpeft.config import load_study
from vpeft.kinds import study_kind

OVERRIDES = list(config["overrides"])
if config.get("data_root"):
    OVERRIDES.append(f"study.data.root={config['data_root']}")
if config.get("weights"):
    OVERRIDES.append(f"model.weights={config['weights']}")

PLAN = load_study(config["study"], OVERRIDES)
CFG = PLAN.cfg
STUDY = PLAN.name
KIND = study_kind(CFG)  # the study's kind decides the data rules (vpeft.kinds)
# Every artefact path comes from vpeft.layout (wildcards as patterns: "{task}"); only the logs and
# benchmarks, which no verb reads, are named here (under LOGS).
RUNS = str(layout.runs_dir(CFG))
PREPARED_TASK = str(layout.prepared_task(CFG, "{task}"))
LOGS = f"logs/{STUDY}"
WEIGHTS = str(CFG.model.weights)
REPORT = str(layout.report_dir(CFG) / layout.REPORT_INDEX)
# The robustness study starts every run from the zero-shot head (rule zeroshot_head).
INIT_HEAD = [str(CFG.model.init_head)] if CFG.model.get("init_head") else []
REPORT_EXTRA_INPUTS = []  # filled by rules included later (robustness.smk)


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


# Training jobs' memory and time come from the study's calibration file (vpeft.requests: measured
# by benchmarks.rehearse, x documented safety factors, scaled by points, epochs and split sizes);
# without one they fall back to GPU_JOB's constants, and the log says so. WiSE-FT jobs take theirs
# from it too (rules/robustness.smk, wise_job).
from vpeft.requests import Requests

REQUESTS = Requests.of(CFG, config["train_runtime_min"])


def train_job(phase, methods=None, points=1):
    """Resources of a job training ``points`` points (of each, or per method) of ``methods``
    (default: the rule's {method} wildcard) in ``phase``. The lambdas hold this call's arguments, not a loop variable
    that a later rule of a loop would change."""
    def ask(wildcards, attempt):
        return REQUESTS.train(wildcards.task, methods or [wildcards.method], phase, points,
                              attempt)

    out = {"gpu": 1, "cpus_per_gpu": config["threads"],
           "runtime": lambda wildcards, attempt: ask(wildcards, attempt)["runtime"],
           "mem_mb": lambda wildcards, attempt: ask(wildcards, attempt)["mem_mb"]}
    if REQUESTS.data is not None and any(d.startswith("cuda") for d in REQUESTS.data["devices"]):
        out["gpu_mem_mb"] = lambda wildcards, attempt: ask(wildcards, attempt).get("gpu_mem_mb", 0)
    return out


# Short CPU-only jobs (evaluate, analyze) of one task run as ONE SLURM job: they share the group
# "bookkeeping" (a task's evaluations feed its analysis, so they are connected). Each takes the
# one unit of `group_width` a group job has on a cluster, so Snakemake stacks them in series:
# the group asks 1 CPU and one job's memory, with the runtimes summed. The unit is registered
# here rather than by `--resources` in the profile because Snakemake does not pass --resources on
# to the process that runs the group inside its SLURM job, which would then size its job step
# for all members at once (more CPUs than the allocation: srun refuses). Local runs: no limit.
BOOKKEEPING_JOB = {
    "group_width": 1,
    "runtime": lambda wildcards, attempt: 5 * attempt,
}


# `select` reads JSON only; `evaluate` holds one method's test logits at a time (sized like
# `analyze`, from what is known when the plan is made: vpeft.analysis.planned_num_test).
SELECT_JOB = {"mem_mb": 1000}

# Grid jobs before final runs when both wait for a core: every selection, hence every final run,
# needs its task's whole grid; a grid left for the end trains alone while the other cores idle.
GRID_PRIORITY = 1


def source_first(wildcards):
    """The pretraining source set is generated and prepared before the tasks: the backbone's
    pretraining, which every training job waits for, needs it."""
    return 1 if wildcards.task == layout.SOURCE_TASK else 0


def _planned_test_shape(task):
    """(test images, classes) of ``task`` as known when the plan is made: the study's
    split_sizes, else the prepared task's manifest (once `prepare` ran), else the planning bound
    vpeft.analysis.PLANNING_NUM_TEST. Never from a job's own inputs: in the bookkeeping group they
    are written by the same SLURM job, after its size was requested."""
    from vpeft.analysis import planned_num_test

    return planned_num_test(CFG, task), KIND.task_entry(task).num_classes


def evaluate_mem_mb(wildcards):
    """Memory of one evaluate job: one method's test logits at a time."""
    from vpeft.protocol import evaluate_memory_mb

    return evaluate_memory_mb(*_planned_test_shape(wildcards.task))


def analyze_mem_mb(wildcards):
    """Memory of one analyze job (vpeft.analysis.memory_mb: measured peak + margin) for the
    task's test size, class count and the study's methods."""
    from vpeft.analysis import memory_mb

    return memory_mb(*_planned_test_shape(wildcards.task), len(PLAN.methods))


EVALUATE_JOB = {**BOOKKEEPING_JOB, "mem_mb": evaluate_mem_mb}


resource_scopes:
    group_width="local",  # per group job, not a cap on the whole run


if workflow.resource_settings.nodes is not None:  # --jobs N with a cluster executor
    workflow.register_resource("group_width", 1)


# The environment's canonical interpreter, not sys.executable: the latter differs between
# `snakemake` (python3) and `python -m snakemake` (python) in one venv, and the command line is
# part of every job's provenance; a different spelling would make Snakemake redo every job.
_PYTHON = os.path.join(sys.prefix, "bin", "python")
PYTHON = (_PYTHON if os.path.realpath(_PYTHON) == os.path.realpath(sys.executable)
          else sys.executable)


def vpeft(verb):
    """The shell command of one CLI verb, with this run's study and overrides."""
    args = [PYTHON, "-m", "vpeft", verb, "--study", STUDY]
    for override in OVERRIDES:
        args += ["-o", override]
    return " ".join(shlex.quote(a) for a in args)


def run_files(directory, names):
    """``<directory>/<name>`` for every name (the files of a run directory), as strings."""
    return [str(Path(directory) / name) for name in names]


def grid_metrics(wildcards):
    return [str(layout.grid_dir(CFG, wildcards.task, wildcards.method, p.id) / layout.METRICS)
            for p in PLAN.points[wildcards.method]]
