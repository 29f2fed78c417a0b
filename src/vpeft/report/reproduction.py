"""The reproduction section: where a study's runs depart from the paper's, grid point by grid point.

When the study declares a published grid (``study.published_grid``: every grid point the paper's
run trained, vpeft.report.published_grid) each task x method of the study is compared with it:
the selected point (the same or not), this run's val200 at the paper's selected point against the
paper's, the test top-1 against the paper's, and the median val200 difference over every grid
point both ran (a *shift* of the whole landscape: the data or the protocol, not the selection).

A difference is flagged only outside its noise band: the 95 % band of a difference of two
accuracies measured on ``n`` images each (val200: n = 200; test: the test split's size), with
Agresti and Caffo's adjustment (one success and one failure added to each side, so that 100 %
still has a band). The two accuracies are treated as independent samples: the seed's noise is
not in the band (it would widen it) and neither is the pairing of the images both score (it would
narrow it). The same band decides, from the published grid alone, whether the paper's own
selection was decided within noise (best vs second-best val200 point).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.numbers import fmt_acc
from vpeft.report.published_grid import PublishedPoint, grid_key, read_published_grid
from vpeft.report.view import Cell, Row, exact_text, fmt_delta

__all__ = ["PAIR_HEADERS", "PairComparison", "Reproduction", "VAL_IMAGES", "compare_study", "difference_band",
           "reproduction_charts", "reproduction_landing", "reproduction_of", "reproduction_tasks",
           "selection_margins"]

Z95 = 1.959963984540054   # two-sided 95 %
VAL_IMAGES = 200          # val200


def difference_band(a: float, b: float, n_a: int, n_b: int) -> float:
    """Half-width, in percentage points, of the 95 % band of ``a − b`` for two top-1 accuracies
    (in %) on ``n_a`` and ``n_b`` images (Agresti–Caffo: (correct + 1) / (n + 2) each)."""
    def adjusted(acc: float, n: int) -> float:
        return (acc / 100 * n + 1) / (n + 2)

    pa, pb = adjusted(a, n_a), adjusted(b, n_b)
    return 100 * Z95 * math.sqrt(pa * (1 - pa) / (n_a + 2) + pb * (1 - pb) / (n_b + 2))


@dataclass(frozen=True)
class Difference:
    """This run's value against the paper's, measured on ``n`` images each."""

    mine: float | None
    paper: float | None
    n: int | None

    @property
    def delta(self) -> float | None:
        return None if self.mine is None or self.paper is None else self.mine - self.paper

    @property
    def band(self) -> float | None:
        if self.delta is None or not self.n:
            return None
        return difference_band(self.mine, self.paper, self.n, self.n)  # type: ignore[arg-type]

    @property
    def departs(self) -> bool:
        """Outside the noise band (never without a band)."""
        return self.band is not None and abs(self.delta) > self.band  # type: ignore[arg-type]


@dataclass(frozen=True)
class SelectionMargin:
    """The paper's best and second-best val200 of one task x method (from its grid alone)."""

    task: str
    method: str
    best: float
    second: float | None

    @property
    def gap(self) -> float | None:
        return None if self.second is None else self.best - self.second

    @property
    def band(self) -> float | None:
        return None if self.second is None else \
            difference_band(self.best, self.second, VAL_IMAGES, VAL_IMAGES)

    @property
    def within_noise(self) -> bool:
        return self.gap is not None and self.gap <= self.band  # type: ignore[operator]


def selection_margins(points: Sequence[PublishedPoint]) -> dict[tuple[str, str], SelectionMargin]:
    """Per task x method of a published grid, its two best val200 points (ties count twice)."""
    by_pair: dict[tuple[str, str], list[float]] = {}
    for p in points:
        if p.val200_top1 is not None:
            by_pair.setdefault((p.task, p.method), []).append(p.val200_top1)
    out = {}
    for (task, method), values in by_pair.items():
        values.sort(reverse=True)
        out[(task, method)] = SelectionMargin(task, method, values[0],
                                              values[1] if len(values) > 1 else None)
    return out


