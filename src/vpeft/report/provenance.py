"""The report's provenance: where every run came from and how it was configured.

Per fact (git commit, library versions, machine, protocol, seeds) the value most runs share, with
the runs that differ listed beside it; warnings when runs came from different code or library
versions or from different CPU types / devices (vpeft.machine: their numbers are not comparable
bit for bit);
how each task's train800val200 was stored; the resolved config of one representative run and,
per run, how its config differs from that one (on the task pages); the date on every page.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any, Iterator, Mapping

from vpeft.data.duplicates import duplicate_note
from vpeft import machine
from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.view import Cell, Row, exact_text

__all__ = ["config_differences", "consistency_notes", "input_data_rows", "report_date",
           "representative_config", "runs_in_study_order", "shared_facts"]


def runs_in_study_order(results: StudyResults, study: Mapping) -> Iterator[tuple[str, str, dict]]:
    """(task, method, results row) for every collected run, in the study's task x method order."""
    by_key = {(r["task"], r["method"]): r for r in results.results.to_pylist()}
    for task, _ in study_tasks(study):
        for method in study_methods(study):
            if (task, method) in by_key:
                yield task, method, by_key[(task, method)]


def _versions_text(versions_json: str | None) -> str:
    if not versions_json:
        return "–"
    versions = json.loads(versions_json)
    return " · ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "–"


def _short_commit(commit: str | None) -> str:
    """First 12 hex digits, keeping the pipeline's ``-dirty`` marker visible."""
    if not commit:
        return "–"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def input_data_rows(study: Mapping) -> list[Row]:
    """Per task, how its train800val200 was stored and whether it equals train800 + val200 by
    content (vpeft.data.vtab.content_report, recorded in the prepared task's manifest)."""
    rows: list[Row] = []
    for t in study.get("tasks") or []:
        content = t.get("content")
        if not content:
            continue
        task = str(t.get("name"))
        differs = content.get("train800val200_union") == "differs"
        union = ("equals train800 + val200" if not differs else
                 f"differs: {content.get('missing_from_train800val200', 0)} missing, "
                 f"{content.get('extra_in_train800val200', 0)} extra "
                 f"({content.get('relabelled', 0)} relabelled)")
        duplicates = content.get("duplicates") or {}
        note = duplicate_note(duplicates)
        notes = list(content.get("examples") or []) + [
            f"allowed duplicate: {m}" for m in content.get("allowed_overlaps") or []] + (
            [f"{note} ({duplicates.get('policy')}), e.g. "
             + "; ".join(duplicates.get("examples") or [])] if note else [])
        rows.append(Row(task, [
            Cell(str(content.get("train800val200_layout", "–")), column="layout", task=task),
            Cell(union, column="union", task=task, classes=["warn"] if differs else []),
            Cell("; ".join(notes) or "–", column="notes", task=task, classes=["small"]),
        ], task=task))
    return rows


# The per-run facts of the provenance section: (results column, label, display text).
_FACTS: tuple[tuple[str, str], ...] = (
    ("git_commit", "Git commit"), ("versions_json", "Library versions"),
    ("machine_json", "Machine"), ("protocol", "Protocol"), ("seed", "Seed (final/)"),
    ("num_seeds", "Seeds with a result"))


def _fact_value(column: str, row: Mapping[str, Any]) -> Any:
    """The value runs are compared on: the machine by its summary line (vpeft.machine.summary),
    not its whole record, whose core affinity or environment may differ on the same machine."""
    if column == "machine_json":
        return machine.summary(json.loads(row[column]) if row[column] else None)
    return row[column]


def _fact_text(column: str, value: Any) -> str:
    if column == "git_commit":
        return _short_commit(value)
    if column == "versions_json":
        return _versions_text(value)
    return "–" if value is None else str(value)


def shared_facts(results: StudyResults, study: Mapping) -> tuple[list[Row], list[Row]]:
    """The provenance of every run without repeating it 304 times: per fact, the value most runs
    share (``shared``: label, text, how many runs), and one row per run whose value differs
    from it (``exceptions``: task, method, fact, value). Missing runs have no provenance."""
    runs = [(t, m, r) for t, m, r in runs_in_study_order(results, study)
            if r["status"] != "missing"]
    shared, exceptions = [], []
    for column, label in _FACTS:
        counts: dict[Any, int] = {}
        for _, _, r in runs:
            counts[_fact_value(column, r)] = counts.get(_fact_value(column, r), 0) + 1
        if not counts:
            continue
        common = max(counts, key=lambda v: counts[v])   # first seen wins a tie (study order)
        scope = (f"all {len(runs)} runs" if counts[common] == len(runs)
                 else f"{counts[common]} of {len(runs)} runs; the others below")
        shared.append(Row(label, [
            Cell(_fact_text(column, common), exact_text(common), column,
                 classes=["mono" if column == "git_commit" else "wrap"],
                 title=str(common) if column == "git_commit" else None),
            Cell(scope, str(counts[common]), "num_runs", classes=["small"])]))
        for task, method, r in runs:
            value = _fact_value(column, r)
            if value != common:
                exceptions.append(Row(task, [
                    Cell(method, method, "method", task, method),
                    Cell(label, column, "fact", task, method),
                    Cell(_fact_text(column, value), exact_text(value), column, task, method,
                         ["wrap"])], method=method, task=task))
    return shared, exceptions


