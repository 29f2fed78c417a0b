"""The study's published grid: every VTAB-1K grid point its public code ran (OSU-MLB/PETL_Vision
245d262, ``tune_output/default_vtab``), with its val200 top-1 and, for the selected point, its
test top-1 — shipped as ``vpeft/report/reference/vtab1k_published_grid.csv``.

The CSV spells hyper-parameters as the study's names shortened (``rank``, ``prompts``,
``bottleneck``, ``scale``, ``convpass_xavier_init``); :data:`HPARAM_NAMES` maps them to vpeft's
method parameters, so a published point and a vpeft grid point compare key by key."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["HPARAM_NAMES", "PUBLISHED_GRID", "PublishedPoint", "grid_key", "read_published_grid"]

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
