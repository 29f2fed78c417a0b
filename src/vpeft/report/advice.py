"""'Which method should I use?': the cheapest method statistically indistinguishable from the best.

Per scope (each VTAB group and the mean over tasks; each task for many-shot and robustness
studies), from ``results.stats`` (:mod:`vpeft.report.significance`):

1. the best method is the one with the highest mean (every one of them on an exact tie);
2. the *indistinguishable* set is the best plus every method whose Holm-corrected paired
   bootstrap p-value against it is at least alpha;
3. methods not significantly above chance (majority-class rate) are flagged and dropped;
4. the pick is the member of what is left with the fewest trainable parameters (then the higher
   mean); an exact tie in both is named, never broken silently.

If nothing is left, there is no recommendation, and the page says why. Results without
per-example statistics (tables made by hand or by an older vpeft) get no recommendation either,
only the best mean, labelled as untested.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from markupsafe import Markup

from vpeft.report import svg
from vpeft.report.collect import StudyResults, report_shape, study_methods, study_scopes
from vpeft.report.numbers import fmt_acc
from vpeft.report.view import GROUP_TITLES, fmt_params

__all__ = ["Advice", "recommendations"]


@dataclass
class Advice:
    """One "which method" statement: markup built here (escaped), plus what it picked."""

    kind: str                       # pick | no-pick | untested
    method: str                     # the pick ("" without one); first in study order on a tie
    group: str | None               # the VTAB group, None for the other scopes
    html: Markup
    tied: list[str] = field(default_factory=list)   # methods tied exactly with ``method``
    scope: str = "mean"
    scope_kind: str = "overall"
    indistinguishable: list[str] = field(default_factory=list)
    best: list[str] = field(default_factory=list)
    at_chance: list[str] = field(default_factory=list)

    @property
    def tied_json(self) -> str:
        return json.dumps(self.tied)

    @property
    def set_json(self) -> str:
        return json.dumps(self.indistinguishable)

    @property
    def best_json(self) -> str:
        return json.dumps(self.best)

    @property
    def at_chance_json(self) -> str:
        return json.dumps(self.at_chance)


def _num_span(value: float, column: str, text: str, method: str | None = None) -> str:
    m = f' data-method="{svg.esc(method)}"' if method is not None else ""
    return (f'<span class="num" data-column="{svg.esc(column)}"{m} '
            f'data-value="{svg.esc(repr(float(value)))}">{svg.esc(text)}</span>')


def _names(methods: Sequence[str]) -> str:
    """``<b>a</b>``, ``<b>a</b> and <b>b</b>``, ``<b>a</b>, <b>b</b> and <b>c</b>`` (escaped)."""
    bold = [f"<b>{svg.esc(m)}</b>" for m in methods]
    return bold[0] if len(bold) == 1 else ", ".join(bold[:-1]) + " and " + bold[-1]


def _scope_title(kind: str, scope: str, study: Mapping) -> str:
    if kind == "group":
        return GROUP_TITLES.get(scope, scope)
    if kind == "overall":
        return "Overall (mean over tasks)"
    meta = (study.get("manyshot") or {}).get(scope)
    if meta:
        return f"{meta.get('dataset', scope)}, {meta.get('train_images')} training images"
    return scope


def _acc_text(r: Mapping[str, Any]) -> str:
    m = r["method"]
    return (f'{_num_span(r["mean"], "mean", fmt_acc(r["mean"]), m)} % '
            f'[{_num_span(r["ci_low"], "ci_low", fmt_acc(r["ci_low"]), m)}, '
            f'{_num_span(r["ci_high"], "ci_high", fmt_acc(r["ci_high"]), m)}]')


def _advice_scopes(study: Mapping) -> list[tuple[str, str]]:
    scopes = [(k, s) for k, s, _ in study_scopes(study)]
    if report_shape(study).group_scopes:
        return [(k, s) for k, s in scopes if k != "task"]
    return scopes


def recommendations(results: StudyResults, study: Mapping) -> list[Advice]:
    """One :class:`Advice` per scope (see the module docstring)."""
    if results.stats is None or results.stats.num_rows == 0:
        return _untested(results, study)
    order = {m: i for i, m in enumerate(study_methods(study))}
    by_scope: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results.stats.to_pylist():
        by_scope.setdefault((r["scope_kind"], r["scope"]), []).append(r)
    out = []
    for kind, scope in _advice_scopes(study):
        rows = sorted(by_scope.get((kind, scope), []), key=lambda r: order.get(r["method"], 1 << 30))
        if rows:
            out.append(_scope_advice(kind, scope, rows, study))
    return out


def _scope_advice(kind: str, scope: str, rows: list[dict[str, Any]], study: Mapping) -> Advice:
    esc = svg.esc
    title = esc(_scope_title(kind, scope, study))
    group = scope if kind == "group" else None
    best = [r for r in rows if r["best"]]
    same = [r for r in rows if r["indistinguishable"]]
    at_chance = [r["method"] for r in rows if not r["above_chance"]]
    alpha = rows[0]["alpha"]
    chance = rows[0]["chance"]
    common = dict(group=group, scope=scope, scope_kind=kind,
                  indistinguishable=[r["method"] for r in same],
                  best=[r["method"] for r in best], at_chance=at_chance)
    chance_text = (f'chance level {_num_span(chance, "chance", fmt_acc(chance))} % '
                   f'(majority class of the test labels)')
    flagged = (f' Not significantly above chance (never recommended): {_names(at_chance)}.'
               if at_chance else "")
    candidates = [r for r in same if r["above_chance"]]
    if not candidates:
        why = ("no method is significantly above chance" if len(at_chance) == len(rows) else
               "the methods indistinguishable from the best are not significantly above chance")
        return Advice("no-pick", "", html=Markup(
            f'{title}: <b>no recommendation</b> — {esc(why)}; {chance_text}.{flagged}'),
            **common)
    with_params = [r for r in candidates if r["trainable_params"] is not None]
    pool = with_params or candidates
    key = min(((r["trainable_params"] or 0.0), -r["mean"]) for r in pool)
    picks = [r for r in pool if ((r["trainable_params"] or 0.0), -r["mean"]) == key]
    pick = picks[0]
    pm = pick["method"]
    best_names = [r["method"] for r in best]
    params = ("" if pick["trainable_params"] is None else
              f' with {_num_span(pick["trainable_params"], "trainable_params", fmt_params(pick["trainable_params"]), pm)} '
              'trainable parameters')
    tie = (f" — a tie: {len(picks)} methods have these parameters and this mean"
           if len(picks) > 1 else "")
    n_same = len(same)
    set_text = ('no other method is statistically indistinguishable from it' if n_same == 1 else
                f'the cheapest of the {n_same} methods statistically indistinguishable from the '
                f'best ({_names([r["method"] for r in same])})')
    best_text = "" if pm in best_names else (
        f'; best mean: {_names(best_names)}, {_acc_text(best[0])}')
    return Advice("pick", pm, html=Markup(
        f'{title}: use {_names([r["method"] for r in picks])}{params}, mean {_acc_text(pick)} — '
        f'{set_text}{best_text}{esc(tie)}. Paired bootstrap over test images'
        f'{" and seeds" if pick["num_seeds"] >= 2 else ""}, Holm-corrected, α = '
        f'{_num_span(alpha, "alpha", f"{alpha:g}")}; {chance_text}.{flagged}'),
        tied=[r["method"] for r in picks[1:]], **common)


def _untested(results: StudyResults, study: Mapping) -> list[Advice]:
    """Best mean per scope, explicitly untested: no per-example predictions were collected."""
    summary = {r["method"]: r for r in results.summary.to_pylist()}
    rows = [summary[m] for m in study_methods(study) if m in summary]
    out = []
    for kind, scope in _advice_scopes(study):
        column = scope if kind in ("group", "overall") else None
        if column is None or not rows or column not in rows[0]:
            continue
        values = [r[column] for r in rows if r[column] is not None]
        if not values:
            continue
        top = max(values)
        names = [r["method"] for r in rows if r[column] == top]
        out.append(Advice("untested", "", group=scope if kind == "group" else None, scope=scope,
                          scope_kind=kind, best=names, html=Markup(
                              f'{svg.esc(_scope_title(kind, scope, study))}: highest mean '
                              f'{_names(names)} ({_num_span(top, column, fmt_acc(top), names[0])} %)'
                              ' — <b>no recommendation</b>: without per-example test predictions '
                              'no significance test was possible.')))
    return out
