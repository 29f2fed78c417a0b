"""``python -m vpeft <verb>``: every pipeline step, each one a Snakemake rule.

Every verb takes ``--study NAME`` and any number of Hydra overrides (``-o train.epochs=5``); it
reads the paths it works on from the composed config (``vpeft.layout``), the same paths the
Snakefile declares.

This module is only the verb table (:data:`VERBS`): each verb is its arguments and one call into
the module that owns the work, imported inside the verb so that a verb loads only what it uses
(``vpeft plan`` never imports torch).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger("vpeft")


def _plan(args: argparse.Namespace):
    from vpeft.config import load_study
    from vpeft.machine import apply_cpu_kernels

    plan = load_study(args.study, args.override)
    # before any torch operation: the kernel switches are read once, at torch's first use
    apply_cpu_kernels(plan.cfg.train.get("cpu_kernels", "native"))
    return plan


def _claim_gpu(plan) -> None:
    """A local job's own GPU (vpeft.gpu_slots) for the verbs whose rule asks for one, before
    anything touches CUDA."""
    from vpeft.gpu_slots import claim_for_training

    claim_for_training(plan.cfg.train.get("device", "auto"))


# --- the verbs -----------------------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> None:
    from vpeft.jobs import plan_summary

    print(json.dumps(plan_summary(_plan(args)), indent=2))


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a whole study's data and weights, count its jobs and disk; 1 on any problem."""
    from vpeft.check import check_study, format_check

    check = check_study(_plan(args), decode=not args.no_decode)
    print(format_check(check))
    return 0 if check.ok else 1


def cmd_synth(args: argparse.Namespace) -> None:
    from vpeft import layout
    from vpeft.kinds import study_kind

    plan = _plan(args)
    study_kind(plan.cfg).synthesize(args.task, seed=args.seed)
    log.info("generated %s", layout.data_root_dir(plan.cfg, args.task))


def cmd_prepare(args: argparse.Namespace) -> None:
    from vpeft.kinds import study_kind

    manifest = study_kind(_plan(args).cfg).prepare(args.task)
    log.info("prepared %s: %s", args.task, {k: v["count"] for k, v in manifest["splits"].items()})


def cmd_subsets(args: argparse.Namespace) -> None:
    from vpeft.data.manyshot import write_view
    from vpeft.kinds import study_kind

    plan = _plan(args)
    write_view(plan.cfg, args.task, study_kind(plan.cfg).raw_task(args.task))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from vpeft.train.pretrain import pretrain

    pretrain(_plan(args).cfg)


def cmd_train(args: argparse.Namespace) -> None:
    from vpeft.protocol import job_methods, train_job

    plan = _plan(args)
    methods = job_methods(plan, args.method)
    _claim_gpu(plan)  # local multi-GPU: a GPU of its own
    train_job(plan, args.task, methods, args.phase, seed=args.seed, point_ids=args.point,
              all_points=args.points == "all")


def cmd_select(args: argparse.Namespace) -> None:
    from vpeft.protocol import job_methods, select

    plan = _plan(args)
    for method in job_methods(plan, args.method):
        select(plan, args.task, method)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from vpeft.protocol import evaluate, job_methods

    plan = _plan(args)
    for method in job_methods(plan, args.method):
        evaluate(plan, args.task, method, seed=args.seed)


def cmd_analyze(args: argparse.Namespace) -> None:
    from vpeft import layout
    from vpeft.analysis import run_task_analysis

    plan = _plan(args)
    run_task_analysis(layout.runs_dir(plan.cfg), args.task, plan.methods,
                      top_ks=list(plan.cfg.analysis.top_ks),
                      confidence_threshold=float(plan.cfg.analysis.confidence_threshold))
    log.info("analysis of %s: %s", args.task, layout.analysis_dir(plan.cfg, args.task))
    # The report's reading and bootstrapping of this task, done here once (on this task's node)
    from vpeft.report.build import save_report_part

    path, error = save_report_part(plan, args.task)
    if error:
        log.warning("%s: not collected for the report (%s); the report will read the task "
                    "itself", args.task, error)
    else:
        log.info("collected for the report: %s", path)


def cmd_report(args: argparse.Namespace) -> None:
    import os

    # One BLAS thread, set before numpy loads: the bootstrap's small matrix products gain nothing
    # from more, and OpenBLAS's spinning threads made the report 3x slower on a busy machine
    # (docs/benchmarks.md); parallel work goes to worker processes (vpeft.report.parallel).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from vpeft.report.build import write_report

    log.info("report: %s", write_report(_plan(args)))


def cmd_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vpeft.export import export

    print(export(_plan(args), args.task, args.method, args.format,
                 Path(args.out) if args.out else None))


def _parse_value(text: str):
    """``8`` -> 8, ``0.1`` -> 0.1, ``true`` -> True, anything else stays a string."""
    import yaml

    return yaml.safe_load(text)


def cmd_params(args: argparse.Namespace) -> None:
    """Trainable parameters of a method on a timm model, built on the meta device (no weights)."""
    from vpeft.errors import UserError

    hparams = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        hparams[key] = _parse_value(value)
    from vpeft.methods import trainable_on_timm

    print(json.dumps(trainable_on_timm(args.model, args.method, hparams, args.classes), indent=2))


# the robustness study (vpeft.robustness.pipeline)

def cmd_imagenet_split(args: argparse.Namespace) -> None:
    from vpeft.robustness.pipeline import imagenet_split

    imagenet_split(_plan(args).cfg, args.task)


def cmd_prepare_shift(args: argparse.Namespace) -> None:
    from vpeft.robustness.pipeline import prepare_shift

    prepare_shift(_plan(args).cfg, args.shift)


