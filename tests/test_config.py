"""Hydra composition of params/ and grid expansion."""
from __future__ import annotations

import re

import pytest

from vpeft.config import ConfigError, grid_points, load_study

from conftest import REPO


def test_a_list_is_a_sweep_axis_and_a_scalar_is_fixed():
    points = grid_points({"name": "lora", "hparams": {"rank": [1, 8], "dropout": 0.1},
                          "optim": {"lr": [1e-3, 1e-2], "weight_decay": 1e-4}})
    assert [p.id for p in points] == ["lr0.001-wd0.0001-rank1", "lr0.001-wd0.0001-rank8",
                                      "lr0.01-wd0.0001-rank1", "lr0.01-wd0.0001-rank8"]
    assert all(p.hparams["dropout"] == 0.1 for p in points)
    assert points[1].hparams == {"rank": 8, "dropout": 0.1}
    assert points[2].optim == {"lr": 1e-2, "weight_decay": 1e-4}


def test_missing_optimiser_key_is_named():
    with pytest.raises(ConfigError, match="optim.weight_decay"):
        grid_points({"name": "x", "hparams": {}, "optim": {"lr": [1e-3]}})


def test_the_paper_study_is_a_config_choice(tmp_path):
    weights = tmp_path / "vit.npz"
    plan = load_study("vtab1k", [f"study.data.root={tmp_path}", f"model.weights={weights}"])
    assert len(plan.tasks) == 19
    assert plan.cfg.model.name == "vit_base_patch16_224.augreg_in21k"
    assert plan.cfg.train.epochs == 100 and plan.cfg.train.batch_size == 64
    # the paper's grids: lr {1e-3, 1e-2} x wd {1e-4, 1e-3} (x rank {1, 8, 16, 32} for LoRA);
    # full fine-tuning has its own, lower learning rates
    assert len(plan.points["linear"]) == 4 and len(plan.points["bitfit"]) == 4
    assert len(plan.points["lora"]) == 16
    assert max(p.optim["lr"] for p in plan.points["full"]) <= 1e-3
    assert min(p.optim["lr"] for p in plan.points["full"]) == 1e-5


def test_the_paper_study_without_a_data_root_names_the_key(monkeypatch):
    monkeypatch.delenv("VPEFT_VTAB_ROOT", raising=False)
    with pytest.raises(ConfigError, match="study.data.root"):
        load_study("vtab1k", ["model.weights=/w.npz"])


def test_unknown_study_is_a_clear_error():
    with pytest.raises(ConfigError, match="no_such_study"):
        load_study("no_such_study")


def test_unknown_method_in_a_study_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown method.*'nope'.*known"):
        load_study("smoke", ["study.methods=[linear,nope]"])


def test_every_method_file_has_a_registered_method_and_back():
    from vpeft import methods
    from vpeft.config import method_names_in_params

    assert set(method_names_in_params()) == set(methods.names())


# What a user supplies for the paper's studies (their data and weights); the demos need nothing.
_USER_KEYS = {"manyshot": ["study.data.root=/data", "model.weights=/w/vit.npz"],
              "robustness": ["study.data.root=/data", "model.weights=/w/clip.safetensors"],
              "vtab1k": ["study.data.root=/data", "model.weights=/w/vit.npz"]}


@pytest.mark.parametrize("study", sorted(p.stem for p in (REPO / "params" / "study").glob("*.yaml")))
def test_every_study_in_params_composes_and_plans(study):
    """Each study file composes with its config groups, names only known methods, expands a
    non-empty grid for every method and gives a job plan (what `vpeft check` counts)."""
    from vpeft.check import count_jobs

    plan = load_study(study, _USER_KEYS.get(study, []))
    assert plan.name == study and plan.tasks and plan.methods
    assert all(plan.points[m] for m in plan.methods)
    assert sum(count_jobs(plan).values()) > 2 * len(plan.tasks)  # at least train + evaluate


@pytest.mark.parametrize("override, message", [
    ("+train.warmup_epoch=5", r"'train\.warmup_epoch' \(from the override .*Did you mean "
                              r"'train\.warmup_epochs'\?.*Valid keys of train: .*warmup_lr"),
    ("+train.augment.flip=[horizontal]", r"'train\.augment\.flip'.*'train\.augment\.flips'"),
    ("+model.patch=16", r"'model\.patch'.*Valid keys of model: .*weights"),
    ("+train.foo.bar=1", r"unknown config key 'train\.foo' "),  # the unknown parent, once
])
def test_an_unknown_train_or_model_key_is_refused_naming_it(override, message):
    with pytest.raises(ConfigError, match=message):
        load_study("smoke", [override])


def test_timm_kwargs_and_augmentation_blocks_are_accepted():
    plan = load_study("smoke", ["+model.kwargs.qkv_bias=false",
                                "+train.augment={scale:[0.5,1.0],flips:[horizontal]}"])
    assert plan.cfg.model.kwargs.qkv_bias is False and plan.cfg.train.augment.scale == [0.5, 1.0]