@dataclass
class PairComparison:
    """One task x method of the study against the paper's run of it."""

    task: str
    method: str
    protocol: str | None = None
    my_point: str | None = None       # this run's selected settings, as text
    paper_point: str | None = None    # the paper's selected settings, as text
    same_selection: bool | None = None
    flip_within_noise: bool | None = None   # my val200 at my point vs at the paper's point
    val: Difference = Difference(None, None, None)
    test: Difference = Difference(None, None, None)
    shift: float | None = None        # median of (this run − paper) val200 over common points
    common: int = 0                   # grid points both ran with a val200
    outside: int = 0                  # of those, differences outside the val200 band
    # this run's grid point -> (the paper's val200 there, whether the paper selected it)
    reference: dict[str, tuple[float | None, bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)   # what could not be compared, and why

    @property
    def departs(self) -> bool:
        return self.val.departs or self.test.departs

    @property
    def compared(self) -> bool:
        return self.val.delta is not None or self.test.delta is not None


@dataclass
class Reproduction:
    """The study against its published grid: one comparison per task x method the grid has,
    and what could not be compared."""

    pairs: list[PairComparison]
    not_published: list[tuple[str, str]]       # study pairs the published grid lacks
    margins: dict[tuple[str, str], SelectionMargin]
    tasks: list[str] = field(default_factory=list)   # the study's, in its order
    source: str | None = None                  # the published grid's file name


def _settings_text(lr: float, wd: float, hparams: Mapping[str, Any], keys: Sequence[str]) -> str:
    parts = [f"{k}={_fmt(hparams.get(k))}" for k in sorted(keys)]
    return ", ".join(parts + [f"lr={lr:g}", f"wd={wd:g}"])


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value)


def _my_key(row: Mapping[str, Any], keys: Sequence[str]) -> tuple | None:
    hp = json.loads(row["hparams_json"]) if row.get("hparams_json") else {}
    optim = json.loads(row["optim_json"]) if row.get("optim_json") else {}
    lr = row.get("lr") if row.get("lr") is not None else optim.get("lr")
    wd = row.get("weight_decay") if row.get("weight_decay") is not None \
        else optim.get("weight_decay")
    if lr is None or wd is None:
        return None
    return grid_key(lr, wd, hp, keys)


def _value(row: Mapping[str, Any]) -> float | None:
    v = row.get("val_top1")
    return float(v) if row.get("status") == "ok" and v is not None and math.isfinite(v) else None


def _compare_pair(task: str, method: str, paper: list[PublishedPoint],
                  grid: list[dict[str, Any]], result: Mapping[str, Any] | None) -> PairComparison:
    keys = sorted({k for p in paper for k in p.hparams})
    theirs = {grid_key(p.lr, p.weight_decay, p.hparams, keys): p for p in paper}
    chosen = next(p for p in paper if p.selected)
    pair = PairComparison(task, method, paper_point=_settings_text(
        chosen.lr, chosen.weight_decay, chosen.hparams, keys))
    if result is None or result["status"] == "missing" or not grid:
        pair.notes.append("no run of this study")
        return pair
    pair.protocol = result["protocol"]
    mine = {k: g for g in grid if (k := _my_key(g, keys)) is not None}
    deltas: list[float] = []
    for k, g in mine.items():
        p = theirs.get(k)
        if p is None:
            continue
        pair.reference[str(g["point"])] = (p.val200_top1, p.selected)
        if (v := _value(g)) is not None and p.val200_top1 is not None:
            deltas.append(v - p.val200_top1)
            if abs(deltas[-1]) > difference_band(v, p.val200_top1, VAL_IMAGES, VAL_IMAGES):
                pair.outside += 1
    pair.common = len(deltas)
    pair.shift = statistics.median(deltas) if deltas else None
    _note_unmatched(pair, len(set(mine) - set(theirs)), len(set(theirs) - set(mine)))
    chosen_key = grid_key(chosen.lr, chosen.weight_decay, chosen.hparams, keys)
    at_paper = mine.get(chosen_key)
    pair.val = Difference(_value(at_paper) if at_paper else None, chosen.val200_top1, VAL_IMAGES)
    if at_paper is None:
        pair.notes.append(f"the paper's selected point ({pair.paper_point}) is not in this run's "
                          "grid")
    selected = next((g for g in grid if g["selected"]), None)
    if selected is not None and (k := _my_key(selected, keys)) is not None:
        pair.my_point = _settings_text(k[0], k[1], dict(k[2]), keys)
        pair.same_selection = k == chosen_key
        if not pair.same_selection and at_paper is not None:
            a, b = _value(selected), _value(at_paper)
            pair.flip_within_noise = None if a is None or b is None else \
                abs(a - b) <= difference_band(a, b, VAL_IMAGES, VAL_IMAGES)
    num_test = result["num_test"]
    pair.test = Difference(result["test_top1"], chosen.test_top1, num_test)
    if result["test_top1"] is None:
        pair.notes.append(f"no test top-1 (the final run is {result['status']})")
    elif not num_test:
        pair.notes.append("the test split's size is unknown: no test band")
    return pair


