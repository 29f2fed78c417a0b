"""The VTAB-1K study rehearsed at its full shape, through every pipeline step, before real runs.

    python -m benchmarks.rehearse --work /tmp/rehearsal [--steps 1] [--eval-batches 1]
                                  [--methods all] [--tasks all] [--cores 2] [--threads N]

It fabricates, under ``--work``:

* a VTAB-1K root in the public generators' layout (design.md §3) whose images have the real
  tasks' sizes and modes: ``oxford_iiit_pet`` (natural: RGB photos of varied sizes, 500 x 375,
  375 x 500, 500 x 333, ..., a few stored as CMYK JPEGs and as palette PNGs), ``dsprites_loc``
  (64 x 64 grey-scale single-channel JPEGs) and ``patch_camelyon`` (96 x 96 RGB with the largest
  test split; ``benchmarks.fullsize`` covers the full 73,728-image test sizes in bookkeeping);
  train800 / val200 / train800val200 at their real counts;
* ``ViT-B_16.npz`` in Google's release layout with random values (the in21k head and
  ``pre_logits`` included), loaded through the same path as the downloaded file;

then runs the ``vtab1k`` study's real model configuration (``vit_b16_in21k``: ViT-B/16 at 224 px,
batch 64, the study's eval batch and precision) through Snakemake's ``all`` target: prepare,
grid, select, final, evaluate, analyze and report, every method at its most expensive grid point
(the largest value of every integer capacity axis: VPT-shallow 200 prompts, Pfeiffer bottleneck
64, FacT-TK dim 64, ...). Each run is cut by the documented rehearsal overrides
``train.rehearsal.max_steps`` (``--steps``) and ``train.rehearsal.max_eval_batches``
(``--eval-batches``); every metrics.json records them and the report marks its runs as a
rehearsal. Results: ``rehearsal.json`` (wall time, per-job peak RSS and time from Snakemake's
benchmark files, the runs' throughput) in ``--work``, and the calibration file
(``vpeft.calibration``) measured from the runs.

``--threads N`` (default: ``--cores``) gives each job N threads, so ``--cores``/N jobs run at
once: on a GPU machine (``benchmarks/gpu_check.sh`` uses 4 of its cores per job) several jobs then
share the device, and the images/s measured are a lower bound of the device's own (requests made
from them err on the long side); peak memories are per process either way. ``rehearsal.md`` in
``--work`` is the per-method table of the calibration (``summary``).

``--shape tiny`` swaps in a 2-block, 48-wide ViT at 32 px (the test suite's reduced rehearsal);
``--scale`` shrinks the split counts (split_sizes overrides follow).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STUDY = "vtab1k"
IN21K_CLASSES = 21843
# (task, classes, test images at scale 1, how its images look: a function of (index, label))
PHOTO_SIZES = [(500, 375), (375, 500), (500, 333), (300, 225), (500, 500), (334, 500), (448, 336)]
TASKS = {"oxford_iiit_pet": (37, 500), "dsprites_loc": (16, 500), "patch_camelyon": (2, 4096)}
SPLITS = {"train800": 800, "val200": 200}
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}


def image_for(task: str, i: int, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One source image as the task's distribution holds it, and its file extension."""
    if task == "dsprites_loc":
        side, channels = (64, 64), 1
    elif task == "patch_camelyon":
        side, channels = (96, 96), 3
    else:
        side, channels = PHOTO_SIZES[i % len(PHOTO_SIZES)], 3
    w, h = side
    yy, xx = np.mgrid[0:h, 0:w]
    # smooth, per-class pattern plus a per-image colour: small JPEGs, every image distinct
    pattern = (np.sin(xx / (7 + label)) + np.cos(yy / (5 + label % 7))) * 40
    base = rng.integers(40, 200, size=channels)
    array = np.clip(base[None, None, :] + pattern[..., None], 0, 255).astype(np.uint8)
    array[0, :4, 0] = np.frombuffer(int(i).to_bytes(4, "big"), np.uint8)  # distinct pixels
    img = Image.fromarray(array[..., 0] if channels == 1 else array)
    if task == "oxford_iiit_pet" and i % 97 == 5:
        return img.convert("CMYK"), "jpg"  # some photo collections hold CMYK JPEGs
    if task == "oxford_iiit_pet" and i % 89 == 7:
        return img.convert("P", palette=Image.Palette.ADAPTIVE), "png"
    return img, "jpg"


