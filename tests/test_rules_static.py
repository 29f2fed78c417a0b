"""The training jobs Snakemake plans are those vpeft.jobs packs, for every study and packing
variant (tests/dag_listing.py: per point, fused chunks of points, groups of methods, several
seeds), with the outputs, command, log, time limit, priority and group each job had when the rules
were rewritten (issue 25: DAG unchanged); and the rules stay written out, not generated in loops,
except where a job's outputs are a list Snakemake cannot derive from wildcards."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dag_listing import VARIANTS, planned_jobs
from vpeft import jobs, layout
from vpeft.config import load_study

from conftest import REPO

TRAINING_VERBS = ("train", "select", "evaluate")


def _job(outputs, verb, args, log, runtime=None, priority="", group=""):
    return tuple(outputs), {"verb": verb, "args": args, "log": log, "runtime": runtime,
                            "priority": priority, "group": group}


def _methods_args(methods):
    return " ".join(f"--method {m}" for m in methods)


def _files(directory: Path, names) -> list[str]:
    return [str(directory / name) for name in names]


def _grid_files(plan, task, runs) -> list[str]:
    """The files of (method, point id) runs of ``task``."""
    return [f for m, p in runs for f in _files(layout.grid_dir(plan.cfg, task, m, p),
                                                layout.GRID_OUTPUTS)]


def _final_jobs(plan, task, methods, logs, runtime, threads):
    """Select, then each seed's final training and evaluation, of ``methods`` (one job each)."""
    cfg, first = plan.cfg, layout.seeds(plan.cfg)[0]
    margs = _methods_args(methods)
    yield _job([str(layout.selection_file(cfg, task, m)) for m in methods], "select",
               f"--task {task} {margs}", f"{logs}/select.log")
    for seed in layout.seeds(cfg):
        dirs = [layout.final_dir(cfg, task, m, seed) for m in methods]
        name, seeded = dirs[0].name, "" if seed == first else f" --seed {seed}"
        one_method = len(methods) == 1 and not jobs.groups_methods(cfg.train)
        evaluate_log = f"{logs}/evaluate{name.removeprefix('final')}.log" if one_method \
            else f"{logs}/evaluate-{name}.log"
        yield _job([f for d in dirs for f in _files(d, layout.FINAL_OUTPUTS)], "train",
                   f"--phase final --task {task} {margs}{seeded} --threads {threads}",
                   f"{logs}/{name}.log", runtime * len(methods))
        yield _job([f for d in dirs for f in _files(d, layout.EVAL_OUTPUTS)], "evaluate",
                   f"--task {task} {margs}{seeded}", evaluate_log, 5, group="bookkeeping")


def expected_training_jobs(plan, runtime: int, threads: int) -> dict:
    """Every grid, select, final and evaluate job of ``plan`` as vpeft.jobs packs them, by their
    outputs."""
    expected = []
    for task in plan.tasks:
        logs = f"logs/{plan.name}/{task}"
        if jobs.groups_methods(plan.cfg.train):
            for g, methods in enumerate(jobs.method_groups(plan), start=1):
                runs = [(m, p.id) for m in methods for p in plan.points[m]]
                expected.append(_job(
                    _grid_files(plan, task, runs), "train",
                    f"--phase grid --task {task} {_methods_args(methods)} --points all"
                    f" --threads {threads}", f"{logs}/group{g}/grid.log", runtime * len(runs), "1"))
                expected += _final_jobs(plan, task, methods, f"{logs}/group{g}", runtime, threads)
            continue
        for m in plan.methods:
            one_each = jobs.points_per_job(plan.cfg.train) == 1
            chunks = jobs.grid_chunks(plan, m) if not one_each else \
                [[p.id] for p in plan.points[m]]
            for k, ids in enumerate(chunks, start=1):
                log = f"{ids[0]}.log" if one_each else f"points-{k}-of-{len(chunks)}.log"
                expected.append(_job(
                    _grid_files(plan, task, [(m, p) for p in ids]), "train",
                    f"--phase grid --task {task} --method {m} "
                    + " ".join(f"--point {p}" for p in ids) + f" --threads {threads}",
                    f"{logs}/{m}/grid/{log}", runtime * len(ids), "1"))
            expected += _final_jobs(plan, task, [m], f"{logs}/{m}", runtime, threads)
    return dict(expected)