def _note_unmatched(pair: PairComparison, only_mine: int, only_paper: int) -> None:
    if only_mine:
        pair.notes.append(f"{only_mine} grid point(s) of this run are not in the paper's grid")
    if only_paper:
        pair.notes.append(f"{only_paper} grid point(s) of the paper's are not in this run's grid")


def compare_study(results: StudyResults, study: Mapping,
                  published: Sequence[PublishedPoint]) -> Reproduction:
    """Every task x method of ``study`` against the published grid (study order)."""
    paper: dict[tuple[str, str], list[PublishedPoint]] = {}
    for p in published:
        paper.setdefault((p.task, p.method), []).append(p)
    grid: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in results.grid.to_pylist():
        grid.setdefault((g["task"], g["method"]), []).append(g)
    rows = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    pairs, absent = [], []
    for task, _ in study_tasks(study):
        for method in study_methods(study):
            points = paper.get((task, method))
            if not points or not any(p.selected for p in points):
                absent.append((task, method))
                continue
            pairs.append(_compare_pair(task, method, points, grid.get((task, method), []),
                                       rows.get((task, method))))
    return Reproduction(pairs, absent, selection_margins(published),
                        [t for t, _ in study_tasks(study)])


# --------------------------------------------------------------------------------------------
# the section's views: the landing page's summary, each task page's table and landscapes
# --------------------------------------------------------------------------------------------

PROTOCOL_NOTE = {
    "vpeft": "vpeft's default protocol, which corrects the public code's defects "
             "(docs/protocol.md): departures from the paper are expected",
    "as_published": "the public code's behaviour (train=vtab_as_published): departures are not "
                    "expected beyond noise",
    "custom": "a mix of vpeft's and the public code's behaviours: some departures are expected",
}


def _num(value: float | None, column: str, task: str | None, method: str, *classes: str,
         signed: bool = False, title: str | None = None) -> Cell:
    text = fmt_delta(value) if signed else fmt_acc(value)
    return Cell(text, exact_text(value), column, task, method, ["num", *classes], title)


def _difference_cells(d: Difference, column: str, task: str, method: str) -> list[Cell]:
    """mine, paper, Δ with its band below (class ``departs`` outside the band)."""
    band = d.band
    delta = _num(d.delta, f"{column}_delta", task, method, *(["departs"] if d.departs else []),
                 signed=True, title=None if band is not None else "no band: a value is missing")
    if band is not None:
        delta.note = f"band ±{band:.1f}"
    return [_num(d.mine, f"{column}_mine", task, method),
            _num(d.paper, f"{column}_paper", task, method), delta]