def write_task(root: Path, task: str, scale: float, seed: int = 0) -> dict[str, int]:
    """One task in the generators' layout (train800val200 = re-encoded copies of train800 then
    val200). Returns the split counts."""
    classes = TASKS[task][0]
    counts = split_counts(task, scale)
    rng = np.random.default_rng(seed)
    made: dict[str, list[tuple[Image.Image, str, int]]] = {}
    serial = 0  # over all splits: no image is pixel-identical to another
    for split in ("train800", "val200", "test"):
        made[split] = []
        for i in range(counts[split]):
            img, ext = image_for(task, serial, i % classes, rng)
            made[split].append((img, ext, i % classes))
            serial += 1
    made["train800val200"] = made["train800"] + made["val200"]
    for split, rows in made.items():
        (root / task / "images" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (img, ext, label) in enumerate(rows):
            rel = "images/%s/%06d.%s" % (split, i, ext)
            img.save(root / task / rel)
            lines.append(f"{rel} {label}\n")
        (root / task / f"{split}.txt").write_text("".join(lines))
    return counts


def split_counts(task: str, scale: float) -> dict[str, int]:
    test = TASKS[task][1]
    counts = {**{s: max(2, round(n * scale)) for s, n in SPLITS.items()},
              "test": max(2, round(test * scale))}
    counts["train800val200"] = counts["train800"] + counts["val200"]
    return counts


def write_weights(path: Path, shape: str) -> Path:
    """A random ViT-B/16 (or the tiny shape) in Google's ViT-B_16.npz layout, in21k head and
    pre_logits included."""
    import torch

    from vpeft._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import timm

    from benchmarks.vit_npz import write_google_vit_npz

    kwargs = TINY if shape == "tiny" else {}
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False,
                              num_classes=IN21K_CLASSES, **kwargs)
    dim = model.embed_dim
    pre_logits = (torch.randn(dim, dim) * 0.02, torch.zeros(dim))
    return write_google_vit_npz(model, path, pre_logits=pre_logits)


def most_expensive(cfg: Any, methods: Sequence[str]) -> list[str]:
    """Overrides that narrow each method's grid to its most expensive point: the largest value
    of every integer axis (prompts, bottleneck, rank, dim), the first of every other axis
    (scales, learning rates: they do not change the cost)."""
    from omegaconf import OmegaConf

    from vpeft.config import method_config

    out = []
    for method in methods:
        mcfg = method_config(cfg, method)
        in_study = OmegaConf.select(cfg, f"study.grid.{method}", default=None) or {}
        for section in ("hparams", "optim"):
            for key, values in (mcfg.get(section) or {}).items():
                if not OmegaConf.is_list(values):
                    continue
                values = list(OmegaConf.to_container(values))
                ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
                value = max(values) if ints else values[0]
                where = "study.grid" if key in (in_study.get(section) or {}) else "method"
                out.append(f"{where}.{method}.{section}.{key}={json.dumps(value)}")
    return out