def test_a_misspelled_key_in_a_study_file_names_the_file(tmp_path, monkeypatch):
    import shutil

    from vpeft.config import CONFIG_DIR_ENV

    params = tmp_path / "params"
    shutil.copytree(REPO / "params", params)
    study = params / "study" / "smoke.yaml"
    study.write_text(study.read_text().replace("  batch_size: 16\n", "  batchsize: 16\n"))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(params))
    with pytest.raises(ConfigError, match=r"'train\.batchsize' \(from params/study/smoke\.yaml\)"
                                          r"\. Did you mean 'train\.batch_size'\?"):
        load_study("smoke")


@pytest.mark.parametrize("override, message", [
    ("train.epochs=1.5", r"'train\.epochs' \(from the override 'train\.epochs=1\.5'\): expected a "
                         r"value of type int, got 1\.5"),
    ("train.seeds=[1,a]", r"'train\.seeds\[1\]' \(from the override .*\): expected a value of type int"),
    ("train.compile=1", r"'train\.compile'.*expected a value of type bool, got 1"),
    ("+study.grid.lora.optim.lrr=[1]", r"'study\.grid\.lora\.optim\.lrr'.*Did you mean "
                                       r"'study\.grid\.lora\.optim\.lr'\?.*Valid keys of "
                                       r"study\.grid\.lora\.optim: lr, weight_decay, drop_path"),
    ("+study.grid.lorra.optim.lr=[1]", r"study\.grid\.lorra .*no such method; known methods: .*lora"),
    ("+study.data.splitsizes.x=1", r"'study\.data\.splitsizes'.*'study\.data\.split_sizes'"),
    ("+analysis.topk=[1]", r"'analysis\.topk'.*Valid keys of analysis: top_ks, confidence_threshold"),
    ("~train.epochs", r"'train\.epochs' is required and no file sets it"),
])
def test_the_schema_refuses_wrong_types_unknown_grid_keys_and_missing_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        load_study("smoke", [override])


def _params_copy(tmp_path, monkeypatch):
    import shutil

    from vpeft.config import CONFIG_DIR_ENV

    params = tmp_path / "params"
    shutil.copytree(REPO / "params", params)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(params))
    return params


def test_a_misspelled_key_in_a_method_file_names_the_file(tmp_path, monkeypatch):
    lora = _params_copy(tmp_path, monkeypatch) / "method" / "lora.yaml"
    lora.write_text(lora.read_text().replace("optim:", "optimiser:"))
    with pytest.raises(ConfigError, match=r"'method\.lora\.optimiser' \(from .*params/method/"
                                          r"lora\.yaml\)\. Did you mean 'method\.lora\.optim'\? "
                                          r"Valid keys of method\.lora: name, hparams, optim"):
        load_study("smoke")


def test_a_hyper_parameter_out_of_range_is_refused_by_check_naming_the_method_file(tmp_path,
                                                                                 monkeypatch):
    """hparams' values are typed by each method's own dataclass (torch-side): `vpeft check` and
    the jobs refuse a value out of range, naming the file and the range."""
    from vpeft.check import check_method_hparams

    lora = _params_copy(tmp_path, monkeypatch) / "method" / "lora.yaml"
    lora.write_text(lora.read_text().replace("dropout: 0.1", "dropout: 1.5"))
    plan = load_study("smoke")
    with pytest.raises(ConfigError, match=r"params/method/lora\.yaml with study\.grid\.lora of "
                                          r"params/study/smoke\.yaml: .*dropout=1\.5 out of range"):
        check_method_hparams(plan)


def test_a_hyper_parameter_out_of_range_on_the_command_line_names_the_override():
    from vpeft.check import check_method_hparams

    plan = load_study("smoke", ["study.grid.lora.hparams.rank=[0]"])
    with pytest.raises(ConfigError, match=r"^the override 'study\.grid\.lora\.hparams\.rank=\[0\]' "
                                          r"over params/method/lora\.yaml.*: method 'lora': rank=0 "
                                          r"out of range"):
        check_method_hparams(plan)


# A misspelled hyper-parameter stops the composition itself (vpeft plan, the Snakefile, check),
# naming where it was written and the method's keys: from vpeft.hparams, without torch.
_RNAK = (r"unknown config key '{key}' \(from {origin}\)\. Did you mean '{parent}\.rank'\? "
         r"Valid keys of {parent}: rank, alpha, dropout$")


@pytest.mark.parametrize("override", ["+study.grid.lora.hparams.rnak=4",
                                      "study.grid.lora.hparams.rnak=4",
                                      "study.grid.lora.hparams={rnak: 4}"])
def test_a_misspelled_hyper_parameter_on_the_command_line_names_the_override(override):
    message = _RNAK.format(key=r"study\.grid\.lora\.hparams\.rnak",
                           origin=f"the override '{re.escape(override)}'",
                           parent=r"study\.grid\.lora\.hparams")
    with pytest.raises(ConfigError, match=message):
        load_study("smoke", [override])
    # a method file's value changed from the command line, misspelled
    with pytest.raises(ConfigError, match=r"'method\.lora\.hparams\.rnak' \(from the override "
                                          r"'method\.lora\.hparams\.rnak=4'\)\. Did you mean "
                                          r"'method\.lora\.hparams\.rank'\?"):
        load_study("vtab1k", [*_USER_KEYS["vtab1k"], "method.lora.hparams.rnak=4"])


