"""Measured cost of a study's runs, per method and phase, on the device they ran on.

A calibration file (JSON, ``layout.calibration_file``: ``<paths.runs>/<study>/calibration.json``)
holds, for every method and phase (``grid``: train800 -> val200, ``final``: train800val200 ->
test), what its runs measured: training and evaluation images/s, the job's start-up seconds, peak
host RSS and peak device memory (CUDA only), and the model's parameter counts (memory of fused
points). ``python -m benchmarks.rehearse`` writes it from a rehearsal's runs; :func:`measure`
makes it from any finished runs (``vpeft calibrate``-style use from Python). :mod:`vpeft.requests`
turns it into the scheduler requests of each job.

A file that cannot be read or lacks a field is an error naming the file and the key, never a
silent default.
"""
from __future__ import annotations

import datetime as dt
import json
import statistics
from pathlib import Path
from typing import Any, Mapping

from vpeft import layout
from vpeft.errors import UserError
from vpeft.io import write_json
from vpeft.runs import RunFileError, RunMetrics, read

FORMAT = "vpeft-calibration/1"
PHASES = ("grid", "final")
# Per method and phase: name -> required (None allowed for the CUDA-only device peak)
FIELDS = {"train_images_per_s": True, "eval_images_per_s": True, "setup_s": True,
          "peak_host_rss_mb": True, "peak_device_mb": False, "total_params": True,
          "trainable_params": True, "runs": True,
          "extract_images_per_s": False}  # head-only runs on cached features: the extraction


class CalibrationError(UserError):
    """A calibration file that cannot be used; the message names the file and the key."""


def _median(values: list[float]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.median(values) if values else None


def _entry(runs: list[RunMetrics]) -> dict[str, Any]:
    """One (method, phase)'s measurement from its runs: medians; memory peaks at their max."""
    cuda = [r for r in runs if (r.device or "").startswith("cuda")]
    # on CPU the process's peak (peak_memory_bytes) is its RSS
    host = [r.peak_host_rss_bytes or (0 if r in cuda else r.peak_memory_bytes) or 0
            for r in runs]
    cached = [r.feature_cache for r in runs if (r.feature_cache or {}).get("used")
              and (r.feature_cache or {}).get("images") and r.feature_cache.get("extract_s")]
    return {
        "extract_images_per_s": _median([c["images"] / c["extract_s"] for c in cached]),
        "train_images_per_s": _median([r.train_images_per_s for r in runs]),
        "eval_images_per_s": _median([r.eval_images_per_s for r in runs]),
        # start-up without the feature extraction, which requests scale with the images
        "setup_s": _median([r.setup_s - ((r.feature_cache or {}).get("extract_s") or 0)
                            for r in runs if r.setup_s is not None]),
        "peak_host_rss_mb": max(host) / 2**20 if any(host) else None,
        "peak_device_mb": (max(r.peak_memory_bytes or 0 for r in cuda) / 2**20) if cuda else None,
        "total_params": max(r.total_params or 0 for r in runs),
        "trainable_params": max(r.trainable_params_with_head or 0 for r in runs),
        "runs": len(runs),
    }


def measure(cfg: Any) -> dict[str, Any]:
    """The calibration of ``cfg``'s finished runs (every metrics.json under its runs directory
    that did not diverge and recorded the measurements)."""
    found: dict[tuple[str, str], list[RunMetrics]] = {}
    devices, precisions, rehearsal = set(), set(), None
    for path in sorted(layout.runs_dir(cfg).glob(f"*/*/*/**/{layout.METRICS}")):
        try:
            m = read(RunMetrics, path)
        except RunFileError:
            continue
        if m.status != "ok" or m.phase not in PHASES or m.train_images_per_s is None \
                or m.eval_images_per_s is None:
            continue
        found.setdefault((m.method, m.phase), []).append(m)
        devices.add(m.device)
        precisions.add(m.precision)  # what the runs computed in (CPU runs are fp32)
        rehearsal = rehearsal or m.rehearsal
    if not found:
        raise CalibrationError(f"{layout.runs_dir(cfg)}: no finished run records its "
                               "throughput (metrics.json: train_images_per_s, eval_images_per_s)")
    methods: dict[str, dict[str, Any]] = {}
    for (method, phase), runs in sorted(found.items()):
        methods.setdefault(method, {})[phase] = _entry(runs)
    return {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(
                timespec="seconds"),
            "study": str(cfg.study.name), "model": str(cfg.model.name),
            "img_size": int(cfg.model.img_size), "batch_size": int(cfg.train.batch_size),
            "eval_batch_size": int(cfg.train.eval_batch_size),
            "precision": sorted(p for p in precisions if p),
            "devices": sorted(d for d in devices if d),
            "rehearsal": rehearsal, "methods": methods}


def write(cfg: Any, path: Path | None = None) -> Path:
    """Measure ``cfg``'s runs and write the calibration file (atomically)."""
    path = Path(path) if path is not None else layout.calibration_file(cfg)
    write_json(path, measure(cfg))
    return path


def load(path: Path | str) -> dict[str, Any] | None:
    """The calibration in ``path`` (None when there is no such file), checked field by field."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise CalibrationError(f"{path}: cannot read the calibration file: {err}") from err
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{path}: line {err.lineno} column {err.colno}: not JSON "
                               f"({err.msg})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"{path}: not a calibration file (expected \"format\": "
                               f"\"{FORMAT}\"; write one with python -m benchmarks.rehearse)")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise CalibrationError(f"{path}: \"methods\" must map each method to its phases")
    for method, phases in methods.items():
        for phase, entry in (phases or {}).items():
            _check_entry(path, f"methods.{method}.{phase}", entry)
    return data


def _check_entry(path: Path, key: str, entry: Any) -> None:
    if not isinstance(entry, Mapping):
        raise CalibrationError(f"{path}: {key}: expected an object of {', '.join(FIELDS)}")
    for name, required in FIELDS.items():
        value = entry.get(name)
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (name.endswith("_per_s") and value == 0):
            raise CalibrationError(f"{path}: {key}.{name}: {json.dumps(value)}; expected a "
                                   f"{'positive' if name.endswith('_per_s') else 'non-negative'}"
                                   " number")
