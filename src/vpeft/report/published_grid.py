"""The study's published grid: every VTAB-1K grid point its public code ran (OSU-MLB/PETL_Vision
245d262, ``tune_output/default_vtab``), with its val200 top-1 and, for the selected point, its
test top-1 — shipped as ``vpeft/report/reference/vtab1k_published_grid.csv``.

The CSV spells hyper-parameters as the study's names shortened (``rank``, ``prompts``,
``bottleneck``, ``scale``, ``convpass_xavier_init``); :data:`HPARAM_NAMES` maps them to vpeft's
method parameters, so a published point and a vpeft grid point compare key by key.

The many-shot and robustness grids the public code committed (``tune_output/<study>``) ship as
``manyshot_robustness_published_grid.csv``, in the public code's names (:func:`read_public_grid`
maps them: ``lora_8`` is lora at rank 8, ``rand_h_adapter_N`` the adapter at bottleneck N,
``fact_scaler`` FacT's scale, ``drop_path_rate`` the optimiser's drop_path)."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["HPARAM_NAMES", "PUBLIC_GRID", "PUBLIC_TASKS", "PUBLISHED_GRID", "PublicPoint",
           "PublishedPoint", "grid_key", "read_public_grid", "read_published_grid"]

PUBLISHED_GRID = Path(__file__).parent / "reference" / "vtab1k_published_grid.csv"

# method -> {the CSV's hyper-parameter name: vpeft's}; names not listed are the same in both
HPARAM_NAMES: dict[str, dict[str, str]] = {
    "vpt_shallow": {"prompts": "num_prompts"},
    "vpt_deep": {"prompts": "num_prompts"},
    "fact_tt": {"rank": "dim"},
    "fact_tk": {"rank": "dim"},
    "convpass": {"convpass_xavier_init": "xavier_init"},
}

_COLUMNS = ("task", "method", "lr", "wd", "hparams", "val200_top1", "train800_top1", "selected",
            "test_top1_if_selected")


@dataclass(frozen=True)
class PublishedPoint:
    """One grid point of one task x method as the study ran it (hparams in vpeft's names)."""

    task: str
    method: str
    lr: float
    weight_decay: float
    hparams: Mapping[str, Any]
    val200_top1: float | None
    train800_top1: float | None
    selected: bool
    test_top1: float | None  # only for the selected point


def _number(text: str, where: str, column: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {column} {text!r} is not a finite number")
    return value


def _row(rec: Mapping[str, str], where: str) -> PublishedPoint:
    method = rec["method"].strip()
    try:
        raw = json.loads(rec["hparams"] or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: hparams is not a JSON object: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: hparams is not a JSON object: {rec['hparams']!r}")
    names = HPARAM_NAMES.get(method, {})
    lr, wd = (_number(rec[c], where, c) for c in ("lr", "wd"))
    if lr is None or wd is None:
        raise ValueError(f"{where}: lr and wd are required")
    selected = rec["selected"].strip()
    if selected not in ("0", "1"):
        raise ValueError(f"{where}: selected {selected!r}; expected 0 or 1")
    return PublishedPoint(
        task=rec["task"].strip(), method=method, lr=lr, weight_decay=wd,
        hparams={names.get(k, k): v for k, v in raw.items()},
        val200_top1=_number(rec["val200_top1"], where, "val200_top1"),
        train800_top1=_number(rec["train800_top1"], where, "train800_top1"),
        selected=selected == "1",
        test_top1=_number(rec["test_top1_if_selected"], where, "test_top1_if_selected"))


def read_published_grid(path: Path = PUBLISHED_GRID) -> list[PublishedPoint]:
    """Every row of a published-grid CSV (``#`` lines are its header comment); a bad row names
    ``file:line`` and the column."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        lines = [(n, line) for n, line in enumerate(fh, start=1) if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in lines)
    missing = sorted(set(_COLUMNS) - set(reader.fieldnames or ()))
    if missing:
        raise ValueError(f"{path}: header lacks the column(s) {missing}; expected {list(_COLUMNS)}")
    return [_row(rec, f"{path}:{lines[i + 1][0]}") for i, rec in enumerate(reader)]


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return float(value)


def grid_key(lr: float, weight_decay: float, hparams: Mapping[str, Any],
             keys: Iterable[str]) -> tuple:
    """A grid point as a comparable key: lr, weight decay and the values of ``keys`` (the swept
    hyper-parameters), numbers as floats (``10`` and ``10.0`` are one value)."""
    return (float(lr), float(weight_decay),
            tuple((k, _canonical(hparams.get(k))) for k in sorted(keys)))


# --------------------------------------------------------------------------------------------
# the many-shot and robustness grids, as the public code names them
# --------------------------------------------------------------------------------------------

PUBLIC_GRID = Path(__file__).parent / "reference" / "manyshot_robustness_published_grid.csv"

# the public code's setting -> vpeft's task (resisc/225, a 225-image RESISC45 subset, has none)
PUBLIC_TASKS = {"cifar100/500": "cifar100_n500", "cifar100/full": "cifar100",
                "resisc/full": "resisc45", "clevr/clevr": "clevr_dist", "fs/imagenet": "imagenet"}
# a method folder named with its capacity (``lora_8``) -> vpeft's method and capacity parameter
PUBLIC_CAPACITY = {"lora": ("lora", "rank"), "rand_h_adapter": ("adapter", "bottleneck"),
                   "fact_tk": ("fact_tk", "dim")}
# the public code's parameter -> vpeft's (optimiser settings and method hyper-parameters alike)
PUBLIC_PARAMS = {"lr": "lr", "wd": "weight_decay", "drop_path_rate": "drop_path",
                 "adapter_scaler": "scale", "fact_scaler": "scale"}
_PUBLIC_COLUMNS = ("study", "setting", "method", "param_set", "val_top1", "selected",
                   "test_top1_if_selected")


@dataclass(frozen=True)
class PublicPoint:
    """One grid point of the many-shot / robustness grids (settings in vpeft's names)."""

    study: str
    setting: str
    task: str | None          # vpeft's task, None where vpeft has none
    folder: str               # the public code's method folder, e.g. ``lora_8``
    method: str               # vpeft's method
    rerun: bool               # a folder ``<method>_<capacity>_<n>``: a partial rerun
    settings: Mapping[str, Any]
    val_top1: float | None
    selected: bool
    test_top1: float | None


def _public_method(folder: str, where: str) -> tuple[str, dict[str, Any], bool]:
    """(vpeft method, its capacity setting, is a rerun) of a public method folder."""
    parts = folder.split("_")
    for base, (method, key) in PUBLIC_CAPACITY.items():
        rest = folder[len(base) + 1:].split("_") if folder.startswith(base + "_") else []
        if rest and all(r.isdigit() for r in rest) and len(rest) <= 2:
            return method, {key: int(rest[0])}, len(rest) == 2
    if any(p.isdigit() for p in parts):
        raise ValueError(f"{where}: method {folder!r}: a capacity suffix on a method without one; "
                         f"expected one of {sorted(PUBLIC_CAPACITY)} followed by _<n>")
    return folder, {}, False


def read_public_grid(path: Path = PUBLIC_GRID) -> list[PublicPoint]:
    """Every row of the many-shot / robustness published grid; a bad row names ``file:line``."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        lines = [(n, line) for n, line in enumerate(fh, start=1) if not line.startswith("#")]
    reader = csv.DictReader(line for _, line in lines)
    missing = sorted(set(_PUBLIC_COLUMNS) - set(reader.fieldnames or ()))
    if missing:
        raise ValueError(f"{path}: header lacks the column(s) {missing}; "
                         f"expected {list(_PUBLIC_COLUMNS)}")
    out = []
    for i, rec in enumerate(reader):
        where = f"{path}:{lines[i + 1][0]}"
        method, settings, rerun = _public_method(rec["method"].strip(), where)
        try:
            raw = json.loads(rec["param_set"] or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: param_set is not a JSON object: {err}") from None
        unknown = sorted(set(raw) - set(PUBLIC_PARAMS)) if isinstance(raw, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"{where}: param_set {rec['param_set']!r}: expected a JSON object "
                             f"of {sorted(PUBLIC_PARAMS)}")
        settings.update({PUBLIC_PARAMS[k]: v for k, v in raw.items()})
        selected = rec["selected"].strip()
        if selected not in ("0", "1"):
            raise ValueError(f"{where}: selected {selected!r}; expected 0 or 1")
        out.append(PublicPoint(
            study=rec["study"].strip(), setting=rec["setting"].strip(),
            task=PUBLIC_TASKS.get(rec["setting"].strip()), folder=rec["method"].strip(),
            method=method, rerun=rerun, settings=settings,
            val_top1=_number(rec["val_top1"], where, "val_top1"), selected=selected == "1",
            test_top1=_number(rec["test_top1_if_selected"], where, "test_top1_if_selected")))
    return out
