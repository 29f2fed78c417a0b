"""The study protocol on real (tiny) runs: grid -> select on val200 -> final -> one test evaluation."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from conftest import smoke_plan
from vpeft import layout
from vpeft.io import read_json
from vpeft.protocol import evaluate, run_final, run_point, select


def _plan(tmp_path: Path, prepared_task: Path, weights: Path, *extra: str):
    return smoke_plan(tmp_path, prepared_task, weights, *extra)


def _run_study(plan, method: str) -> dict:
    for point in plan.points[method]:
        run_point(plan, "count", method, point, "grid")
    selection = select(plan, "count", method)
    run_final(plan, "count", method)
    return selection


def test_nothing_reads_test_labels_before_the_final_evaluation(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights)
    labels_file = layout.prepared_task(plan.cfg, "count") / "test_labels.parquet"
    assert labels_file.is_file()
    hidden = labels_file.rename(tmp_path / "hidden_test_labels.parquet")
    # Grid search, selection and the final run all succeed without any test label on disk ...
    _run_study(plan, "lora")
    final = layout.final_dir(plan.cfg, "count", "lora")
    assert (final / layout.METRICS).is_file() and (final / layout.TEST_LOGITS).is_file()
    assert "label" not in pq.read_table(final / layout.TEST_LOGITS).column_names
    # ... and only the evaluation needs them.
    with pytest.raises(Exception, match="test_labels"):
        evaluate(plan, "count", "lora")
    hidden.rename(labels_file)
    result = evaluate(plan, "count", "lora")
    table = pq.read_table(final / layout.TEST_PREDICTIONS)
    accuracy = 100.0 * (table.column("pred").to_numpy() == table.column("label").to_numpy()).mean()
    assert result["test_top1"] == pytest.approx(accuracy)
    assert result["num_test"] == table.num_rows == 24


def test_selection_picks_the_best_val200_point_and_records_everything(tmp_path, prepared_task,
                                                                       tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights)
    selection = _run_study(plan, "lora")
    candidates = selection["candidates"]
    assert [c["point"] for c in candidates] == [p.id for p in plan.points["lora"]]
    best = max(candidates, key=lambda c: c["val_top1"])
    assert selection["best_point"] == best["point"]
    assert selection["criterion"] == "last-epoch val200 top-1"

    grid = layout.grid_dir(plan.cfg, "count", "lora", best["point"])
    metrics = read_json(grid / layout.METRICS)
    for key in ("val_top1", "trainable_params", "trainable_params_with_head", "config", "versions",
                "git_commit", "seed", "wall_time_s", "hparams", "optim", "loss_curve"):
        assert key in metrics, key
    assert metrics["config"]["study"]["name"] == "smoke"
    assert metrics["versions"]["torch"]
    preds = pq.read_table(grid / layout.PREDICTIONS)
    assert preds.num_rows == 18
    accuracy = 100.0 * (preds.column("pred").to_numpy() == preds.column("label").to_numpy()).mean()
    assert metrics["val_top1"] == pytest.approx(accuracy)
    # adapter-only weights: LoRA factors and head, no frozen backbone tensor
    with safe_open(str(grid / layout.ADAPTER), framework="pt") as f:
        keys = set(f.keys())
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys)
    assert sum(1 for k in keys if "lora_" in k) == 2 * 2  # two blocks x (A, B)

    final = read_json(layout.final_dir(plan.cfg, "count", "lora") / layout.METRICS)
    assert final["point"] == best["point"] and final["train_split"] == "train800val200"


def test_a_diverged_grid_point_is_recorded_and_skipped(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights,
                 "study.grid.lora.optim.lr=[0.001,1.0e12]")
    selection = _run_study(plan, "lora")
    statuses = {c["point"]: c["status"] for c in selection["candidates"]}
    assert statuses == {"lr0.001-wd0.0001": "ok", "lr1e+12-wd0.0001": "diverged"}
    assert selection["best_point"] == "lr0.001-wd0.0001"
    diverged = read_json(layout.grid_dir(plan.cfg, "count", "lora", "lr1e+12-wd0.0001") / layout.METRICS)
    assert diverged["val_top1"] is None and diverged["diverged_at"] is not None


def test_all_points_diverged_gives_a_diverged_final_not_a_crash(tmp_path, prepared_task, tiny_weights):
    plan = _plan(tmp_path, prepared_task, tiny_weights, "study.grid.lora.optim.lr=[1.0e12]")
    selection = _run_study(plan, "lora")
    assert selection["best_point"] is None
    result = evaluate(plan, "count", "lora")
    assert result["status"] == "diverged" and result["test_top1"] is None


def test_export_folds_lora_into_a_plain_timm_checkpoint(tmp_path, prepared_task, tiny_weights):
    import torch

    from vpeft._compat import ensure_torchvision_importable
    from vpeft.data.shards import read_split
    from vpeft.export import export_merged
    from vpeft.methods import load_adapter
    from vpeft.models.backbone import create_backbone

    ensure_torchvision_importable()
    import timm

    plan = _plan(tmp_path, prepared_task, tiny_weights)
    _run_study(plan, "lora")
    merged = export_merged(plan, "count", "lora")
    cfg = plan.cfg
    plain = timm.create_model(cfg.model.name, pretrained=True, num_classes=6,
                              pretrained_cfg_overlay={"file": str(merged), "source": "",
                                                      "num_classes": 6}, **cfg.model.kwargs)
    assert not any("lora" in type(m).__name__.lower() for m in plain.modules())
    adapted = create_backbone(cfg.model.name, tiny_weights, 6, kwargs=cfg.model.kwargs)
    load_adapter(adapted, layout.final_dir(cfg, "count", "lora") / layout.ADAPTER)
    images = torch.from_numpy(read_split(layout.prepared_task(cfg, "count"), "val200").images[:8])
    x = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(plain.eval()(x), adapted.eval()(x), rtol=1e-5, atol=1e-5)