def cmd_zeroshot_head(args: argparse.Namespace) -> None:
    from vpeft.robustness.pipeline import zeroshot_head

    zeroshot_head(_plan(args).cfg)


def cmd_wise(args: argparse.Namespace) -> None:
    from vpeft.robustness.pipeline import run_wise

    plan = _plan(args)
    _claim_gpu(plan)  # model forward passes on the job's GPU (its rule asks for one)
    run_wise(plan, args.task, args.method, args.seed)


def cmd_robust_synth(args: argparse.Namespace) -> None:
    from vpeft.demo.robustness import write_miniature_trees

    write_miniature_trees(_plan(args).cfg)


def cmd_fit_clip(args: argparse.Namespace) -> None:
    from vpeft.demo.robustness import fit_clip

    fit_clip(_plan(args).cfg)


# --- arguments -----------------------------------------------------------------------------------

Arguments = Callable[[argparse.ArgumentParser], None]


def _study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default="demo", help="params/study/<name>.yaml (default: demo)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override, repeatable (e.g. -o train.epochs=5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)


def _method(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True)


def _methods(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, action="append",
                   help="repeat to run several methods one after another in one process")


def _final_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None,
                   help="final run of this seed of train.seeds (default: the first; "
                        "its run is final/, another seed's final-seed<S>/)")


def _synth_seed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)


def _no_decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-decode", action="store_true",
                   help="check list files and that images exist, without decoding them")


def _shift(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shift", required=True, help="a key of study.robustness.shifts")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["merged", "peft"], default="merged",
                   help="merged: plain timm checkpoint; peft: Hugging Face peft adapter "
                        "directory (lora only)")
    p.add_argument("--out", help="output file or directory (default: inside final/)")


def _grid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phase", choices=["grid", "final"], default="grid")
    p.add_argument("--point", action="append", default=[],
                   help="grid point id (see `vpeft plan`); repeat to train several "
                        "points of the method together in one process")
    p.add_argument("--points", choices=["all"], help="all: every grid point of each --method")


def _params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    p.add_argument("--method", required=True)
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter, repeatable (e.g. -p rank=8)")
    p.add_argument("--classes", type=int, default=100, help="head size")
    p.add_argument("--threads", type=int, default=None)


# --- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verb:
    run: Callable[[argparse.Namespace], int | None]  # its exit status (None: 0)
    help: str
    arguments: tuple[Arguments, ...] = ()
    description: str | None = None  # `vpeft <verb> --help` (default: help)


VERBS: dict[str, Verb] = {
    "params": Verb(cmd_params, "trainable parameters of a method on a timm model (JSON)",
                   (_params,), description=cmd_params.__doc__),
    "plan": Verb(cmd_plan, "print the study's tasks, methods and grid points as JSON", (_study,)),
    "check": Verb(cmd_check, "preflight: validate every task's data and the weights, count the "
                             "study's jobs and disk, before anything is queued",
                  (_study, _no_decode)),
    "synth": Verb(cmd_synth, "generate one synthetic demo task in the VTAB-1K on-disk format",
                  (_study, _task, _synth_seed)),
    "prepare": Verb(cmd_prepare, "validate a VTAB-1K task and write its Parquet shards",
                    (_study, _task)),
    "subsets": Verb(cmd_subsets, "many-shot: draw (once) or read a task's saved subset index and "
                                 "write its VTAB-layout view", (_study, _task)),
    "pretrain": Verb(cmd_pretrain, "pretrain the demo backbone on the synthetic source set",
                     (_study,)),
    "train": Verb(cmd_train, "train grid points (train800 -> val200) or the final run",
                  (_study, _task, _methods, _final_seed, _grid)),
    "select": Verb(cmd_select, "choose the grid point with the best val200 top-1",
                   (_study, _task, _methods)),
    "evaluate": Verb(cmd_evaluate, "score the final run on test (reads test labels, once)",
                     (_study, _task, _methods, _final_seed)),
    "analyze": Verb(cmd_analyze, "agreement, mistakes, oracle and ensembles of a task's final runs",
                    (_study, _task)),
    "report": Verb(cmd_report, "collect results into Parquet tables and render the HTML report",
                   (_study,)),
    "export": Verb(cmd_export, "fold a final run's method into a plain timm checkpoint",
                   (_study, _task, _method, _export)),
    # the robustness study (vpeft.robustness.pipeline)
    "imagenet-split": Verb(cmd_imagenet_split,
                           "robustness: seeded few-shot train/val split as a task view",
                           (_study, _task)),
    "prepare-shift": Verb(cmd_prepare_shift, "robustness: prepare one distribution-shift test set",
                          (_study, _shift)),
    "zeroshot-head": Verb(cmd_zeroshot_head,
                          "robustness: the CLIP zero-shot head (model.init_head)", (_study,)),
    "wise": Verb(cmd_wise, "robustness: WiSE-FT curve of a final run on ID and shift sets",
                 (_study, _task, _method, _final_seed)),
    "robust-synth": Verb(cmd_robust_synth, "robustness miniature: write its shifted image trees",
                         (_study,)),
    "fit-clip": Verb(cmd_fit_clip, "robustness miniature: fit its tiny CLIP text tower",
                     (_study,)),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpeft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help, description=verb.description or verb.help)
        for arguments in verb.arguments:
            arguments(p)
        p.set_defaults(func=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from vpeft.errors import Preempted, UserError

    try:
        status = args.func(args)
    except Preempted as err:
        # 128 + SIGTERM: a failure to the scheduler, so it retries; the rerun resumes.
        print(f"vpeft {args.verb}: {err}", file=sys.stderr)
        return 143
    except UserError as err:
        # User-facing errors: one clear line, no traceback.
        print(f"vpeft {args.verb}: error: {err}", file=sys.stderr)
        return 2
    return int(status or 0)