def study_overrides(args: argparse.Namespace, tasks: Sequence[str], methods: Sequence[str],
                    counts: dict[str, dict[str, int]]) -> list[str]:
    """The rehearsal's Hydra overrides: its tasks and methods, the documented rehearsal cut and,
    for --scale or --shape tiny, what differs from the study's own values."""
    from vpeft.config import compose

    out = [f"study.tasks=[{','.join(tasks)}]", f"study.methods=[{','.join(methods)}]",
           f"train.rehearsal.max_steps={args.steps}",
           f"train.rehearsal.max_eval_batches={args.eval_batches}"]
    if args.eval_batch_size:
        out.append(f"train.eval_batch_size={args.eval_batch_size}")
    if args.scale != 1.0:
        first = counts[tasks[0]]
        out += [f"study.data.split_sizes.{s}={first[s]}" for s in ("train800", "val200",
                                                                    "train800val200")]
    if args.shape == "tiny":
        out += [f"+model.kwargs.{k}={v}" for k, v in TINY.items()]
        out += [f"model.img_size={TINY['img_size']}",
                f"study.data.image_size={TINY['img_size']}"]
    cfg = compose(STUDY, out + ["study.data.root=/unused", "model.weights=/unused"])
    return out + most_expensive(cfg, methods)


def workflow_copy(work: Path) -> Path:
    """The workflow (Snakefile, rules, params) in ``work``: runs, data and logs land there."""
    import shutil

    for item in ("Snakefile", "rules", "params"):
        src, dst = REPO / item, work / item
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return work


def snakemake(work: Path, root: Path, weights: Path, overrides: Sequence[str], cores: int,
              *extra: str, threads: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    config = ["study=" + STUDY, f"data_root={root}", f"weights={weights}",
              f"threads={threads or cores}",
              "overrides=" + json.dumps(list(overrides))]
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), "all",
                           "--config", *config, *extra], cwd=work, env=env, text=True,
                          capture_output=True)


def job_benchmarks(work: Path) -> list[dict[str, Any]]:
    """Every job's Snakemake benchmark line (s, max_rss MB) with its log-relative name."""
    rows = []
    for tsv in sorted((work / "logs" / STUDY).rglob("*.benchmark.tsv")):
        head, values = tsv.read_text().splitlines()[:2]
        row = dict(zip(head.split("\t"), values.split("\t")))
        rows.append({"job": str(tsv.relative_to(work / "logs" / STUDY)),
                     "s": float(row["s"]), "max_rss_mb": _float(row.get("max_rss"))})
    return rows


def _float(value: str | None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="where everything is written")
    parser.add_argument("--steps", type=int, default=1, help="train.rehearsal.max_steps (k)")
    parser.add_argument("--eval-batches", type=int, default=1,
                        help="train.rehearsal.max_eval_batches")
    parser.add_argument("--eval-batch-size", type=int, default=None,
                        help="train.eval_batch_size (default: the study's)")
    parser.add_argument("--methods", default="all", help="comma-separated, or all (16)")
    parser.add_argument("--tasks", default="all", help=f"comma-separated of {', '.join(TASKS)}")
    parser.add_argument("--shape", choices=("full", "tiny"), default="full")
    parser.add_argument("--scale", type=float, default=1.0, help="split counts x this")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per job (default: --cores, one job at a time)")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="no new runs: the calibration and a summary of the runs already "
                             "in --work (an interrupted rehearsal; give the same options)")
    args = parser.parse_args(argv)
    if args.threads is not None and not 1 <= args.threads <= args.cores:
        parser.error(f"--threads {args.threads}: expected 1 to --cores ({args.cores})")
    if args.calibrate_only:
        return calibrate_only(args)
    return rehearse(args)


def _plan(args: argparse.Namespace) -> tuple[Path, list[str], list[str]]:
    from vpeft.config import load_study

    work = args.work.resolve()
    tasks = list(TASKS) if args.tasks == "all" else args.tasks.split(",")
    methods = (list(load_study(STUDY, ["study.data.root=/x", "model.weights=/x"]).methods)
               if args.methods == "all" else args.methods.split(","))
    return work, tasks, methods


def calibrate_only(args: argparse.Namespace) -> int:
    work, tasks, methods = _plan(args)
    counts = {task: split_counts(task, args.scale) for task in tasks}
    overrides = study_overrides(args, tasks, methods, counts)
    path = write_calibration(work, work / "vtab-1k", work / "ViT-B_16.npz", overrides)
    print(write_summary(work, path))
    print(f"wrote {path}")
    return 0


