"""train=vtab_as_published: each train.protocol key switches exactly one behaviour of the study's
public code (design.md §7), and every run records which protocol produced it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from conftest import REPO, smoke_plan, tiny_vit
from vpeft import layout
from vpeft.config import ConfigError
from vpeft.io import write_json
from vpeft.methods import apply, spec
from vpeft.protocol import best_candidate, run_point, select
from vpeft.train.loop import Run, TrainSettings, train_runs
from vpeft.train.protocol import Protocol
from vpeft.train.published import ProtocolError, protocol_name, redraw_added_linears, switches

CORRECTED = {"normalize_inputs": True, "drop_last": False, "lr_step_at_epoch_end": False,
             "redraw_added_linears": False, "vpt_shallow_drop_prompts_after_block0": False,
             "selection_ties": "first", "cache_linear_features": True}


def _plan(tmp_path: Path, prepared_task: Path, weights: Path, *extra: str):
    return smoke_plan(tmp_path, prepared_task, weights, *extra)


def test_the_as_published_train_config_flips_every_key_and_nothing_else(tmp_path, prepared_task,
                                                                         tiny_weights):
    default = _plan(tmp_path, prepared_task, tiny_weights).cfg
    published = _plan(tmp_path, prepared_task, tiny_weights, "train=vtab_as_published").cfg
    assert switches(default.train) == CORRECTED and protocol_name(default.train) == "vpeft"
    flipped = switches(published.train)
    assert all(flipped[k] != v for k, v in CORRECTED.items())
    assert protocol_name(published.train) == "as_published"
    # the public code trains in fp32 without autocast (vpeft's default: bf16 autocast on CUDA)
    assert published.train.precision == "fp32"
    # the rest of train/vtab.yaml (and the study's own train overrides) is unchanged
    rest = {k: v for k, v in default.train.items()
            if k not in ("protocol", "precision", *CORRECTED)}
    assert {k: published.train[k] for k in rest} == rest
    one = _plan(tmp_path, prepared_task, tiny_weights, "train.protocol.drop_last=true").cfg
    assert protocol_name(one.train) == "custom"


def test_unknown_or_mistyped_protocol_keys_are_refused(tmp_path, prepared_task, tiny_weights):
    # refused when the study is composed, naming the key and the likely intended one ...
    with pytest.raises(ConfigError, match=r"'train\.protocol\.drop_lats'.*'train\.protocol\.drop_last'"):
        _plan(tmp_path, prepared_task, tiny_weights, "+train.protocol.drop_lats=true")
    # ... and by the switches themselves, for a config built some other way
    with pytest.raises(ProtocolError, match="unknown key"):
        switches(OmegaConf.create({"protocol": {"drop_lats": True}}))
    with pytest.raises(ProtocolError, match="selection_ties.*'middle'"):
        switches(_plan(tmp_path, prepared_task, tiny_weights,
                       "train.protocol.selection_ties=middle").cfg.train)
    # a value of the wrong type: by the schema when composed, by the switches otherwise
    with pytest.raises(ConfigError, match=r"'train\.protocol\.drop_last'.*type bool.*'yes please'"):
        _plan(tmp_path, prepared_task, tiny_weights, "train.protocol.drop_last=yes please")
    with pytest.raises(ProtocolError, match="drop_last.*true or false"):
        switches(OmegaConf.create({"protocol": {"drop_last": "yes please"}}))


# --- the training loop: drop_last and the LR schedule -------------------------------------------

def _probe_run(n: int, settings: TrainSettings) -> Run:
    """A linear model on ``n`` 4-d feature vectors: the loop itself, nothing else."""
    torch.manual_seed(0)
    x, y = torch.randn(n, 4), torch.arange(n) % 3
    return Run(nn.Linear(4, 3), nn.Identity(), x, y, settings, seed=0)


def _from_config(train: dict, optim: dict) -> TrainSettings:
    """``train`` over params/train/vtab.yaml (which holds every loop setting's value)."""
    from omegaconf import OmegaConf

    vtab = OmegaConf.to_container(OmegaConf.load(REPO / "params" / "train" / "vtab.yaml"))
    return Protocol.from_train({**vtab, **train}, seeds=vtab["seeds"]).settings(**optim)


def _settings(**switch) -> TrainSettings:
    return _from_config({"epochs": 1, "batch_size": 64, "warmup_epochs": 0,
                                      "protocol": switch}, {"lr": 0.01, "weight_decay": 0.0})


@pytest.mark.parametrize("drop_last, steps", [(False, 13), (True, 12)])
def test_drop_last_gives_12_steps_of_64_on_800_images(drop_last, steps):
    run = _probe_run(800, _settings(drop_last=drop_last))
    result = train_runs([run])[0]
    assert run.steps_per_epoch == steps and result.steps == steps
    assert run.images_trained == (768 if drop_last else 800)


def test_lr_stepped_at_the_epoch_end_runs_epochs_0_and_1_at_warmup_lr():
    def lrs(at_end: bool) -> list[float]:
        settings = _from_config(
            {"epochs": 5, "batch_size": 8, "warmup_epochs": 2, "warmup_lr": 1e-6, "lr_min": 1e-5,
             "protocol": {"lr_step_at_epoch_end": at_end}}, {"lr": 0.1, "weight_decay": 0.0})
        run, seen = _probe_run(16, settings), []
        while not run.finished:
            loss = run.launch()
            if run.batch == 0:
                seen.append(run.optimizer.param_groups[0]["lr"])
            run.commit(loss)
        return seen

    start, end = lrs(False), lrs(True)
    assert len(start) == len(end) == 5
    assert start[0] == pytest.approx(1e-6) and start[1] > 1e-3  # vpeft: warm-up moves at epoch 1
    assert end[0] == end[1] == pytest.approx(1e-6)              # as published: epochs 0, 1 at warmup
    assert end[1:] == pytest.approx(start[:-1])                 # epoch e at vpeft's lr of e - 1


# --- input normalisation ---------------------------------------------------------------------------

def test_normalize_inputs_switches_between_mean_std_and_unit_range(tmp_path, prepared_task,
                                                                    tiny_weights):
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 16, 16, 3)
    model = tiny_vit()
    ranges = {}
    for value in (True, False):
        cfg = _plan(tmp_path, prepared_task, tiny_weights,
                    f"train.protocol.normalize_inputs={str(value).lower()}").cfg
        x = Protocol.from_config(cfg).normaliser(model)(images.contiguous())
        ranges[value] = (x.min().item(), x.max().item())
    assert ranges[False] == pytest.approx((0.0, 1.0))
    assert ranges[True] == pytest.approx((-1.0, 1.0))  # the tiny models' mean/std 0.5