def _selection_cell(pair: PairComparison) -> Cell:
    if pair.same_selection is None:
        text, classes = "–", []
    elif pair.same_selection:
        text, classes = "same", []
    else:
        how = {True: "within noise", False: "outside noise", None: "not measurable"}
        text, classes = f"differs ({how[pair.flip_within_noise]})", ["flip"]
    return Cell(text, None if pair.same_selection is None else str(pair.same_selection).lower(),
                "same_selection", pair.task, pair.method, classes,
                title=f"this run: {pair.my_point or '–'}; paper: {pair.paper_point}")


def pair_row(pair: PairComparison, label: str) -> Row:
    """One task x method: selection, val200 at the paper's point, test, shift, what is missing."""
    t, m = pair.task, pair.method
    cells = [Cell(pair.my_point or "–", pair.my_point, "my_point", t, m, ["mono"],
                  title=f"protocol: {pair.protocol or 'unknown'}"),
             Cell(pair.paper_point or "–", pair.paper_point, "paper_point", t, m, ["mono"]),
             _selection_cell(pair),
             *_difference_cells(pair.val, "val200", t, m),
             *_difference_cells(pair.test, "test", t, m),
             _num(pair.shift, "shift", t, m, signed=True,
                  title=f"median over {pair.common} grid point(s) both ran"),
             Cell(f"{pair.outside} / {pair.common}", str(pair.outside), "outside", t, m, ["num"]),
             Cell("; ".join(pair.notes) or "–", "; ".join(pair.notes) or None, "notes", t, m,
                  ["wrap"])]
    return Row(label, cells, method=m, task=t)


# val200 columns: at the paper's selected point; Shift: median Δ val200 over the common points
PAIR_HEADERS = ["Selected here", "Selected by the paper", "Selection", "val200 here", "paper",
                "Δ val200", "Test here", "paper", "Δ test", "Shift", "Outside band",
                "Not compared"]


def _margin_rows(margins: Mapping[tuple[str, str], SelectionMargin]) -> list[Row]:
    """Per method: how many of its pairs the paper's selection decided within noise."""
    by_method: dict[str, list[SelectionMargin]] = {}
    for m in margins.values():
        by_method.setdefault(m.method, []).append(m)
    rows = []
    for method, ms in sorted(by_method.items()):
        within = sum(m.within_noise for m in ms)
        gaps = [m.gap for m in ms if m.gap is not None]
        ties = sum(m.gap == 0 for m in ms)
        cells = [Cell(str(len(ms)), str(len(ms)), "pairs", None, method, ["num"]),
                 Cell(str(within), str(within), "within_noise", None, method, ["num"]),
                 Cell(str(ties), str(ties), "ties", None, method, ["num"]),
                 _num(statistics.median(gaps) if gaps else None, "median_gap", None, method)]
        rows.append(Row(method, cells, method=method))
    return rows


def _departure_rows(pairs: Sequence[PairComparison], limit: int = 10) -> list[Row]:
    """The departing pairs, the largest (|Δ| over its band, test or val200) first."""
    def size(p: PairComparison) -> float:
        return max(abs(d.delta) / d.band for d in (p.val, p.test) if d.band)

    worst = sorted((p for p in pairs if p.departs), key=size, reverse=True)[:limit]
    return [pair_row(p, f"{p.task} · {p.method}") for p in worst]


def _task_rows(pairs: Sequence[PairComparison], tasks: Sequence[str]) -> list[Row]:
    rows = []
    for task in tasks:
        ps = [p for p in pairs if p.task == task and p.compared]
        if not ps:
            continue
        counts = [len(ps), sum(not p.departs for p in ps),
                  sum(p.same_selection is True for p in ps),
                  sum(p.same_selection is False for p in ps), sum(p.departs for p in ps)]
        names = ["compared", "agree", "same_selection", "flips", "departs"]
        cells = [Cell(str(c), str(c), n, task, None, ["num"]) for c, n in zip(counts, names)]
        protocols = sorted({p.protocol or "unknown" for p in ps})
        cells.append(Cell(", ".join(protocols), ", ".join(protocols), "protocol", task))
        rows.append(Row(task, cells, task=task))
    return rows


