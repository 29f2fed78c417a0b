"""``python -m vpeft <verb>``: every pipeline step, each one a Snakemake rule.

Every verb takes ``--study NAME`` and any number of Hydra overrides (``-o train.epochs=5``); it
reads the paths it works on from the composed config (``vpeft.layout``), the same paths the
Snakefile declares.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Callable, Sequence

log = logging.getLogger("vpeft")


def _plan(args: argparse.Namespace):
    from vpeft.config import load_study

    return load_study(args.study, args.override)


def cmd_plan(args: argparse.Namespace) -> None:
    plan = _plan(args)
    points = {m: [p.id for p in plan.points[m]] for m in plan.methods}
    n_grid = len(plan.tasks) * sum(len(v) for v in points.values())
    from vpeft.layout import seeds

    print(json.dumps({"study": plan.name, "tasks": plan.tasks, "methods": plan.methods,
                      "grid_points": points, "grid_runs": n_grid, "seeds": seeds(plan.cfg),
                      "final_runs": len(plan.tasks) * len(plan.methods) * len(seeds(plan.cfg))},
                     indent=2))


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a whole study's data and weights, count its jobs and disk; 1 on any problem."""
    from vpeft.check import check_study, format_check

    check = check_study(_plan(args), decode=not args.no_decode)
    print(format_check(check))
    return 0 if check.ok else 1


