"""What the paper's studies cost on the measured device, from measured step times.

    python -m benchmarks.project                         # newest benchmarks/results/*.json (CUDA first)
    python -m benchmarks.project --from benchmarks/results/vit_b16-cuda.json
    python -m benchmarks.project --studies vtab1k -o train.points_per_job=1

Inputs: (1) the per-method speeds of one ``python -m benchmarks.run`` JSON (training seconds per
step at its batch, evaluation images/s, and for head-only methods the cached-features path:
extraction and head images/s), at the precision the study trains in on that device (bf16 on CUDA
when measured, fp32 on CPU); (2) each study's plan as vpeft composes it from ``params/`` (tasks,
methods, every method's grid points, epochs, ``train.points_per_job``, feature caching,
augmentation, WiSE-FT alphas and shifts), so the projection follows the configs; (3) image counts
per split: the study's ``split_sizes`` where it fixes them, else the public datasets' sizes as
distributed (``PUBLIC_IMAGES``; ``--images KEY=N`` replaces one, e.g. for your own copy).

Device-hours = images through the model x measured seconds per image, per phase:

- grid: every grid point trains ``epochs`` x its training split, then predicts its validation
  split; a head-only method with cached features extracts the frozen features of both splits
  once per job (per distinct method hyper-parameters) and trains the head on them;
- final: the selected point retrains on train + validation (once per seed of ``train.seeds``)
  and predicts the test split (the
  ``evaluate`` rule only scores saved predictions on a CPU: no device time);
- WiSE-FT (robustness study): every method's final model at every alpha on the ID test set and
  every shift set, at the method's evaluation speed;
- start-up: every device job (grid job, final run, WiSE-FT) pays ``--job-overhead-s``.

Nothing is scaled: a CPU JSON of the small ViT gives CPU-hours *of that small ViT* pushed
through the study's image counts, labelled as such. Every assumption is listed in the output.
Writes ``<out>/projection-<source stem>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vpeft import jobs
from vpeft.errors import UserError

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("vtab1k", "manyshot", "robustness")

# Image counts of the public distributions, for splits the study configs leave open (test: null,
# "full" many-shot subsets). VTAB-1K: the test.txt line counts the public generators write (the
# TFDS test splits VTAB uses); many-shot: the datasets as distributed; robustness: ImageNet val and
# the four shift sets as distributed.
PUBLIC_IMAGES: dict[str, int] = {
    **{f"vtab.{task}.test": n for task, n in {
        "caltech101": 6084, "cifar": 10000, "dtd": 1880, "oxford_flowers102": 6149,
        "oxford_iiit_pet": 3669, "svhn": 26032, "sun397": 21750, "patch_camelyon": 32768,
        "eurosat": 5400, "resisc45": 6300, "diabetic_retinopathy": 42670, "clevr_count": 15000,
        "clevr_dist": 15000, "dmlab": 22735, "kitti": 711, "dsprites_loc": 73728,
        "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150}.items()},
    "manyshot.cifar100.train": 50000, "manyshot.cifar100.test": 10000,
    "manyshot.resisc45.train": 31500,                 # NWPU-RESISC45: no split (test carved out)
    "manyshot.clevr_dist.train": 70000, "manyshot.clevr_dist.test": 15000,  # CLEVR train / val
    "imagenet.imagenet_val": 50000, "imagenet.imagenet_v2": 10000,
    "imagenet.imagenet_sketch": 50889, "imagenet.imagenet_a": 7500, "imagenet.imagenet_r": 30000,
}


class ProjectionError(UserError):
    """A benchmark JSON or an option the projection cannot use (the message says which)."""


# ------------------------------------------------------------------------------ measured speeds

@dataclass(frozen=True)
class Speed:
    """Seconds per image of one method on the measured device, at one precision."""

    train: float                    # forward + backward + optimiser step, per training image
    eval: float                     # no-grad forward, per image
    extract: float | None = None    # cached features: frozen forward per image (head-only methods)
    head: float | None = None       # cached features: head training per image


def _result(row: Mapping[str, Any], phase: str, precision: str, source: Path) -> Mapping[str, Any]:
    result = row.get(phase, {}).get(precision)
    if result is None:
        raise ProjectionError(f"{source}: case {row['label']!r} has no {phase} result at "
                              f"{precision}; measured: {sorted(row.get(phase, {}))}")
    if "error" in result:
        raise ProjectionError(f"{source}: case {row['label']!r} {phase} {precision} failed in "
                              f"the benchmark run: {result['error']}")
    return result


def read_speeds(doc: Mapping[str, Any], source: Path, precision: str,
                clock: str = "wall") -> dict[str, Speed]:
    """Per-method speeds from a ``benchmarks.run`` document (vpeft rows only). ``clock='cpu'``
    reads the CPU-time figures of training and evaluation (a 1-thread CPU run on a shared
    machine: what a core of its own would take); the cached-features figures are wall time."""
    for key in ("settings", "cases", "machine", "date"):
        if key not in doc:
            raise ProjectionError(f"{source}: key {key!r} missing: not a `python -m "
                                  "benchmarks.run` result")
    batch = int(doc["settings"]["batch_size"])
    speeds: dict[str, Speed] = {}
    cached: dict[str, Mapping[str, Any]] = {}
    for row in doc["cases"]:
        if row.get("kind") == "vpeft":
            train = _result(row, "train", precision, source)
            evaluation = _result(row, "eval", precision, source)
            if clock == "cpu":
                speeds[row["method"]] = Speed(train=1.0 / float(train["images_per_cpu_s"]),
                                              eval=1.0 / float(evaluation["images_per_cpu_s"]))
            else:
                speeds[row["method"]] = Speed(train=float(train["seconds_per_step"]) / batch,
                                              eval=1.0 / float(evaluation["images_per_s"]))
        elif row.get("kind") == "vpeft_linear_cached":
            cached[row["method"]] = _result(row, "train", precision, source)["cached"]
    for method, c in cached.items():
        if method in speeds:
            speeds[method] = Speed(speeds[method].train, speeds[method].eval,
                                   extract=1.0 / float(c["extract_images_per_s"]),
                                   head=1.0 / float(c["head_images_per_s"]))
    return speeds


def choose_precision(doc: Mapping[str, Any], study_precision: str, asked: str | None,
                     source: Path) -> str:
    """The precision the study trains in on the measured device (bf16 autocast exists only on
    CUDA), or ``asked``; it must have been measured."""
    measured = list(doc["settings"]["precisions"])
    cuda = str(doc["settings"]["device"]).startswith("cuda")
    wanted = asked or ("bf16" if cuda and study_precision == "bf16" else "fp32")
    if wanted not in measured:
        if asked is None and "fp32" in measured:
            return "fp32"
        raise ProjectionError(f"{source}: precision {wanted} was not measured; measured: {measured}")
    return wanted


# ------------------------------------------------------------------------------- image counts

@dataclass
class TaskImages:
    """Images of one task that pass through the model, per split."""

    grid_train: int
    grid_eval: int
    final_train: int
    test: int
    wise: int = 0   # per method: alphas x (ID test + every shift set)
    sources: dict[str, str] = field(default_factory=dict)  # which public size (key) was used


class Sizes:
    """``PUBLIC_IMAGES`` with ``--images`` overrides, remembering which keys were read."""

    def __init__(self, overrides: Mapping[str, int]) -> None:
        self.values = {**PUBLIC_IMAGES, **overrides}
        self.overridden = set(overrides)
        self.used: dict[str, int] = {}

    def get(self, key: str, what: str) -> int:
        if key not in self.values:
            raise ProjectionError(f"no image count for {what}: pass --images {key}=N")
        self.used[key] = self.values[key]
        return self.values[key]


def _split_sizes(cfg: Any) -> dict[str, int | None]:
    raw = cfg.study.data.get("split_sizes") or {}
    return {k: (None if v is None else int(v)) for k, v in dict(raw).items()}


def _fixed_split_images(cfg: Any, task: str, test_key: str, sizes: Sizes) -> TaskImages:
    split = _split_sizes(cfg)
    missing = [k for k in ("train800", "val200", "train800val200") if split.get(k) is None]
    if missing:
        raise ProjectionError(f"study {cfg.study.name}: study.data.split_sizes has no count for "
                              f"{missing}")
    test = split.get("test")
    if test is None:
        test = sizes.get(test_key, f"the test split of {task}")
    return TaskImages(split["train800"], split["val200"], split["train800val200"], test,
                      sources={"test": test_key} if split.get("test") is None else {})


def _manyshot_images(cfg: Any, task: str, sizes: Sizes) -> TaskImages:
    """The counts ``vpeft.data.manyshot.draw_split`` produces for this task (same rounding)."""
    from vpeft.data.manyshot import resolve_task

    resolved = resolve_task(cfg, task)
    ds = resolved.dataset
    train_key = f"manyshot.{ds.name}.train"
    total = sizes.get(train_key, f"the training images of {ds.name}")
    sources = {"train": train_key}
    carved = int(round(total * ds.test_fraction)) if ds.test is None else 0
    pool = total - carved
    n = pool if resolved.size is None else resolved.size
    if n > pool:
        raise ProjectionError(f"{task}: a subset of {n} images, but {ds.name} has {pool} "
                              f"training images ({train_key})")
    data = cfg.study.data
    val = int(round(n * float(data.get("val_fraction", 0.2))))
    if data.get("val_max") is not None:
        val = min(val, int(data.val_max))
    if ds.test is None:
        test = carved
    else:
        sources["test"] = f"manyshot.{ds.name}.test"
        test = sizes.get(sources["test"], f"the test images of {ds.name}")
    return TaskImages(n - val, val, n, test, sources=sources)


def task_images(cfg: Any, task: str, sizes: Sizes) -> TaskImages:
    kind = cfg.study.data.kind
    if kind == "manyshot":
        return _manyshot_images(cfg, task, sizes)
    if kind == "vtab":
        return _fixed_split_images(cfg, task, f"vtab.{task}.test", sizes)
    if kind == "imagenet":
        robustness = cfg.study.robustness
        images = _fixed_split_images(cfg, task, f"imagenet.{robustness.test.name}", sizes)
        shift_keys = [f"imagenet.{name}" for name in robustness.shifts]
        shifts = sum(sizes.get(k, f"the shift set {k}") for k in shift_keys)
        images.wise = len(robustness.alphas) * (images.test + shifts)
        images.sources["wise"] = ", ".join(shift_keys)
        return images
    raise ProjectionError(f"study {cfg.study.name}: data kind {kind!r} has no image counts here")


# ------------------------------------------------------------------------------- the projection

def _jobs_of(plan: Any, method: str) -> list[list[Any]]:
    """The points of one method's grid jobs as rules/train*.smk form them (``vpeft.jobs``)."""
    by_id = {p.id: p for p in plan.points[method]}
    return [[by_id[i] for i in chunk] for chunk in jobs.grid_chunks(plan, method)]