# verb, then what follows the study and its overrides, then the log
_SHELL = re.compile(r"<python> -m vpeft (\w+) --study \S+(?: -o (?:'[^']*'|\S+))* (.*)"
                    r" > (\S+) 2>&1$")


def planned_training_jobs(variant: str) -> dict:
    planned = []
    for job in planned_jobs(variant):
        m = _SHELL.match(job.get("shell", ""))
        if not m or m.group(1) not in TRAINING_VERBS:
            continue
        assert m.group(3) == job["log"], job
        resources = dict(r.split("=", 1) for r in job["resources"].split(", "))
        if m.group(1) == "train":  # a GPU job, 16 GB
            assert (resources["gpu"], resources["mem_mb"]) == ("1", "16000"), job
        planned.append(_job(job["output"].split(", "), m.group(1), m.group(2), job["log"],
                            int(resources["runtime"]) if "runtime" in resources else None,
                            job.get("priority", ""), job["group"]))
    assert len(planned) == len(dict(planned)), f"{variant}: two jobs with the same outputs"
    return dict(planned)


def _check_variant(variant: str) -> None:
    study, _, config, overrides = VARIANTS[variant]
    settings = dict(item.split("=", 1) for item in config)
    user = {"data_root": "study.data.root", "weights": "model.weights"}
    plan = load_study(study, [*overrides, *(f"{user[k]}={v}" for k, v in settings.items()
                                            if k in user)])
    expected = expected_training_jobs(plan, int(settings.get("train_runtime_min", 120)),
                                      int(settings.get("threads", 1)))
    planned = planned_training_jobs(variant)
    assert set(planned) == set(expected), (variant, sorted(set(planned) ^ set(expected))[:4])
    for outputs, job in expected.items():
        assert planned[outputs] == job, (variant, outputs[0])


# Quick: every rule kind at once (fused chunks with a partial last one, per-method select, final
# and evaluate; groups of methods with a further seed).
@pytest.mark.parametrize("variant", ["smoke_chunks", "smoke_groups"])
def test_training_jobs_are_those_vpeft_jobs_packs(variant):
    _check_variant(variant)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"smoke_chunks", "smoke_groups"}))
def test_training_jobs_of_every_study_are_those_vpeft_jobs_packs(variant):
    _check_variant(variant)


# Loops that generate rules: only over a study's jobs whose outputs are a list of runs (the points
# of a fused grid job, the methods of a group), which Snakemake cannot express with wildcards:
# it takes a rule's outputs from patterns, never from a function.
RULE_LOOPS = {
    "train_per_method.smk": ["for _k, _ids in enumerate(_jobs, start=1):"],
    "train_grouped.smk": ["for _g, _methods in enumerate(jobs.method_groups(PLAN), start=1):"],
}


def _loops_with_rules(text: str) -> list[str]:
    """The innermost `for` lines of ``text`` whose block defines a rule."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not re.match(r"\s*for .*:$", line):
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        for later in lines[i + 1:]:
            if later.strip() and len(later) - len(later.lstrip()) <= indent:
                break
            block.append(later)
        body = "\n".join(block)
        if re.search(r"^\s*(rule|checkpoint)\b", body, re.M) and not re.search(r"^\s*for .*:$",
                                                                                body, re.M):
            found.append(line.strip())
    return found


def test_rules_are_generated_in_loops_only_per_job_of_runs():
    found = {path.name: _loops_with_rules(path.read_text())
             for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]}
    assert {name: loops for name, loops in found.items() if loops} == RULE_LOOPS


def test_loop_detection_sees_a_rule_in_a_loop():
    text = "for x in y:\n\n    rule:\n        name: f'r_{x}'\n        shell: 'true'\nrule b:\n"
    assert _loops_with_rules(text) == ["for x in y:"]
    assert _loops_with_rules("rule a:\n    shell: 'true'\n") == []
