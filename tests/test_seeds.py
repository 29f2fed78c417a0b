"""train.seeds: the grid searched once with the first seed, one final run + evaluation per seed
(final/ for the first, final-seed<s>/ for the others), each with its cost recorded."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import run_snakemake, workflow_copy, smoke_plan
from vpeft import layout
from vpeft.config import ConfigError
from vpeft.errors import UserError
from vpeft.io import read_json
from vpeft.protocol import evaluate, run_final, run_point, select

COST_FIELDS = ("wall_time_s", "train_images_per_s", "peak_memory_bytes", "device", "protocol")


def _plan(tmp_path: Path, prepared_task: Path, weights: Path, *extra: str):
    return smoke_plan(tmp_path, prepared_task, weights, *extra, methods="lora")


def test_final_dirs_follow_the_seed_list(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights, "train.seeds=[5,3,9]")
    base = layout.method_dir(plan.cfg, "count", "lora")
    assert layout.seeds(plan.cfg) == [5, 3, 9]
    assert layout.final_dir(plan.cfg, "count", "lora") == base / "final"
    assert layout.final_dir(plan.cfg, "count", "lora", 5) == base / "final"
    assert layout.seed_final_dirs(plan.cfg, "count", "lora") == [
        (5, base / "final"), (3, base / "final-seed3"), (9, base / "final-seed9")]


@pytest.mark.parametrize("seeds, message", [("[]", "non-empty"), ("[1,1]", "twice"),
                                            ("[1,-2]", "integers >= 0"), ("7", "list")])
def test_bad_seed_lists_are_refused_naming_the_key(tmp_path, prepared_task, tiny_weights, seeds,
                                                   message):
    # a scalar is refused by the config schema when the study is composed, the rest by layout
    with pytest.raises(ConfigError, match=rf"train\.seeds.*{message}"):
        layout.seeds(_plan(tmp_path, prepared_task, tiny_weights, f"train.seeds={seeds}").cfg)


def test_search_per_seed_is_refused_not_ignored(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights, "train.search_per_seed=true")
    with pytest.raises(ConfigError, match="search_per_seed"):
        layout.seeds(plan.cfg)


def test_every_seed_gets_its_own_final_run_from_one_grid(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights, "train.seeds=[42,7]")
    for point in plan.points["lora"]:
        grid = run_point(plan, "count", "lora", point, "grid")
        assert grid["seed"] == 42  # the grid is searched with the first seed only
        assert grid["peak_memory_bytes"] > 0 and grid["train_images_per_s"] > 0
        assert grid["device"] == "cpu" and grid["protocol"] == "vpeft"
    selection = select(plan, "count", "lora")
    assert selection["grid_seed"] == 42 and selection["selection_ties"] == "first"
    with pytest.raises(UserError, match="grid is searched once"):
        run_point(plan, "count", "lora", plan.points["lora"][0], "grid", seed=7)

    first, other = run_final(plan, "count", "lora"), run_final(plan, "count", "lora", seed=7)
    dirs = dict(layout.seed_final_dirs(plan.cfg, "count", "lora"))
    assert dirs[7].name == "final-seed7"
    for seed, metrics in ((42, first), (7, other)):
        assert read_json(dirs[seed] / layout.METRICS) == metrics
        assert metrics["seed"] == seed and metrics["point"] == selection["best_point"]
        assert all(metrics[k] is not None for k in COST_FIELDS)
        assert metrics["train_images_per_s"] > 0 and metrics["peak_memory_bytes"] > 0
        assert metrics["device"] == "cpu" and metrics["protocol"] == "vpeft"
        for name in layout.FINAL_OUTPUTS:
            assert (dirs[seed] / name).is_file(), (seed, name)
    # different seeds: different initialisation and batch order, so different weights
    a, b = (load_file(str(dirs[s] / layout.ADAPTER)) for s in (42, 7))
    assert set(a) == set(b)
    assert any(not (a[k] == b[k]).all() for k in a)

    result = evaluate(plan, "count", "lora", seed=7)
    assert result["seed"] == 7
    assert read_json(dirs[7] / layout.TEST_EVAL) == result
    assert not (dirs[42] / layout.TEST_EVAL).exists()  # each seed evaluated by its own call
    with pytest.raises(UserError, match="not in train.seeds"):
        run_final(plan, "count", "lora", seed=8)
    with pytest.raises(UserError, match="not in train.seeds"):
        evaluate(plan, "count", "lora", seed=8)


def _dry_run_stats(workdir: Path, *overrides: str) -> tuple[dict[str, str], str]:
    args = ["all", "--dry-run", "--printshellcmds", "--config", "study=smoke", "threads=1"]
    # one job per (task, method), as in the cluster studies (smoke itself groups its methods)
    overrides = ("train.methods_per_job=1", *overrides)
    args.append("overrides=[" + ",".join(f'"{o}"' for o in overrides) + "]")
    proc = run_snakemake(workdir, *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    return dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M)), out


@pytest.mark.slow
def test_the_plan_has_one_final_and_evaluate_job_per_extra_seed(tmp_path):
    workflow_copy(tmp_path)
    one, _ = _dry_run_stats(tmp_path)
    three, out = _dry_run_stats(tmp_path, "train.seeds=[42,43,44]")
    finals = 2 * 2  # smoke: 2 tasks x 2 methods
    assert "train_final_seed" not in one and "evaluate_seed" not in one
    assert three["train_final_seed"] == three["evaluate_seed"] == str(2 * finals)
    # the grid and the first seed's jobs are those of the single-seed plan
    for rule in ("train_final", "evaluate", "select", "analyze"):
        assert three[rule] == one[rule], rule
    assert int(three["total"]) == int(one["total"]) + 4 * finals
    for seed in (43, 44):
        assert f"runs/smoke/count/lora/final-seed{seed}/test_eval.json" in out
        assert f"--seed {seed}" in out
