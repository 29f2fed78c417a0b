"""Where every artefact lives. The Snakefile and the CLI both use these functions, so the paths a
rule declares are exactly the paths its command writes."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

SOURCE_TASK = "source"  # the demo's pretraining set, prepared like any task


def data_root_dir(cfg: DictConfig, name: str) -> Path:
    """``study.data.root/<name>``: a task's files (VTAB-1K, the demo's generated tasks) or a
    many-shot dataset's."""
    return Path(cfg.study.data.root) / name


def view_dir(cfg: DictConfig, task: str) -> Path:
    """``study.data.views/<task>``: a many-shot task's VTAB-layout view (vpeft.data.manyshot)."""
    return Path(cfg.study.data.views) / task


def prepared_dir(cfg: DictConfig) -> Path:
    """``data/prepared/<study>``: every prepared task of the study (dvc.yaml's data stage)."""
    return Path(cfg.paths.data) / "prepared" / cfg.study.name


def prepared_task(cfg: DictConfig, task: str) -> Path:
    return prepared_dir(cfg) / task


def weights_info(weights: str | Path) -> Path:
    """The JSON record beside a file or folder of weights (``<weights>.json``): written by
    `vpeft pretrain` (the backbone), `vpeft zeroshot-head` (the head) and `vpeft fit-clip` (the
    miniature's CLIP folder)."""
    return Path(weights).with_suffix(".json")


# The run directory of a study, ``runs/<study>``, and everything under it. The ``*_in`` functions
# take that directory (readers of a finished study: vpeft.analysis, vpeft.report); the others
# take the study's config and call them. Every argument may be a Snakemake wildcard pattern such
# as "{task}": the rules declare the very paths the verbs write.
def runs_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs) / cfg.study.name


CALIBRATION = "calibration.json"  # measured cost per method and phase (vpeft.calibration)


def calibration_file(cfg: DictConfig) -> Path:
    """The study's calibration file, read by vpeft.requests when the jobs are planned."""
    return runs_dir(cfg) / CALIBRATION


def task_dir_in(runs: str | Path, task: str) -> Path:
    return Path(runs) / task


def method_dir_in(runs: str | Path, task: str, method: str) -> Path:
    return Path(runs) / task / method


def method_dir(cfg: DictConfig, task: str, method: str) -> Path:
    return method_dir_in(runs_dir(cfg), task, method)


GRID_DIR = "grid"  # grid/<point id>/ in a method directory


def grid_dir_in(runs: str | Path, task: str, method: str, point: str) -> Path:
    return method_dir_in(runs, task, method) / GRID_DIR / point


def grid_dir(cfg: DictConfig, task: str, method: str, point: str) -> Path:
    return grid_dir_in(runs_dir(cfg), task, method, point)


def seeds(cfg: DictConfig) -> list[int]:
    """``train.seeds``: one final run per seed; the grid is searched once, with the first.

    A ConfigError names the key when the list is empty, repeats a seed or holds a non-integer.
    """
    from vpeft.errors import ConfigError

    raw = cfg.train.get("seeds")
    values = list(raw) if raw is not None and not isinstance(raw, (str, int)) else None
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                             for s in values):
        raise ConfigError(f"train.seeds: {raw!r}; expected a non-empty list of integers >= 0, "
                          "e.g. [42] or [42, 43, 44]")
    if len(set(values)) != len(values):
        raise ConfigError(f"train.seeds: {values} names a seed twice")
    if cfg.train.get("search_per_seed", False):
        raise ConfigError("train.search_per_seed: true is not implemented; the grid is searched "
                          "once, with the first of train.seeds (set it to false)")
    return [int(s) for s in values]


FINAL_DIR = "final"  # the first seed's final run; final-seed<s>/ for every further seed


SEED_SUFFIX = "-seed"  # final-seed<s>/, wise-seed<s>/


def _seed_suffix(seed: int | str | None) -> str:
    return "" if seed is None else f"{SEED_SUFFIX}{seed}"


def final_dir_in(runs: str | Path, task: str, method: str, seed: int | str | None = None) -> Path:
    """``final/`` when ``seed`` is None (the first seed), else ``final-seed<seed>/`` (``seed``
    may be the pattern "{seed}")."""
    return method_dir_in(runs, task, method) / (FINAL_DIR + _seed_suffix(seed))


def _further_seed(cfg: DictConfig, seed: int | None) -> int | None:
    """None for the first seed of train.seeds (or None), else the seed."""
    return None if seed is None or int(seed) == seeds(cfg)[0] else int(seed)


def final_dir(cfg: DictConfig, task: str, method: str, seed: int | None = None) -> Path:
    """The final run of ``seed``: ``final/`` for the first seed (or None), where single-seed
    studies have always written it, else ``final-seed<seed>/``."""
    return final_dir_in(runs_dir(cfg), task, method, _further_seed(cfg, seed))