def _distinct_hparams(points: Sequence[Any]) -> int:
    return len({repr(sorted(dict(p.hparams).items())) for p in points})


def method_seconds(plan: Any, method: str, speed: Speed, images: Mapping[str, TaskImages]
                   ) -> dict[str, Any]:
    """Device seconds of one method over all tasks of the study, per phase."""
    train_cfg = plan.cfg.train
    epochs = int(train_cfg.epochs)
    seeds = len(train_cfg.get("seeds") or [0])  # one final run (and WiSE-FT) per seed
    points = plan.points[method]
    grid_jobs = _jobs_of(plan, method)
    cached = (speed.extract is not None and bool(train_cfg.get("cache_linear_features", True))
              and not train_cfg.get("augment"))
    grid = final = wise = 0.0
    for im in images.values():
        if cached:
            extractions = sum(_distinct_hparams(job) for job in grid_jobs)
            grid += (extractions * (im.grid_train + im.grid_eval) * speed.extract
                     + len(points) * epochs * im.grid_train * speed.head)
            final += (im.final_train + im.test) * speed.extract + epochs * im.final_train * speed.head
        else:
            grid += len(points) * (epochs * im.grid_train * speed.train + im.grid_eval * speed.eval)
            final += epochs * im.final_train * speed.train + im.test * speed.eval
        wise += im.wise * speed.eval
    final, wise = final * seeds, wise * seeds
    n_tasks = len(images)
    has_wise = any(im.wise for im in images.values())
    # methods sharing jobs (train.methods_per_job) share their grid and final jobs' start-up
    share = next(1 / len(g) for g in jobs.method_groups(plan) if method in g)
    return {"method": method, "grid_points": len(points), "grid_jobs_per_task": len(grid_jobs),
            "path": "cached features" if cached else "back-propagation",
            "device_jobs": n_tasks * (share * (len(grid_jobs) + seeds) + seeds * int(has_wise)),
            "seconds": {"grid": grid, "final": final, "wise": wise}}