def write_summary(work: Path, calibration_path: Path) -> str:
    """``rehearsal.md`` in ``work``: the calibration's per-method table (``summary``)."""
    from vpeft.io import atomic_path

    text = summary(json.loads(calibration_path.read_text()), job_benchmarks(work))
    with atomic_path(work / "rehearsal.md") as tmp:
        tmp.write_text(text + "\n")
    return text


def summary(cal: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    """Per method and phase: the calibration's figures and the job's wall time and peak RSS
    from Snakemake's benchmark file (Markdown)."""
    by_job = {(j["job"].split("/")[1], "grid" if "/grid/" in j["job"] else "final"): j
              for j in jobs if j["job"].count("/") >= 2}
    lines = [f"device {', '.join(cal['devices'])}, precision {', '.join(cal['precision'])}, "
             f"{cal['model']} at {cal['img_size']} px, batch {cal['batch_size']}", "",
             "| method | phase | train img/s | eval img/s | start-up s | peak RSS MB | "
             "peak device MB | job s | job max_rss MB |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for method, phases in sorted(cal["methods"].items()):
        for phase, e in sorted(phases.items(), key=lambda kv: kv[0] != "grid"):
            job = by_job.get((method, phase), {})
            dev = "–" if e["peak_device_mb"] is None else f"{e['peak_device_mb']:,.0f}"
            lines.append(f"| {method} | {phase} | {e['train_images_per_s']:.2f} | "
                         f"{e['eval_images_per_s']:.2f} | {e['setup_s']:.0f} | "
                         f"{e['peak_host_rss_mb']:,.0f} | {dev} | {job.get('s', 0):.0f} | "
                         f"{job.get('max_rss_mb') or 0:,.0f} |")
    return "\n".join(lines)


def rehearse(args: argparse.Namespace) -> int:
    work, tasks, methods = _plan(args)
    work.mkdir(parents=True, exist_ok=True)
    root, weights = work / "vtab-1k", work / "ViT-B_16.npz"
    tic = time.perf_counter()
    counts = {task: write_task(root, task, args.scale, seed=n) for n, task in enumerate(tasks)}
    write_weights(weights, args.shape)
    fabricate_s = time.perf_counter() - tic
    overrides = study_overrides(args, tasks, methods, counts)
    workflow_copy(work)
    tic = time.perf_counter()
    proc = snakemake(work, root, weights, overrides, args.cores, threads=args.threads)
    wall_s = time.perf_counter() - tic
    (work / "snakemake.log").write_text(proc.stdout + proc.stderr)
    result = {"ok": proc.returncode == 0, "wall_s": wall_s, "fabricate_s": fabricate_s,
              "tasks": counts, "methods": methods, "overrides": overrides,
              "shape": args.shape, "cores": args.cores, "threads": args.threads or args.cores,
              "load_avg": os.getloadavg(),
              "jobs": job_benchmarks(work)}
    if result["ok"]:
        result["calibration"] = str(write_calibration(work, root, weights, overrides))
        write_summary(work, Path(result["calibration"]))
    (work / "rehearsal.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("ok", "wall_s", "fabricate_s", "load_avg")}))
    if not result["ok"]:
        print((proc.stdout + proc.stderr)[-4000:], file=sys.stderr)
    return 0 if result["ok"] else 1


def write_calibration(work: Path, root: Path, weights: Path, overrides: Sequence[str]) -> Path:
    """The calibration file measured from this rehearsal's runs (vpeft.calibration), in the
    rehearsal's runs directory; copy it to a study's runs/<study>/calibration.json to use it."""
    from vpeft import calibration
    from vpeft.config import load_study

    plan = load_study(STUDY, [*overrides, f"study.data.root={root}", f"model.weights={weights}",
                              f"paths.runs={work / 'runs'}"])
    return calibration.write(plan.cfg)


if __name__ == "__main__":
    sys.exit(main())