def seed_final_dirs(cfg: DictConfig, task: str, method: str) -> list[tuple[int, Path]]:
    """[(seed, final run directory)] for every seed of ``train.seeds``, in order."""
    return [(s, final_dir(cfg, task, method, s)) for s in seeds(cfg)]


SELECTION = "selection.json"  # the chosen grid point, in the method directory


def selection_file_in(runs: str | Path, task: str, method: str) -> Path:
    return method_dir_in(runs, task, method) / SELECTION


def selection_file(cfg: DictConfig, task: str, method: str) -> Path:
    return selection_file_in(runs_dir(cfg), task, method)


ANALYSIS_DIR = "analysis"  # beside the method directories of a task


def analysis_dir_in(runs: str | Path, task: str) -> Path:
    return Path(runs) / task / ANALYSIS_DIR


def analysis_dir(cfg: DictConfig, task: str) -> Path:
    return analysis_dir_in(runs_dir(cfg), task)


def report_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.reports) / cfg.study.name


# Files inside a run directory.
METRICS = "metrics.json"
PREDICTIONS = "predictions.parquet"          # grid runs: val200 predictions with labels
TEST_LOGITS = "test_logits.parquet"          # final run: test predictions, no labels
ADAPTER = "adapter.safetensors"              # trainable parameters only (method + head)
ADAPTER_CONFIG = "adapter_config.json"
TEST_EVAL = "test_eval.json"                 # the single test evaluation
TEST_PREDICTIONS = "test_predictions.parquet"

GRID_OUTPUTS = (METRICS, PREDICTIONS, ADAPTER, ADAPTER_CONFIG)
FINAL_OUTPUTS = (METRICS, TEST_LOGITS, ADAPTER, ADAPTER_CONFIG)
EVAL_OUTPUTS = (TEST_EVAL, TEST_PREDICTIONS)

# WiSE-FT of a final run (the robustness study), in the method directory beside that run.
WISE_DIR = "wise"
WISE_TABLE = "wise.parquet"     # top-1 per (alpha, evaluation set)
WISE_SUMMARY = "wise.json"
WISE_ID_SET = "id"              # the in-distribution test set's name in WISE_TABLE (ImageNet val)
WISE_OUTPUTS = (WISE_TABLE, WISE_SUMMARY)


def wise_dir_in(runs: str | Path, task: str, method: str, seed: int | str | None = None) -> Path:
    """``wise/`` when ``seed`` is None (the first seed), else ``wise-seed<seed>/`` (``seed`` may
    be the pattern "{seed}")."""
    return method_dir_in(runs, task, method) / (WISE_DIR + _seed_suffix(seed))


def wise_dir(cfg: DictConfig, task: str, method: str, seed: int | None = None) -> Path:
    """WiSE-FT of one seed's final run: ``wise/`` for the first seed (``final/``), else
    ``wise-seed<s>/`` beside ``final-seed<s>/``."""
    return wise_dir_in(runs_dir(cfg), task, method, _further_seed(cfg, seed))


# Per-task analysis of the final test predictions (one Parquet each, in analysis_dir).
ANALYSIS_TABLES = ("agreement", "accuracy", "oracle", "ensembles", "confidence", "confident_overlap")


def analysis_files() -> list[str]:
    """The analysis tables' files, relative to analysis_dir (REPORT_PART not among them)."""
    return [f"{name}.parquet" for name in ANALYSIS_TABLES]


# Beside them: the task's collected runs and bootstrap, saved by its analyze job for the report
# (vpeft.report.collect.save_task_part).
REPORT_PART = "report_part.json"

# The study report, in report_dir: the landing page, one page per task (vpeft.report.pages names
# them) and the tables behind them. The report rule, dvc.yaml (checked by tests/test_layout.py),
# `vpeft report` and vpeft.report.collect take these names from here.
REPORT_INDEX = "index.html"
REPORT_TABLES = {"results": "results.parquet", "grid": "grid.parquet",
                 "summary": "summary.parquet"}
# Tables written when the study's test predictions were collected (always, in the pipeline);
# older report directories and hand-made results may lack them.
REPORT_OPTIONAL_TABLES = {"seeds": "seeds.parquet", "chance": "chance.parquet",
                          "stats": "stats.parquet", "seed_noise": "seed_noise.parquet"}
REPORT_ANALYSIS_PREFIX = "analysis_"         # analysis_<name>.parquet: a table over all tasks
REPORT_SUMMARY_JSON = "summary.json"         # the summary as JSON records (DVC plots)
REPORT_METRICS_JSON = "metrics.json"         # per method: group means, mean, sizes (DVC metrics)


def report_files() -> list[str]:
    """Every file `vpeft report` writes besides its pages, relative to report_dir."""
    return [*REPORT_TABLES.values(), *REPORT_OPTIONAL_TABLES.values(),
            *(f"{REPORT_ANALYSIS_PREFIX}{name}.parquet" for name in ANALYSIS_TABLES),
            REPORT_SUMMARY_JSON, REPORT_METRICS_JSON]