def test_a_misspelled_hyper_parameter_in_a_study_file_names_the_file(tmp_path, monkeypatch):
    study = _params_copy(tmp_path, monkeypatch) / "study" / "smoke.yaml"
    study.write_text(study.read_text().replace("{rank: [2]}", "{rnak: [2]}"))
    message = _RNAK.format(key=r"study\.grid\.lora\.hparams\.rnak",
                           origin=r"params/study/smoke\.yaml", parent=r"study\.grid\.lora\.hparams")
    with pytest.raises(ConfigError, match=message):
        load_study("smoke")


def test_a_misspelled_hyper_parameter_in_a_method_file_names_the_file(tmp_path, monkeypatch):
    lora = _params_copy(tmp_path, monkeypatch) / "method" / "lora.yaml"
    lora.write_text(lora.read_text().replace("rank:", "rnak:"))
    message = _RNAK.format(key=r"method\.lora\.hparams\.rnak", origin=r"params/method/lora\.yaml",
                           parent=r"method\.lora\.hparams")
    with pytest.raises(ConfigError, match=message):
        load_study("smoke")
    # a study that does not train lora still composes every method file: refused too
    with pytest.raises(ConfigError, match=message):
        load_study("demo", ["study.methods=[linear]"])


def test_a_method_without_hyper_parameters_says_it_takes_none():
    with pytest.raises(ConfigError, match=r"'study\.grid\.linear\.hparams\.rank' \(from the "
                                          r"override .*Valid keys of study\.grid\.linear\.hparams: none"):
        load_study("smoke", ["study.grid.linear.hparams.rank=[4]"])


def test_the_torch_free_hyper_parameter_table_equals_the_methods_typed_configs():
    import dataclasses

    from vpeft import methods
    from vpeft.hparams import METHODS

    assert set(METHODS) == set(methods.names())
    for name in methods.names():
        fields = tuple(f.name for f in dataclasses.fields(methods.spec(name).config_cls))
        assert METHODS[name].names == fields, name
        assert set(METHODS[name].shape) <= set(fields), name


def test_planning_imports_no_torch():
    """`vpeft plan` (and so each Snakemake DAG build) checks hyper-parameter names without torch."""
    import subprocess
    import sys

    code = ("import sys; from vpeft.cli import main; "
            "rc = main(['plan', '--study', 'smoke', '-o', '+study.grid.lora.hparams.rnak=4']); "
            "assert rc == 2, rc; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "study.grid.lora.hparams.rnak" in proc.stderr and "Did you mean" in proc.stderr


@pytest.mark.parametrize("study", sorted(p.stem for p in (REPO / "params" / "study").glob("*.yaml")))
def test_documented_keys_need_no_plus_in_any_study(study):
    """docs/data.md shows `study.data.allow_duplicates=true` and docs/config.md
    `study.grid.lora.hparams.rank=[4,8]`: valid without Hydra's `+` whether or not the study's
    files write the key; a misspelled one is still refused, naming the override."""
    plan = load_study(study, [*_USER_KEYS.get(study, []), "study.data.allow_duplicates=true",
                              "study.grid.lora.hparams.rank=[4,8]", "train.augment.scale=[0.5,1.0]"])
    assert plan.cfg.study.data.allow_duplicates is True
    assert plan.cfg.train.augment.scale == [0.5, 1.0]
    if "lora" in plan.methods:
        assert sorted({p.hparams["rank"] for p in plan.points["lora"]}) == [4, 8]
    with pytest.raises(ConfigError, match=r"'study\.data\.allow_duplicate' \(from the override "
                                          r"'study\.data\.allow_duplicate=true'\)\. Did you mean "
                                          r"'study\.data\.allow_duplicates'\?"):
        load_study(study, [*_USER_KEYS.get(study, []), "study.data.allow_duplicate=true"])


def test_method_is_a_hydra_group_composed_under_method_and_narrowed_by_the_study():
    plan = load_study("smoke", ["method.linear.optim.weight_decay=[0.5]"])
    assert sorted(plan.cfg.method) == ["linear", "lora"]  # the study's methods are kept
    assert plan.cfg.method.lora.hparams.rank == [1, 8, 16, 32]  # params/method/lora.yaml
    # study.grid.<method> (the study file) is merged last: it wins where it sets a key ...
    assert [p.hparams["rank"] for p in plan.points["lora"]] == [2, 2]
    assert {p.optim["weight_decay"] for p in plan.points["linear"]} == {1e-4}
    # ... and a key it leaves alone follows the method file and the command line
    plan = load_study("smoke", ["method.lora.hparams.dropout=0.2"])
    assert {p.hparams["dropout"] for p in plan.points["lora"]} == {0.2}


def test_every_shipped_grid_point_is_valid_for_its_method():
    from vpeft.check import check_method_hparams

    for study in sorted(p.stem for p in (REPO / "params" / "study").glob("*.yaml")):
        check_method_hparams(load_study(study, _USER_KEYS.get(study, [])))