# --- timm's init_weights after the method attaches -------------------------------------------------

REDRAWN = {"lora": {"lora_a", "lora_b"}, "adapter": {"down", "up"}, "pfeiffer": {"down", "up"},
           "adaptformer": {"down", "up"}, "convpass": {"down", "up"},
           "fact_tt": {"u", "v", "attn_cores", "fc1_cores", "fc2_cores"}, "fact_tk": {"u", "v"},
           "repadapter": set(), "vpt_shallow": set(), "ssf": set(), "difffit": set()}


@pytest.mark.parametrize("method", sorted(REDRAWN))
def test_redraw_touches_exactly_the_public_codes_linears(method):
    model = tiny_vit()
    apply(model, method)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    redrawn = redraw_added_linears(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # every changed tensor belongs to a redrawn module attribute, and the backbone, head and
    # every other method tensor are untouched
    attrs = {name.rsplit(".", 1)[-1] for name in redrawn}
    assert attrs == REDRAWN[method]
    # the method declares them itself, on its registry entry
    assert {a for names in spec(method).public_linears.values() for a in names} == attrs
    assert all(any(f".{a}" in k for a in attrs) for k in changed), changed
    for k in changed:
        if k.endswith("bias"):
            assert not after[k].any()
        else:
            assert 0.01 < after[k].std().item() < 0.03  # trunc-normal std .02 (bounds ±2)
    if method == "lora":  # B no longer starts at zero
        assert all(after[k].abs().sum() > 0 for k in after if k.endswith("lora_b"))


def _adapter_after_no_training(tmp_path, prepared_task, weights, *extra):
    """The saved adapter of a lora grid run whose lr is 0 throughout: its initial tensors."""
    plan = _plan(tmp_path, prepared_task, weights, "study.grid.lora.optim.lr=[0.0]",
                 "train.warmup_lr=0.0", "train.lr_min=0.0", "train.epochs=1", *extra)
    point = plan.points["lora"][0]
    metrics = run_point(plan, "count", "lora", point, "grid")
    tensors = load_file(str(layout.grid_dir(plan.cfg, "count", "lora", point.id) / layout.ADAPTER))
    return metrics, tensors


def test_redraw_key_is_honoured_by_a_run(tmp_path, prepared_task, tiny_weights):
    off_metrics, off = _adapter_after_no_training(tmp_path / "off", prepared_task, tiny_weights)
    on_metrics, on = _adapter_after_no_training(tmp_path / "on", prepared_task, tiny_weights,
                                                "train.protocol.redraw_added_linears=true")
    b_keys = [k for k in off if k.endswith("lora_b")]
    assert b_keys and all(not off[k].any() for k in b_keys)
    assert all(on[k].abs().sum() > 0 for k in b_keys)
    assert off_metrics["protocol"] == "vpeft" and on_metrics["protocol"] == "custom"


# --- VPT-shallow prompts after block 0 --------------------------------------------------------------

@pytest.mark.parametrize("drop", [False, True])
def test_vpt_shallow_prompts_are_dropped_after_block0_only_with_the_key(drop):
    model = tiny_vit().eval()
    apply(model, "vpt_shallow", num_prompts=5, drop_prompts_after_block0=drop)
    lengths = []
    for block in model.blocks.blocks:
        block.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    model(torch.randn(2, 3, 16, 16))
    tokens = 1 + 16  # CLS + 4x4 patches
    assert lengths[0] == tokens + 5
    assert lengths[1] == (tokens if drop else tokens + 5)


def test_vpt_shallow_key_reaches_the_attached_method(tmp_path, prepared_task, tiny_weights):
    for value in (False, True):
        cfg = _plan(tmp_path, prepared_task, tiny_weights,
                    f"train.protocol.vpt_shallow_drop_prompts_after_block0={str(value).lower()}").cfg
        protocol = Protocol.from_config(cfg)
        hparams = protocol.method_hparams("vpt_shallow", {"num_prompts": 5})
        model = apply(tiny_vit(), "vpt_shallow", **hparams)
        assert model.blocks.drop_after_block0 is value
        assert protocol.method_hparams("lora", {"rank": 2}) == {"rank": 2}


# --- selection ties -----------------------------------------------------------------------------------

def test_selection_ties_go_to_the_first_or_last_point(tmp_path, prepared_task, tiny_weights):
    candidates = [{"point": "a", "val_top1": 50.0}, {"point": "b", "val_top1": 60.0},
                  {"point": "c", "val_top1": 60.0}, {"point": "d", "val_top1": 40.0}]
    assert best_candidate(candidates, "first")["point"] == "b"
    assert best_candidate(candidates, "last")["point"] == "c"
    assert best_candidate([], "last") is None
    for ties, expected in (("first", 0), ("last", -1)):
        plan = _plan(tmp_path / ties, prepared_task, tiny_weights,
                     f"train.protocol.selection_ties={ties}")
        points = plan.points["lora"]
        assert len(points) == 2
        for point in points:  # two grid runs with equal val200 top-1, as a grid writes them
            write_json(layout.grid_dir(plan.cfg, "count", "lora", point.id) / layout.METRICS,
                       {"status": "ok", "val_top1": 55.0, "hparams": dict(point.hparams),
                        "optim": dict(point.optim)})
        selection = select(plan, "count", "lora")
        assert selection["best_point"] == points[expected].id
        assert selection["selection_ties"] == ties


# --- linear probing: cached eval-mode features or back-propagation in train mode ----------------------

def test_linear_probing_back_propagates_when_features_are_not_cached(tmp_path, prepared_task,
                                                                     tiny_weights):
    used = {}
    for cache in (True, False):
        plan = _plan(tmp_path / str(cache), prepared_task, tiny_weights,
                     f"train.cache_linear_features={str(cache).lower()}")
        metrics = run_point(plan, "count", "linear", plan.points["linear"][0], "grid")
        used[cache] = metrics["feature_cache"]["used"]
        assert metrics["protocol"] == ("vpeft" if cache else "custom")
    assert used == {True: True, False: False}


def test_a_run_resumed_with_the_end_of_epoch_schedule_ends_where_it_would_have(tmp_path):
    """The lr of a resumed epoch comes back with the optimiser state (the epoch-end step is not
    replayed at resume), so resuming changes nothing."""
    settings = _from_config(
        {"epochs": 4, "batch_size": 8, "warmup_epochs": 2, "checkpoint_every": 2,
         "protocol": {"lr_step_at_epoch_end": True}}, {"lr": 0.1, "weight_decay": 0.0})
    checkpoint = tmp_path / "resume.pt"
    whole = _probe_run(16, settings)
    whole.checkpoint = checkpoint  # saves its state after epoch 2 (and keeps going)
    train_runs([whole])
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    resumed = Run(nn.Linear(4, 3), nn.Identity(), x, y, settings, seed=0, checkpoint=checkpoint)
    assert resumed.epoch == 2
    train_runs([resumed])
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
