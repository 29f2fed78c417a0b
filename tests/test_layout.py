"""vpeft.layout owns the artefact paths: dvc.yaml, the rules and the report agree with it, and
dvc.yaml tracks every method's config (adding a method cannot silently leave it out). Every path
of dvc.yaml (outs, deps, params files) is checked here against layout, the registry and the
repository, for every study in params/study."""
from __future__ import annotations

import yaml

from vpeft import layout, methods
from vpeft.config import method_names_in_params
from vpeft.report.pages import TASK_DIR

from conftest import REPO

STUDY_DIR = "reports/${study}/"


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _paths(entries: list) -> list[str]:
    """dvc.yaml list entries as paths (an entry is a path or a one-key mapping path -> options)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_dvc_tracks_exactly_the_files_the_report_writes():
    report = _stages()["report"]
    outs = set(_paths(report["outs"]))
    metrics = set(_paths(report["metrics"]))
    expected = {layout.REPORT_INDEX, TASK_DIR, *layout.report_files()}
    assert metrics == {STUDY_DIR + layout.REPORT_METRICS_JSON}
    assert outs | metrics == {STUDY_DIR + name for name in expected}
    assert not outs & metrics


def test_dvc_tracks_every_method_config_and_every_method_has_one():
    """The train stage depends on the whole params/method/ directory, so a new method's YAML is
    tracked without editing dvc.yaml (adding a method: one file, one YAML, one test case)."""
    train = _stages()["train"]
    assert "params/method" in _paths(train["deps"])
    assert not [p for p in _paths(train["params"]) if p.startswith("params/method/")]
    # every registered method has its YAML (peft.yaml: Hugging Face peft's LoRA, a variant)
    assert sorted(methods.names()) == method_names_in_params()


# Every other path of dvc.yaml: what a stage tracks is a path vpeft.layout names (outs), a file
# of the repository or an earlier stage's out (deps), and a config file each study composes
# (params). ${study} stands for each study in turn.
STUDIES = sorted(p.stem for p in (REPO / "params" / "study").glob("*.yaml"))


def _composed(study: str):
    """The study's config and the config-group choices Hydra made for it (model, train, ...)."""
    from hydra import compose, initialize_config_dir

    from vpeft.config import params_dir

    with initialize_config_dir(config_dir=str(params_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"study={study}"],
                      return_hydra_config=True)
    choices = {group: name for group, name in cfg.hydra.runtime.choices.items()
               if (params_dir() / group).is_dir()}
    return cfg, choices


def _params_files(stage: dict) -> dict[str, object]:
    """params entries: file -> the keys it lists (None: the whole file)."""
    return {next(iter(p)): next(iter(p.values())) for p in stage.get("params", [])
            if isinstance(p, dict)}


def test_dvc_outs_are_layout_paths_for_every_study():
    stages = _stages()
    for study in STUDIES:
        cfg, _ = _composed(study)
        expected = {
            "data": {str(layout.prepared_dir(cfg)), str(cfg.paths.models)},
            "train": {str(layout.runs_dir(cfg))},
            "report": {str(layout.report_dir(cfg) / name)
                       for name in (layout.REPORT_INDEX, TASK_DIR, *layout.report_files())},
        }
        assert set(stages) == set(expected)
        for name, stage in stages.items():
            outs = {p.replace("${study}", study)
                    for p in _paths(stage["outs"]) + _paths(stage.get("metrics", []))}
            assert outs == expected[name], (study, name)


def test_dvc_stages_depend_on_repository_files_or_earlier_outs():
    outs: set[str] = set()
    for name, stage in _stages().items():  # in order: data, train, report
        for dep in stage["deps"]:
            assert (REPO / dep).exists() or dep in outs, (name, dep)
        outs |= set(_paths(stage["outs"]))


def test_dvc_params_are_the_config_files_each_study_composes():
    stages = _stages()
    workflow = yaml.safe_load((REPO / "params" / "workflow.yaml").read_text(encoding="utf-8"))
    for study in STUDIES:
        _, choices = _composed(study)
        for name, stage in stages.items():
            files = {f.replace("${study}", study): keys
                     for f, keys in _params_files(stage).items()}
            for path, keys in files.items():
                assert (REPO / path).is_file(), (name, path)
                if path == "params/workflow.yaml":
                    assert set(keys) <= set(workflow), (name, keys)
            assert f"params/study/{study}.yaml" in files, (study, name)
            # data builds the backbone (model); train also trains (train, method); the report
            # only reads what they wrote
            groups = {"data": {"model"}, "train": {"model", "train"}, "report": set()}[name]
            if groups:
                assert "params/config.yaml" in files, (study, name)
            for group in groups:
                assert f"params/{group}/{choices[group]}.yaml" in files, (study, name, group)


def test_run_directory_functions_take_wildcard_patterns():
    """The rules declare "{task}"/"{method}"/"{seed}" patterns through the same functions the
    verbs call with values; the cfg-taking functions are the run-directory ones on runs_dir."""
    from omegaconf import OmegaConf

    runs = "runs/s"
    assert str(layout.final_dir_in(runs, "{task}", "{method}")) == "runs/s/{task}/{method}/final"
    assert (str(layout.final_dir_in(runs, "{task}", "{method}", "{seed}"))
            == "runs/s/{task}/{method}/final-seed{seed}")
    assert (str(layout.wise_dir_in(runs, "{task}", "{method}", "{seed}"))
            == "runs/s/{task}/{method}/wise-seed{seed}")
    assert str(layout.selection_file_in(runs, "t", "m")) == "runs/s/t/m/selection.json"
    assert str(layout.grid_dir_in(runs, "t", "m", "{point}")) == "runs/s/t/m/grid/{point}"
    assert str(layout.analysis_dir_in(runs, "t")) == "runs/s/t/analysis"
    cfg = OmegaConf.create({"paths": {"runs": "runs", "data": "data"}, "study": {"name": "s"},
                            "train": {"seeds": [7, 8]}})
    assert str(layout.runs_dir(cfg)) == runs
    assert layout.final_dir(cfg, "t", "m", 7) == layout.final_dir_in(runs, "t", "m")
    assert layout.final_dir(cfg, "t", "m", 8) == layout.final_dir_in(runs, "t", "m", 8)
    assert layout.wise_dir(cfg, "t", "m", 8) == layout.wise_dir_in(runs, "t", "m", 8)
    assert layout.wise_dir(cfg, "t", "m") == layout.wise_dir_in(runs, "t", "m")
    assert str(layout.prepared_task(cfg, "{task}")) == "data/prepared/s/{task}"


def test_declared_outputs_are_what_the_verbs_write():
    """`vpeft analyze` writes one table per name of vpeft.analysis.TABLES (the analyze rule
    declares layout.analysis_files()); `vpeft pretrain` writes layout.weights_info beside the
    weights (the pretrain rule's second output)."""
    from vpeft import analysis

    assert tuple(analysis.TABLES) == layout.ANALYSIS_TABLES
    assert layout.analysis_files() == [f"{t}.parquet" for t in analysis.TABLES]
    assert str(layout.weights_info("models/vit.safetensors")) == "models/vit.json"