def project_study(name: str, overrides: Sequence[str], speeds: Mapping[str, Speed],
                  sizes: Sizes, overhead_s: float) -> dict[str, Any]:
    from vpeft.config import load_study

    # Stand-ins for the two paths every study requires: the plan needs no data or weights.
    plan = load_study(name, ["study.data.root=/unused", "model.weights=/unused", *overrides])
    images = {task: task_images(plan.cfg, task, sizes) for task in plan.tasks}
    rows, missing = [], []
    for method in plan.methods:
        if method not in speeds:
            missing.append(method)
            continue
        row = method_seconds(plan, method, speeds[method], images)
        row["seconds"]["start-up"] = row["device_jobs"] * overhead_s
        row["hours"] = {k: v / 3600 for k, v in row["seconds"].items()}
        row["hours"]["total"] = sum(row["hours"].values())
        rows.append(row)
    phases = ("grid", "final", "wise", "start-up", "total")
    return {"study": name, "title": str(plan.cfg.study.get("title", name)),
            "model": str(plan.cfg.model.name), "tasks": list(plan.tasks),
            "methods": list(plan.methods), "epochs": int(plan.cfg.train.epochs),
            "batch_size": int(plan.cfg.train.batch_size),
            "points_per_job": int(plan.cfg.train.get("points_per_job", 0)),
            "grid_runs": len(plan.tasks) * sum(len(plan.points[m]) for m in plan.methods),
            "seeds": len(plan.cfg.train.get("seeds") or [0]),
            "final_runs": (len(plan.tasks) * len(plan.methods)
                           * len(plan.cfg.train.get("seeds") or [0])),
            "images": {t: asdict(im) for t, im in images.items()},
            "rows": rows, "missing_methods": missing,
            "hours": {p: sum(r["hours"][p] for r in rows) for p in phases},
            "complete": not missing}