def reproduction_of(results: StudyResults, study: Mapping,
                    path: Path | None) -> Reproduction | None:
    """The study against the published grid at ``path`` (None: the study declares none)."""
    if path is None:
        return None
    rep = compare_study(results, study, read_published_grid(path))
    rep.source = Path(path).name
    return rep


def reproduction_landing(rep: Reproduction | None) -> dict[str, Any]:
    """The landing page's section: ``declared`` False (one line) without a published grid."""
    if rep is None:
        return {"declared": False}
    source = rep.source
    compared = [p for p in rep.pairs if p.compared]
    protocols = sorted({p.protocol for p in compared if p.protocol})
    margins = list(rep.margins.values())
    return {
        "declared": True, "source": source,
        "num_pairs": len(rep.pairs), "num_compared": len(compared),
        "num_agree": sum(not p.departs for p in compared),
        "num_flips": sum(p.same_selection is False for p in compared),
        "protocols": [(name, sum(p.protocol == name for p in compared),
                       PROTOCOL_NOTE.get(name, "an unknown protocol")) for name in protocols],
        "task_rows": _task_rows(rep.pairs, rep.tasks),
        "departures": _departure_rows(compared),
        "uncompared": [(p.task, p.method, "; ".join(p.notes)) for p in rep.pairs
                       if not p.compared],
        "not_published": rep.not_published,
        "margins_within": sum(m.within_noise for m in margins), "margins_total": len(margins),
        "margins_ties": sum(m.gap == 0 for m in margins),
        "margin_rows": _margin_rows(rep.margins),
    }


def reproduction_tasks(rep: Reproduction | None, results: StudyResults,
                       study: Mapping) -> dict[str, dict[str, Any]]:
    """Per task: its page's table (a row per method) and landscapes with the paper's points."""
    if rep is None:
        return {}
    grid: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for g in results.grid.to_pylist():
        grid.setdefault((g["task"], g["method"]), []).append(g)
    out: dict[str, dict[str, Any]] = {}
    for task, _ in study_tasks(study):
        pairs = [p for p in rep.pairs if p.task == task]
        # drawn by the worker that renders the page (reproduction_charts), as the landscapes are
        charts = [(p.method, grid.get((task, p.method), []), p.reference)
                  for p in pairs if p.reference]
        margins = [rep.margins[(task, p.method)] for p in pairs if (task, p.method) in rep.margins]
        out[task] = {"rows": [pair_row(p, p.method) for p in pairs], "charts": charts,
                     "protocols": sorted({p.protocol for p in pairs if p.protocol}),
                     "margins": [_task_margin_row(m) for m in margins],
                     "not_published": [m for t, m in rep.not_published if t == task]}
    return out


def reproduction_charts(task: str, inputs: Sequence[tuple[str, list[dict[str, Any]],
                                                           Mapping[str, Any]]]) -> list:
    """The task's landscapes with the paper's points, from :func:`reproduction_tasks`'s inputs."""
    from vpeft.report import numbers
    from vpeft.report.landscape import landscape

    return [c for method, rows, reference in inputs
            if (c := landscape(task, method, rows, numbers.fmt_acc, reference)) is not None]


def _task_margin_row(m: SelectionMargin) -> Row:
    gap = _num(m.gap, "gap", m.task, m.method, *(["close"] if m.within_noise else []),
               title="best − second-best val200 of the paper's grid")
    if m.band is not None:
        gap.note = f"band ±{m.band:.1f}"
    return Row(m.method, [_num(m.best, "best", m.task, m.method),
                          _num(m.second, "second", m.task, m.method), gap,
                          Cell("yes" if m.within_noise else "no", str(m.within_noise).lower(),
                               "within_noise", m.task, m.method)], method=m.method, task=m.task)