def representative_config(results: StudyResults, study: Mapping) -> tuple[str, str, str] | None:
    """(task, method, pretty JSON) of the first ok run in study order (else any with a config)."""
    rows = results.results.to_pylist()
    order = {(t, m): i for i, (t, m) in enumerate(
        (t, m) for t, _ in study_tasks(study) for m in study_methods(study))}
    rows = sorted((r for r in rows if r["config_json"]),
                  key=lambda r: (r["status"] != "ok", order.get((r["task"], r["method"]), 1 << 30)))
    if not rows:
        return None
    r = rows[0]
    return r["task"], r["method"], json.dumps(json.loads(r["config_json"]), indent=2,
                                               sort_keys=True)


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``{"a.b": json text}``; lists and scalars are leaves."""
    if isinstance(value, Mapping) and value:
        out: dict[str, str] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def config_differences(results: StudyResults, study: Mapping,
                       shown: tuple[str, str, str] | None) -> list[Row]:
    """Per run (study order): the resolved-config settings that differ from the shown config.

    The cell's ``data-value`` is the run's whole resolved config (``config_json``), so every
    run's configuration is on the page, while the text stays short.
    """
    if shown is None:
        return []
    reference = _flatten(json.loads(shown[2]))
    rows = []
    for task, method, r in runs_in_study_order(results, study):
        if not r["config_json"]:
            continue
        mine = _flatten(json.loads(r["config_json"]))
        diff = [f"{k}={mine[k]}" for k in sorted(mine) if reference.get(k) != mine[k]]
        diff += [f"{k} absent" for k in sorted(reference) if k not in mine]
        rows.append(Row(task, [
            Cell(method, method, "method", task, method),
            Cell("; ".join(diff) or "same as shown", r["config_json"], "config_json", task,
                 method, ["mono", "small"]),
        ], method=method, task=task))
    return rows


def consistency_notes(results: StudyResults) -> list[str]:
    """Warnings when runs of one study came from different code or library versions."""
    rows = [r for r in results.results.to_pylist() if r["status"] != "missing"]
    notes = []
    commits = {r["git_commit"] for r in rows if r["git_commit"]}
    if len(commits) > 1:
        notes.append(f"Runs come from {len(commits)} different git commits.")
    if any(r["git_commit"] is None for r in rows):
        notes.append("Some runs have no recorded git commit (uncommitted or non-git checkout).")
    dirty = sum(1 for r in rows if (r["git_commit"] or "").endswith("-dirty"))
    if dirty:
        notes.append(f"{dirty} run(s) were made from a checkout with uncommitted changes "
                     "(commit marked -dirty).")
    versions = {r["versions_json"] for r in rows if r["versions_json"]}
    if len(versions) > 1:
        notes.append(f"Runs used {len(versions)} different sets of library versions.")
    return notes + _machine_notes(rows)


def _machine_notes(rows: list[dict]) -> list[str]:
    """Runs from different CPU types, kernel levels, thread counts or GPUs: the same code, seed
    and data round differently there, so their numbers are valid but not bit-comparable."""
    keys: dict[str, int] = {}
    for r in rows:
        if r["machine_json"]:
            key = machine.machine_key(json.loads(r["machine_json"]))
            keys[key] = keys.get(key, 0) + 1
    notes = []
    if len(keys) > 1:
        each = "; ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in keys.items())
        notes.append(f"Runs came from {len(keys)} different machines (CPU type, kernel level, "
                     f"threads or GPU): {each}. Their numbers are not bit-comparable: a rerun on "
                     "another machine type gives other, equally valid numbers.")
    unrecorded = sum(1 for r in rows if not r["machine_json"])
    if keys and unrecorded:
        notes.append(f"{unrecorded} run(s) have no machine record (made before vpeft recorded "
                     "it): whether they match the others' machine is unknown.")
    return notes


def report_date(provenance: Mapping[str, Any]) -> str:
    """The page date: provenance['date'], else $SOURCE_DATE_EPOCH (reproducible), else now."""
    if provenance.get("date"):
        return str(provenance["date"])
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch
            else dt.datetime.now(dt.timezone.utc))
    return when.strftime("%Y-%m-%d %H:%M UTC")