def unit_label(doc: Mapping[str, Any]) -> tuple[str, str]:
    """(unit, warning): GPU-hours on the measured GPU, or labelled CPU-hours of the small model."""
    s, m = doc["settings"], doc["machine"]
    spec = s.get("model_spec", {})
    if str(s["device"]).startswith("cuda"):
        return f"GPU-hours ({m.get('cuda') or s['device']})", ""
    arch = ", ".join(f"{k}={v}" for k, v in spec.get("kwargs", {}).items()) or "default"
    return ("CPU-hours", f"**CPU figures of a small model, not GPU-hours.** Measured on "
            f"{m.get('cpu')} with {s.get('threads', 1)} thread(s) per job, model "
            f"`{s['model']}` (timm `{spec.get('name')}`, {arch}, {spec.get('img_size')} px), not "
            "the study's model. The hours are what this machine needs to push the study's image "
            "counts through that model; nothing is scaled to ViT-B/16 or to a GPU.")


def project(doc: Mapping[str, Any], source: Path, studies: Sequence[str],
            overrides: Sequence[str] = (), images: Mapping[str, int] | None = None,
            precision: str | None = None, overhead_s: float = 5.0,
            clock: str = "wall") -> dict[str, Any]:
    """The projection document (see the module docstring)."""
    from vpeft.config import load_study

    first = load_study(studies[0], ["study.data.root=/unused", "model.weights=/unused",
                                    *overrides])
    chosen = choose_precision(doc, str(first.cfg.train.get("precision", "fp32")), precision,
                              source)
    speeds = read_speeds(doc, source, chosen, clock)
    sizes = Sizes(images or {})
    results = [project_study(s, overrides, speeds, sizes, overhead_s) for s in studies]
    for result in results:
        result["flop_bound"] = flop_bound(result, doc, overrides, images)
    unit, warning = unit_label(doc)
    settings = doc["settings"]
    assumptions = [
        f"per-image times measured at batch {settings['batch_size']} (training) and "
        f"{settings['eval_batch_size']} (evaluation) applied to the studies' batches "
        f"({', '.join(sorted({str(r['batch_size']) for r in results}))}) unchanged",
        "each method's speed at its default hyper-parameters stands for all its grid points "
        "(larger ranks, bottlenecks or prompt counts cost more)",
        "the points of a fused grid job cost the sum of their solo runs (no credit for the "
        "overlap of small runs on one GPU)",
        f"every device job (grid job, final run, WiSE-FT) pays {overhead_s:g} s of start-up "
        "(Python, torch, timm, data load; 4 s measured per job on the 2-core CPU demo)",
        "WiSE-FT at the method's evaluation speed (a mixed site runs the original and the "
        "method's module for 0 < alpha < 1: an underestimate there)",
        "not counted: data preparation, zero-shot head, selection, scoring, report (CPU jobs)",
    ]
    return {"source": str(source), "measured": doc["date"], "machine": doc["machine"],
            "benchmark_settings": settings, "precision": chosen, "clock": clock, "unit": unit,
            "warning": warning, "job_overhead_s": overhead_s, "overrides": list(overrides),
            "assumptions": assumptions,
            "images_used": {k: {"images": v, "source": "--images" if k in sizes.overridden
                                else "public distribution"} for k, v in sorted(sizes.used.items())},
            "studies": results, "total_hours": sum(r["hours"]["total"] for r in results),
            "complete": all(r["complete"] for r in results)}


