"""Compose the Hydra config tree under ``params/`` and expand a study into its run plan.

A study is the product tasks x methods x grid points. A list value under a method's ``hparams`` or
``optim`` is a sweep axis (the study's own convention); a scalar is fixed. The plan is a pure
function of the config, so Snakemake (which builds the DAG) and each job (which runs one point)
derive the same grid points from the same files.
"""
from __future__ import annotations

from vpeft.errors import UserError

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR_ENV = "VPEFT_PARAMS"


class ConfigError(UserError):
    """A config key is missing or holds a value of the wrong kind."""


def params_dir() -> Path:
    """The Hydra config root: ``$VPEFT_PARAMS``, else ``./params`` of the working directory."""
    path = Path(os.environ.get(CONFIG_DIR_ENV, "params")).resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"{path}/config.yaml not found: run from the repository root or set {CONFIG_DIR_ENV} "
            "to the params/ directory")
    return path


def compose(study: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``params/config.yaml`` for one study."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    cfg_overrides = [f"study={study}", *overrides]
    try:
        with initialize_config_dir(config_dir=str(params_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=cfg_overrides)
    except HydraException as err:
        raise ConfigError(f"cannot compose params/ with overrides {cfg_overrides}: {err}") from err
    return cfg


def method_names_in_params() -> list[str]:
    """Methods that have a ``params/method/<name>.yaml``."""
    return sorted(p.stem for p in (params_dir() / "method").glob("*.yaml"))


def method_config(cfg: DictConfig, method: str) -> DictConfig:
    """``params/method/<method>.yaml`` with the study's reduced grid (``study.grid.<method>``) merged in.

    Method files are plain YAML (no defaults list), so they are read directly: composing each one
    through Hydra would cost every job and every DAG build a fifth of a second per method.
    """
    path = params_dir() / "method" / f"{method}.yaml"
    if not path.is_file():
        raise ConfigError(f"study.methods: no params/method/{method}.yaml; known methods: "
                          f"{method_names_in_params()}")
    mcfg = OmegaConf.load(path)
    study_grid = OmegaConf.select(cfg, f"study.grid.{method}", default=None)
    if study_grid is not None:
        mcfg = OmegaConf.merge(mcfg, study_grid)
    return mcfg


@dataclass(frozen=True)
class GridPoint:
    """One point of a method's grid: method hyper-parameters and optimiser settings."""

    id: str
    hparams: Mapping[str, Any]
    optim: Mapping[str, Any]


def _axes(section: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    return [(key, list(value) if isinstance(value, (list, tuple, ListConfig)) else [value])
            for key, value in section.items()]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def grid_points(mcfg: Mapping[str, Any]) -> list[GridPoint]:
    """Expand list-valued keys of ``hparams`` and ``optim`` into grid points with readable ids.

    The id names only swept keys (``lr0.001-wd0.0001-rank8``); fixed keys stay in the values.
    """
    plain = OmegaConf.to_container(mcfg, resolve=True) if isinstance(mcfg, DictConfig) else dict(mcfg)
    optim, hparams = plain.get("optim") or {}, plain.get("hparams") or {}
    for key in ("lr", "weight_decay"):
        if key not in optim:
            raise ConfigError(f"method '{plain.get('name')}': optim.{key} is required")
    optim_axes, hparam_axes = _axes(optim), _axes(hparams)
    short = {"lr": "lr", "weight_decay": "wd"}
    points = []
    for combo in itertools.product(*(values for _, values in optim_axes + hparam_axes)):
        o = {k: v for (k, _), v in zip(optim_axes, combo[: len(optim_axes)])}
        h = {k: v for (k, _), v in zip(hparam_axes, combo[len(optim_axes):])}
        parts = [f"{short.get(k, k)}{_fmt(o[k])}" for k, vals in optim_axes if len(vals) > 1 or k in short]
        parts += [f"{k}{_fmt(h[k])}" for k, vals in hparam_axes if len(vals) > 1]
        points.append(GridPoint(id="-".join(parts), hparams=h, optim=o))
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"method '{plain.get('name')}': duplicate values in a sweep list: {ids}")
    return points


@dataclass
class StudyPlan:
    """Everything Snakemake needs to lay out the DAG of one study."""

    cfg: DictConfig
    name: str
    tasks: list[str]
    methods: list[str]
    points: dict[str, list[GridPoint]] = field(default_factory=dict)

    def point(self, method: str, point_id: str) -> GridPoint:
        for p in self.points[method]:
            if p.id == point_id:
                return p
        raise ConfigError(f"method '{method}' has no grid point '{point_id}'; "
                          f"known: {[p.id for p in self.points[method]]}")


# Keys of the train and model groups that params/train/*.yaml and params/model/*.yaml leave open:
# a block's own keys (checked here), or free-form (timm's model kwargs: timm refuses unknown ones).
_BLOCK_KEYS = {"train.augment": ("scale", "ratio", "flips")}   # vpeft.train.augment
_FREE_FORM = ("model.kwargs",)


def _key_paths(node: Any, prefix: str) -> set[str]:
    """Dotted paths of every key under ``node`` (a plain dict)."""
    out: set[str] = set()
    for key, value in (node or {}).items():
        path = f"{prefix}.{key}"
        out.add(path)
        if isinstance(value, dict):
            out |= _key_paths(value, path)
    return out


def _check_known_keys(cfg: DictConfig, study: str, overrides: Sequence[str]) -> None:
    """Every ``train.*`` and ``model.*`` key must be one that a file of its config group defines:
    a misspelled key (``+train.warmup_epoch=5``, a typo in a study file) is an error naming the
    key, where it came from and the valid keys, never silently ignored."""
    import difflib

    for group in ("train", "model"):
        known: set[str] = set()
        for path in sorted((params_dir() / group).glob("*.yaml")):
            group_file = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            group_file.pop("defaults", None)  # Hydra's defaults list, not a setting
            known |= _key_paths(group_file, group)
        for block, keys in _BLOCK_KEYS.items():
            if block.startswith(group + "."):
                known |= {block} | {f"{block}.{k}" for k in keys}
        given = _key_paths(OmegaConf.to_container(cfg[group], resolve=False), group)
        for key in sorted(given - known):
            if key.startswith(tuple(f"{f}." for f in _FREE_FORM)):
                continue
            parent = key.rpartition(".")[0]
            if parent in given - known:
                continue  # the unknown parent is reported
            siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
            where = next((f"the override {o!r}" for o in overrides if key in o),
                         f"params/study/{study}.yaml")
            close = difflib.get_close_matches(key.rpartition(".")[2], siblings, n=1)
            hint = f" Did you mean '{parent}.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}' (from {where}).{hint} Valid keys of "
                              f"{parent}: {', '.join(siblings)}")


def load_study(study: str, overrides: Sequence[str] = ()) -> StudyPlan:
    """Compose a study and expand the grid of every method it lists."""
    cfg = compose(study, overrides=overrides)
    _check_known_keys(cfg, study, overrides)
    _require(cfg, ["study.name", "study.tasks", "study.methods", "study.data.root", "model.name",
                   "model.weights"])
    if cfg.study.name != study:
        raise ConfigError(f"params/study/{study}.yaml sets study.name={cfg.study.name!r}; "
                          f"expected {study!r}")
    methods = list(cfg.study.methods)
    unknown = sorted(set(methods) - set(method_names_in_params()))
    if unknown:
        raise ConfigError(f"study.methods: unknown method(s) {unknown}; known: "
                          f"{method_names_in_params()}")
    plan = StudyPlan(cfg=cfg, name=study, tasks=list(cfg.study.tasks), methods=methods)
    for method in methods:
        plan.points[method] = grid_points(method_config(cfg, method))
    return plan


def _require(cfg: DictConfig, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception as err:  # MissingMandatoryValue or an interpolation that cannot resolve
            raise ConfigError(f"config key '{key}' has no value ({err}); set it in params/ or on "
                              f"the command line") from err
        if value is None:
            raise ConfigError(f"config key '{key}' is required")


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain JSON-able Python (recorded beside every result)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
