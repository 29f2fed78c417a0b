"""The Markdown form of a benchmark result (``benchmarks.run``'s JSON document)."""
from __future__ import annotations

from typing import Any


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _cell(row: dict[str, Any], phase: str, precision: str, key: str, digits: int = 1) -> str:
    result = row.get(phase, {}).get(precision)
    if result is None:
        return "–"
    if "error" in result:
        return "error"
    return _num(result.get(key), digits)


def _ratio(doc: dict[str, Any], case: str, reference: str, phase: str, precision: str,
           key: str = "images_per_s_ratio") -> str:
    for r in doc["ratios"]:
        if (r["case"], r["reference"], r["phase"], r["precision"]) == (case, reference, phase,
                                                                        precision):
            return _num(r[key], 2) + "×" if r[key] is not None else "–"
    return ""


def _hparams(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["hparams"].items()) or "–"


def speed_table(doc: dict[str, Any], precision: str) -> list[str]:
    mem = "peak MiB" if doc["settings"]["device"] == "cpu" else "peak alloc. MiB"
    lines = [f"| case | hyper-parameters | trainable params | train img/s | train img/CPU-s | "
             f"train {mem} | eval img/s | eval {mem} | reference | train speed ratio | "
             "train ratio (CPU time) | eval speed ratio | train memory ratio |",
             "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"]
    for row in doc["cases"]:
        results = [row[p][precision] for p in row["phases"] if precision in row.get(p, {})]
        params = next((r["trainable_params"] for r in results if "trainable_params" in r), None)
        reference = row["references"][0] if row["references"] else ""
        lines.append(
            f"| {row['label']} | {_hparams(row)} | {_num(params, 0)} | "
            f"{_cell(row, 'train', precision, 'images_per_s')} | "
            f"{_cell(row, 'train', precision, 'images_per_cpu_s')} | "
            f"{_cell(row, 'train', precision, 'peak_memory_mb')} | "
            f"{_cell(row, 'eval', precision, 'images_per_s')} | "
            f"{_cell(row, 'eval', precision, 'peak_memory_mb')} | {reference} | "
            f"{_ratio(doc, row['label'], reference, 'train', precision)} | "
            f"{_ratio(doc, row['label'], reference, 'train', precision, 'images_per_cpu_s_ratio')} | "
            f"{_ratio(doc, row['label'], reference, 'eval', precision)} | "
            f"{_ratio(doc, row['label'], reference, 'train', precision, 'peak_memory_ratio')} |")
    return lines


def cached_notes(doc: dict[str, Any], precision: str) -> list[str]:
    lines = []
    for row in doc["cases"]:
        result = row.get("train", {}).get(precision, {})
        cached = result.get("cached")
        if not cached:
            continue
        others = [f"{_ratio(doc, row['label'], ref, 'train', precision)} of {ref}"
                  for ref in row["references"]]
        last = "in the last round: " if len(result.get("rounds", [])) > 1 else ""
        lines += ["", f"**{row['label']}**: one run = {last}extract the features of "
                  f"{cached['images']} images once ({_num(cached['extract_seconds'], 2)} s, "
                  f"{_num(cached['extract_images_per_s'])} img/s), then {cached['epochs']} epochs "
                  f"of the head on them through vpeft's training loop "
                  f"({_num(cached['head_seconds'], 2)} s, {_num(cached['head_images_per_s'])} "
                  f"img/s); median {_num(result['images_per_s'])} img/s over the whole run, "
                  f"{' and '.join(others)} (back-propagating through the frozen model every "
                  "epoch)."]
    return lines


def plan_scale_lines(plan: dict[str, Any]) -> list[str]:
    lines = ["", "### Planning the full VTAB-1K grid", "",
             f"`{plan['command']}` on a generated stand-in data root ({plan['tasks']} task "
             f"directories with their four list files) and a stand-in weights file:", "",
             "| variant | jobs | wall s | CPU s (user+sys) | load average (1 min) |",
             "|---|--:|--:|--:|--:|"]
    for v in plan["variants"]:
        lines.append(f"| {v['name']} | {_num(v.get('jobs'), 0)} | {_num(v['wall_seconds'])} | "
                     f"{_num(v['cpu_seconds'])} | {_num(v['load_average_1min'], 2)} |")
    for name, seconds in plan.get("components", {}).items():
        lines.append(f"| component: {name} | | {_num(seconds, 2)} | | |")
    lines += ["", f"Target ≤ {plan['target_seconds']:.0f} s wall for the first variant: "
              f"{'met' if plan['meets_target'] else 'not met'} "
              f"({_num(plan['best_wall_seconds'])} s)."]
    return lines


def markdown_report(doc: dict[str, Any]) -> str:
    s, m = doc["settings"], doc["machine"]
    spec = s["model_spec"]
    arch = ", ".join(f"{k}={v}" for k, v in spec["kwargs"].items()) or "default"
    head = [f"## vpeft speed: {s['model']} on {s['device']}", "",
            f"- date: {doc['date']}; command: `{doc['command']}`",
            f"- machine: {m['cpu']} ({m['cpu_count']} cores){'; GPU ' + m['cuda'] if m['cuda'] else ''}; "
            f"torch {m['torch']}, timm {m['timm']}, peft {m['peft']}, Python {m['python']}",
            f"- model: timm `{spec['name']}` ({arch}), {spec['img_size']} px, "
            f"{spec['num_classes']} classes, drop_path {s['drop_path']}; random weights",
            f"- train step: forward + cross-entropy + backward + {s['optimizer']}, batch "
            f"{s['batch_size']}; eval: no-grad forward, batch {s['eval_batch_size']}; "
            f"{s['threads']} torch thread(s); {s['warmup']} warm-up steps, median of "
            f"{s['reps']} repetitions × {s['steps_per_rep']} step(s) (eval: 1 warm-up step), {s['rounds']} round(s) "
            "round-robin over all cases, each case in a fresh process",
            "- memory: " + ("peak RSS during the phase minus RSS before it (activations, "
                            "gradients, optimizer state; the built model and inputs excluded)"
                            if s["device"] == "cpu" else
                            "torch.cuda.max_memory_allocated during the phase (absolute)"),
            f"- load average (1 min) before / after: {_num(doc['load_average_before'][0], 2)} / "
            f"{_num(doc['load_average_after'][0], 2)} (other users of the machine slow every "
            "case alike only roughly: compare ratios, not absolute figures)",
            "- ratio = vpeft / reference: above 1 vpeft is faster (speed) or needs more memory"]
    if not doc.get("complete", True):  # written case by case; the run has not finished (yet)
        head += ["", "**Incomplete: the run stopped or is still running; not measured yet: "
                 + (", ".join(doc["not_measured"]) or "none") + ".**"]
    body: list[str] = []
    for precision in s["precisions"]:
        body += ["", f"### {precision}", "", *speed_table(doc, precision),
                 *cached_notes(doc, precision)]
    if doc.get("plan_scale"):
        body += plan_scale_lines(doc["plan_scale"])
    return "\n".join(head + body) + "\n"