def flop_bound(result: Mapping[str, Any], doc: Mapping[str, Any], overrides: Sequence[str],
               images: Mapping[str, int] | None) -> dict[str, Any] | None:
    """The study's FLOP lower bound (benchmarks.flops) and, on a GPU with a known bf16 peak,
    the measured projection's model FLOP utilisation: bound hours at peak / projected hours."""
    from benchmarks import flops

    try:
        bound = flops.study_bound(result["study"], overrides, images)
    except (ValueError, ProjectionError):  # a model or data the bound does not know (demo)
        return None
    device = str(doc["machine"].get("cuda") or doc["settings"]["device"])
    peak = flops.peak_of(device) if device.startswith("cuda") or "NVIDIA" in device else None
    out = {"pflop": bound["pflop"], "device": peak[0] if peak else None, "mfu": None}
    if peak and result["hours"]["total"] > 0:
        out["hours_at_peak"] = bound["hours_at_peak"][peak[0]]
        out["mfu"] = out["hours_at_peak"] / result["hours"]["total"]
    return out


# ------------------------------------------------------------------------------------ Markdown

def _h(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:,.2f}"


def markdown(proj: Mapping[str, Any]) -> str:
    s, m = proj["benchmark_settings"], proj["machine"]
    unit = proj["unit"]
    lines = [f"## Cost projection in {unit}", ""]
    if proj["warning"]:
        lines += [proj["warning"], ""]
    lines += [f"- speeds: `{proj['source']}` (`python -m benchmarks.run`, {proj['measured']}), "
              f"{proj['clock']}-clock figures of model `{s['model']}` on {s['device']}"
              f"{' (' + m['cuda'] + ')' if m.get('cuda') else ''}, {proj['precision']}; "
              f"torch {m.get('torch')}, timm {m.get('timm')}",
              f"- plans: vpeft's own study configs (`params/study/*.yaml`, `params/method/*.yaml`)"
              + (f" with overrides {proj['overrides']}" if proj["overrides"] else ""),
              *[f"- assumed: {a}" for a in proj["assumptions"]], "",
              f"| study | tasks | methods | grid runs | final runs | epochs | {unit} |",
              "|---|--:|--:|--:|--:|--:|--:|"]
    for st in proj["studies"]:
        lines.append(f"| {st['study']} | {len(st['tasks'])} | {len(st['methods'])} | "
                     f"{st['grid_runs']:,} | {st['final_runs']:,} | {st['epochs']} | "
                     f"{_h(st['hours']['total'])}{'' if st['complete'] else ' (incomplete)'} |")
    lines.append(f"| **all** | | | | | | **{_h(proj['total_hours'])}** |")
    for st in proj["studies"]:
        lines += ["", f"### {st['title']} (`{st['study']}`)", "",
                  f"{len(st['tasks'])} task{'s' if len(st['tasks']) != 1 else ''}, "
                  f"{st['epochs']} epochs, batch {st['batch_size']}, "
                  f"{st['points_per_job'] or 'all'} grid point(s) per job; study model "
                  f"`{st['model']}`.", "",
                  f"| method | grid points / task | grid jobs / task | path | grid | final | "
                  f"WiSE-FT | start-up | total {unit} |", "|---|--:|--:|---|--:|--:|--:|--:|--:|"]
        for r in st["rows"]:
            h = r["hours"]
            lines.append(f"| {r['method']} | {r['grid_points']} | {r['grid_jobs_per_task']} | "
                         f"{r['path']} | {_h(h['grid'])} | {_h(h['final'])} | {_h(h['wise'])} | "
                         f"{_h(h['start-up'])} | {_h(h['total'])} |")
        h = st["hours"]
        lines.append(f"| **total** | | | | {_h(h['grid'])} | {_h(h['final'])} | {_h(h['wise'])} "
                     f"| {_h(h['start-up'])} | **{_h(h['total'])}** |")
        if st["missing_methods"]:
            lines += ["", f"Not measured, so not counted: {', '.join(st['missing_methods'])}."]
        bound = st.get("flop_bound")
        if bound and bound["mfu"] is not None:
            lines += ["", f"FLOP lower bound (`python -m benchmarks.flops`): {bound['pflop']:,.0f} "
                      f"PFLOP = {_h(bound['hours_at_peak'])} h at the {bound['device']} bf16 peak; "
                      f"this projection runs at {bound['mfu']:.1%} model FLOP utilisation."]
    lines += ["", "Image counts the configs leave open (public distributions unless replaced "
              "with `--images KEY=N`): " + ", ".join(
                  f"`{k}`={v['images']:,}" + (" (--images)" if v["source"] == "--images" else "")
                  for k, v in proj["images_used"].items()) + "."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ CLI

def newest_result(directory: Path) -> Path:
    """The newest ``benchmarks.run`` JSON in ``directory``, a CUDA one if there is any."""
    found = [p for p in directory.glob("*-c*.json")
             if p.stem.endswith(("-cpu", "-cuda")) and not p.name.startswith("projection-")]
    cuda = [p for p in found if p.stem.endswith("-cuda")]
    pool = cuda or found
    if not pool:
        raise ProjectionError(f"{directory}: no benchmark results (<model>-cpu.json or "
                              "<model>-cuda.json); run `python -m benchmarks.run` first or pass "
                              "--from FILE")
    return max(pool, key=lambda p: p.stat().st_mtime)


def _images_option(items: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 0:
            raise ProjectionError(f"--images {item!r}: expected KEY=N with N a whole number, e.g. "
                                  "vtab.cifar.test=10000")
        out[key.strip()] = int(value)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.project", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help="a benchmarks.run JSON (default: the newest in benchmarks/results, "
                        "CUDA first)")
    p.add_argument("--studies", default=",".join(STUDIES),
                   help=f"comma-separated params/study names (default: {','.join(STUDIES)})")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for every study, repeatable (e.g. -o train.epochs=50)")
    p.add_argument("--images", action="append", default=[], metavar="KEY=N",
                   help="replace a public image count, repeatable (keys: see the output)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: what the study trains in on the measured device")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall (default) or cpu: CPU-time figures of a 1-thread CPU run on a "
                        "shared machine")
    p.add_argument("--job-overhead-s", type=float, default=5.0,
                   help="start-up seconds of every device job (default 5)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from vpeft.io import atomic_path, read_json, write_json

    os.environ.setdefault("VPEFT_PARAMS", str(REPO / "params"))  # runs from any directory
    try:
        source = args.source or newest_result(REPO / "benchmarks" / "results")
        if not source.is_file():
            raise ProjectionError(f"--from {source}: file not found")
        studies = [s.strip() for s in args.studies.split(",") if s.strip()]
        if not studies:
            raise ProjectionError("--studies: no study named")
        proj = project(read_json(source), source, studies, args.override,
                       _images_option(args.images), args.precision, args.job_overhead_s,
                       args.clock)
    except (UserError, ValueError) as err:  # read_json names the file for malformed JSON
        print(f"benchmarks.project: error: {err}", file=sys.stderr)
        return 2
    stem = f"projection-{source.stem}"
    write_json(args.out / f"{stem}.json", proj)
    text = markdown(proj)
    with atomic_path(args.out / f"{stem}.md") as tmp:
        tmp.write_text(text)
    print(text)
    print(f"wrote {args.out / stem}.json and .md")
    if not proj["complete"]:
        print("incomplete: some study methods were not measured (see 'Not measured')",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