def cmd_synth(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vpeft import layout
    from vpeft.demo import synthetic

    plan = _plan(args)
    data = plan.cfg.study.data
    target = Path(data.root) / args.task
    if args.task == layout.SOURCE_TASK:
        synthetic.generate_source(Path(data.root), image_size=int(data.image_size), seed=args.seed)
    elif data.kind == "manyshot":  # a miniature dataset written as class folders or list files
        from vpeft.demo.manyshot import generate_demo_dataset

        generate_demo_dataset(plan.cfg, args.task, seed=args.seed)
    else:
        sizes = {k: v for k, v in data.split_sizes.items() if k != "train800val200"}
        synthetic.generate_task(args.task, Path(data.root), sizes=sizes,
                                image_size=int(data.image_size), seed=args.seed)
    log.info("generated %s", target)


def cmd_prepare(args: argparse.Namespace) -> None:
    from vpeft import layout
    from vpeft.data.catalog import split_sizes, task_entry
    from vpeft.data.vtab import prepare_task

    plan = _plan(args)
    cfg = plan.cfg
    entry = task_entry(cfg, args.task)
    manyshot = cfg.study.data.kind == "manyshot" and args.task != layout.SOURCE_TASK
    sizes = split_sizes(cfg, args.task)
    # Many-shot images are stored larger than the model input (crops happen per batch).
    size = int(cfg.study.data.stored_size) if manyshot else int(cfg.model.img_size)
    manifest = prepare_task(layout.raw_task(cfg, args.task), layout.prepared_task(cfg, args.task),
                            task=args.task, image_size=size,
                            num_classes=entry.num_classes, group=entry.group, split_sizes=sizes,
                            allow_duplicates=bool(cfg.study.data.get("allow_duplicates", False)))
    counts = {k: v["count"] for k, v in manifest["splits"].items()}
    log.info("prepared %s: %s", args.task, counts)


def cmd_subsets(args: argparse.Namespace) -> None:
    from vpeft import layout
    from vpeft.data.manyshot import write_view

    plan = _plan(args)
    write_view(plan.cfg, args.task, layout.raw_task(plan.cfg, args.task))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from vpeft.models.pretrain import pretrain

    pretrain(_plan(args).cfg)


def _methods(plan, args: argparse.Namespace) -> list[str]:
    """The --method values (repeatable: one process for several methods, train.methods_per_job),
    each a method of the study, none twice."""
    from vpeft.errors import UserError

    for method in args.method:
        if method not in plan.points:
            raise UserError(f"--method {method!r}: not in study.methods {plan.methods}")
    if len(set(args.method)) != len(args.method):
        raise UserError(f"--method: a method is named twice in {args.method}")
    return list(args.method)


def cmd_train(args: argparse.Namespace) -> None:
    from vpeft.errors import UserError
    from vpeft.gpu_slots import claim_for_training
    from vpeft.protocol import run_final, run_points

    plan = _plan(args)
    methods = _methods(plan, args)
    claim_for_training(plan.cfg.train.get("device", "auto"))  # local multi-GPU: a GPU of its own
    if args.phase == "final":
        for method in methods:  # one after another, each as its own job would run it
            run_final(plan, args.task, method, seed=args.seed)
        return
    if args.seed is not None:
        raise UserError("vpeft train --phase grid: no --seed; the grid is searched once, "
                        "with the first of train.seeds")
    if bool(args.point) == bool(args.points):
        raise UserError("vpeft train --phase grid needs --point ID (repeatable) or --points all")
    if args.point and len(methods) > 1:
        raise UserError("vpeft train --phase grid: --point names points of one --method; "
                        "with several methods use --points all")
    for method in methods:
        points = plan.points[method] if args.points == "all" else \
            [plan.point(method, point) for point in args.point]
        if len({p.id for p in points}) != len(points):
            raise UserError(f"--point: a grid point is named twice in {args.point}")
        # several points: trained together in one process, each written as its solo run would be
        run_points(plan, args.task, method, points, "grid")


def cmd_select(args: argparse.Namespace) -> None:
    from vpeft.protocol import select

    plan = _plan(args)
    for method in _methods(plan, args):
        select(plan, args.task, method)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from vpeft.protocol import evaluate

    plan = _plan(args)
    for method in _methods(plan, args):
        evaluate(plan, args.task, method, seed=args.seed)


def cmd_analyze(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vpeft import layout
    from vpeft.analysis import run_task_analysis

    plan = _plan(args)
    runs = Path(plan.cfg.paths.runs) / plan.name
    run_task_analysis(runs, args.task, plan.methods)
    log.info("analysis of %s: %s", args.task, layout.analysis_dir(plan.cfg, args.task))
    # The report's reading and bootstrapping of this task, done here once (on this task's node)
    from vpeft.protocol import study_metadata
    from vpeft.report.collect import record_part_error, save_task_part

    try:
        path, error = save_task_part(runs, study_metadata(plan), args.task)
    except Exception as err:  # the study's metadata (prepared manifests) unreadable
        error = f"{type(err).__name__}: {err}"
        path = record_part_error(runs, args.task, error)
    if error:
        log.warning("%s: not collected for the report (%s); the report will read the task "
                    "itself", args.task, error)
    else:
        log.info("collected for the report: %s", path)


def cmd_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vpeft import layout
    from vpeft.export import export_merged, export_peft_adapter, final_model

    plan = _plan(args)
    out = Path(args.out) if args.out else None
    if args.format == "peft":
        model, _ = final_model(plan, args.task, args.method)
        out = out or layout.final_dir(plan.cfg, args.task, args.method) / "peft_adapter"
        print(export_peft_adapter(model, out))
    else:
        print(export_merged(plan, args.task, args.method, out))


def cmd_robustness(args: argparse.Namespace) -> None:
    from vpeft.robustness.pipeline import run_verb

    plan = _plan(args)
    if args.verb == "wise":  # model forward passes on the job's GPU (its rule asks for one)
        from vpeft.gpu_slots import claim_for_training

        claim_for_training(plan.cfg.train.get("device", "auto"))
    run_verb(args.verb, plan, task=getattr(args, "task", None),
             method=getattr(args, "method", None), shift=getattr(args, "shift", None),
             seed=getattr(args, "seed", None))


def _published_csv(name: str | None):
    """``study.published``: a CSV path, or the name of one shipped in vpeft/report/reference."""
    from pathlib import Path

    from vpeft.errors import UserError

    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        path = Path(__file__).parent / "report" / "reference" / name
    if not path.is_file():
        raise UserError(f"study.published: {name!r} is neither a file nor a CSV shipped with vpeft")
    return path


def cmd_report(args: argparse.Namespace) -> None:
    import os
    from pathlib import Path

    # One BLAS thread, set before numpy loads: the bootstrap's small matrix products gain nothing
    # from more, and OpenBLAS's spinning threads made the report 3x slower on a busy machine
    # (docs/benchmarks.md); parallel work goes to worker processes (vpeft.report.parallel).
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from vpeft import layout
    from vpeft.io import write_json
    from vpeft.protocol import study_metadata, versions, git_commit
    from vpeft.report import collect_study, render_report, write_study_tables

    plan = _plan(args)
    study = study_metadata(plan)
    results = collect_study(Path(plan.cfg.paths.runs) / plan.name, study)
    from vpeft.report.robustness import collect_wise  # robustness study: WiSE-FT curves

    collect_wise(results, Path(plan.cfg.paths.runs) / plan.name, study)
    out = layout.report_dir(plan.cfg)
    write_study_tables(results, out)
    # DVC reads metrics and plots from JSON, not Parquet (dvc.yaml: metrics, plots).
    summary = results.summary.to_pylist()
    write_json(out / layout.REPORT_SUMMARY_JSON, summary)
    write_json(out / layout.REPORT_METRICS_JSON,
               {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in summary})
    render_report(results, study, out / layout.REPORT_INDEX,
                  published_csv=_published_csv(plan.cfg.study.get("published")),
                  provenance={"versions": versions(), "git_commit": git_commit()})
    log.info("report: %s", out / layout.REPORT_INDEX)


def _parse_value(text: str):
    """``8`` -> 8, ``0.1`` -> 0.1, ``true`` -> True, anything else stays a string."""
    import yaml

    return yaml.safe_load(text)


def cmd_params(args: argparse.Namespace) -> None:
    """Trainable parameters of a method on a timm model, built on the meta device (no weights)."""
    import torch

    from vpeft._compat import ensure_torchvision_importable
    from vpeft.errors import UserError
    from vpeft.methods import apply, count_trainable

    ensure_torchvision_importable()
    import timm

    hparams = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param {item!r}: expected KEY=VALUE")
        hparams[key] = _parse_value(value)
    try:
        with torch.device("meta"):
            model = timm.create_model(args.model, pretrained=False, num_classes=args.classes)
    except RuntimeError as err:
        raise UserError(f"--model {args.model!r}: {err}") from err
    apply(model, args.method, **hparams)
    counts = count_trainable(model)
    head = counts["trainable_params_with_head"] - counts["trainable_params"]
    backbone = counts["total_params"] - head
    print(json.dumps({"model": args.model, "method": args.method, "hparams": hparams,
                      "num_classes": args.classes, **counts,
                      "trainable_pct_of_backbone": 100.0 * counts["trainable_params"] / backbone},
                     indent=2))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", default="demo", help="params/study/<name>.yaml (default: demo)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override, repeatable (e.g. -o train.epochs=5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _task_method(p: argparse.ArgumentParser, method: bool = True, several: bool = False) -> None:
    p.add_argument("--task", required=True)
    if several:
        p.add_argument("--method", required=True, action="append",
                       help="repeat to run several methods one after another in one process")
    elif method:
        p.add_argument("--method", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpeft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    verbs: dict[str, tuple[Callable, str]] = {
        "plan": (cmd_plan, "print the study's tasks, methods and grid points as JSON"),
        "check": (cmd_check, "preflight: validate every task's data and the weights, count the "
                             "study's jobs and disk, before anything is queued"),
        "synth": (cmd_synth, "generate one synthetic demo task in the VTAB-1K on-disk format"),
        "prepare": (cmd_prepare, "validate a VTAB-1K task and write its Parquet shards"),
        "subsets": (cmd_subsets, "many-shot: draw (once) or read a task's saved subset index and "
                                 "write its VTAB-layout view"),
        "pretrain": (cmd_pretrain, "pretrain the demo backbone on the synthetic source set"),
        "train": (cmd_train, "train grid points (train800 -> val200) or the final run"),
        "select": (cmd_select, "choose the grid point with the best val200 top-1"),
        "evaluate": (cmd_evaluate, "score the final run on test (reads test labels, once)"),
        "analyze": (cmd_analyze, "agreement, mistakes, oracle and ensembles of a task's final runs"),
        "report": (cmd_report, "collect results into Parquet tables and render the HTML report"),
        "export": (cmd_export, "fold a final run's method into a plain timm checkpoint"),
        # the robustness study (vpeft.robustness.pipeline)
        "imagenet-split": (cmd_robustness, "robustness: seeded few-shot train/val split as a task view"),
        "prepare-shift": (cmd_robustness, "robustness: prepare one distribution-shift test set"),
        "zeroshot-head": (cmd_robustness, "robustness: the CLIP zero-shot head (model.init_head)"),
        "wise": (cmd_robustness, "robustness: WiSE-FT curve of a final run on ID and shift sets"),
        "robust-synth": (cmd_robustness, "robustness miniature: write its shifted image trees"),
        "fit-clip": (cmd_robustness, "robustness miniature: fit its tiny CLIP text tower"),
    }
    params = sub.add_parser("params", help="trainable parameters of a method on a timm model (JSON)",
                            description=cmd_params.__doc__)
    params.add_argument("--model", default="vit_base_patch16_224", help="timm model name")
    params.add_argument("--method", required=True)
    params.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="method hyper-parameter, repeatable (e.g. -p rank=8)")
    params.add_argument("--classes", type=int, default=100, help="head size")
    params.add_argument("--threads", type=int, default=None)
    params.set_defaults(func=cmd_params)
    for name, (fn, help_text) in verbs.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name in ("synth", "prepare", "analyze", "subsets"):
            _task_method(p, method=False)
        if name == "synth":
            p.add_argument("--seed", type=int, default=0)
        if name == "check":
            p.add_argument("--no-decode", action="store_true",
                           help="check list files and that images exist, without decoding them")
        if name in ("imagenet-split", "wise"):
            _task_method(p, method=name == "wise")
        if name == "prepare-shift":
            p.add_argument("--shift", required=True, help="a key of study.robustness.shifts")
        if name in ("train", "select", "evaluate"):
            _task_method(p, several=True)
        if name == "export":
            _task_method(p)
        if name in ("train", "evaluate", "wise"):
            p.add_argument("--seed", type=int, default=None,
                           help="final run of this seed of train.seeds (default: the first; "
                                "its run is final/, another seed's final-seed<S>/)")
        if name == "export":
            p.add_argument("--format", choices=["merged", "peft"], default="merged",
                           help="merged: plain timm checkpoint; peft: Hugging Face peft adapter "
                                "directory (lora only)")
            p.add_argument("--out", help="output file or directory (default: inside final/)")
        if name == "train":
            p.add_argument("--phase", choices=["grid", "final"], default="grid")
            p.add_argument("--point", action="append", default=[],
                           help="grid point id (see `vpeft plan`); repeat to train several "
                                "points of the method together in one process")
            p.add_argument("--points", choices=["all"], help="all: every grid point of each --method")
        p.set_defaults(func=fn)
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
