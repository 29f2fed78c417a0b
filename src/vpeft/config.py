"""Compose the Hydra config tree under ``params/`` and expand a study into its run plan.

A study is the product tasks x methods x grid points. A list value under a method's ``hparams`` or
``optim`` is a sweep axis (the study's own convention); a scalar is fixed. The plan is a pure
function of the config, so Snakemake (which builds the DAG) and each job (which runs one point)
derive the same grid points from the same files.
"""
from __future__ import annotations

from vpeft.errors import ConfigError, UserError  # ConfigError: importable from here too

import functools
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from vpeft.schema import DataSource

CONFIG_DIR_ENV = "VPEFT_PARAMS"


def params_dir() -> Path:
    """The Hydra config root: ``$VPEFT_PARAMS``, else ``./params`` of the working directory."""
    path = Path(os.environ.get(CONFIG_DIR_ENV, "params")).resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(
            f"{path}/config.yaml not found: run from the repository root or set {CONFIG_DIR_ENV} "
            "to the params/ directory")
    return path


def compose(study: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``params/config.yaml`` for one study, with every file of the ``method`` group
    under ``method.<name>`` (a Hydra group selected many times: the command line can change a
    method's grid, ``method.lora.optim.lr=[1e-3]``; a study file narrows it under study.grid)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    cfg_overrides = [f"study={study}", *overrides]
    every_method = [f"+method@method.{name}={name}" for name in method_names_in_params()]
    try:
        with initialize_config_dir(config_dir=str(params_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config",
                                overrides=[cfg_overrides[0], *every_method,
                                           *map(_set_or_add, overrides)])
    except HydraException as err:
        raise ConfigError(f"cannot compose params/ with overrides {cfg_overrides}: {err}") from err
    return cfg


_PLAIN_KEY = re.compile(r"(?!hydra\.)[A-Za-z_]\w*(\.\w+)+=")


def _set_or_add(override: str) -> str:
    """``a.b=v`` as ``++a.b=v``: set the key, or add it where the composed files leave it out.
    A documented key (``study.data.allow_duplicates``, a study's grid block) is then valid without
    Hydra's ``+`` in every study, whichever files happen to write it; a misspelled one is still
    refused, by the schema check, naming this override. Group choices (``train=...``), deletions
    and overrides already prefixed are left as written."""
    return f"++{override}" if _PLAIN_KEY.match(override) else override


def method_names_in_params() -> list[str]:
    """Methods that have a ``params/method/<name>.yaml``."""
    return sorted(p.stem for p in (params_dir() / "method").glob("*.yaml"))


def method_config(cfg: DictConfig, method: str) -> DictConfig:
    """``method.<method>`` (``params/method/<method>.yaml`` as composed) with the study's reduced
    grid (``study.grid.<method>``) merged in."""
    mcfg = OmegaConf.select(cfg, f"method.{method}", default=None)
    if mcfg is None:
        raise ConfigError(f"study.methods: no params/method/{method}.yaml; known methods: "
                          f"{method_names_in_params()}")
    mcfg = OmegaConf.create(OmegaConf.to_container(mcfg, resolve=True))  # not struct: a grid may add keys
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
    overrides: tuple[str, ...] = ()  # the command line's, as given: errors name them

    def point(self, method: str, point_id: str) -> GridPoint:
        for p in self.points[method]:
            if p.id == point_id:
                return p
        raise ConfigError(f"method '{method}' has no grid point '{point_id}'; "
                          f"known: {[p.id for p in self.points[method]]}")


def _origin(key: str, overrides: Sequence[str], files: Sequence[Path]) -> str:
    """Where ``key`` was most likely set: the override naming it, else the first file of
    ``files`` that writes its last part, else the first file."""
    key = re.sub(r"\[\d+\]", "", key)  # a list element: where its list was set
    for o in overrides:
        if key in o.split("=", 1)[0]:
            return f"the override {o!r}"
    for o in overrides:  # a block set whole: study.grid.lora.hparams={rnak: 4}
        if key.startswith(o.split("=", 1)[0].lstrip("+~") + "."):
            return f"the override {o!r}"
    leaf = key.rpartition(".")[2]
    for path in files:
        if path.is_file() and re.search(rf"(^|[\s{{,]){re.escape(leaf)}\s*:", path.read_text(),
                                        re.MULTILINE):
            return _shown(path)
    return _shown(files[0])


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(params_dir().parent))
    except ValueError:
        return str(path)


def check_schema(plain: Any, schema: Any, origin: Callable[[str], str], key: str = "") -> None:
    """``plain`` (the unresolved config as plain Python) against the type ``schema`` (a dataclass
    of :mod:`vpeft.schema`, or a typing form inside one): an unknown key, a value of the wrong
    type or a required key that no file sets is a ConfigError naming the key, where it came from
    (``origin(key)``) and the valid keys. Interpolations (``${...}``) and ``???`` (a value the
    user must give) pass: they are checked where they are used.

    A walk over the type hints rather than OmegaConf's structured merge: the same checks in
    microseconds instead of a second (every job and every DAG build composes the config).
    """
    import dataclasses
    import typing

    if isinstance(plain, str) and (plain == "???" or "${" in plain):
        return
    origin_type, args = typing.get_origin(schema), typing.get_args(schema)
    if origin_type is typing.Union:
        if plain is None and type(None) in args:
            return
        schema = next(a for a in args if a is not type(None))
        origin_type, args = typing.get_origin(schema), typing.get_args(schema)
    if schema is Any:
        return
    if isinstance(schema, type) and issubclass(schema, DataSource):
        _check_data_source(plain, schema, origin, key)
        return
    if dataclasses.is_dataclass(schema):
        if not isinstance(plain, Mapping):
            raise _type_error(key, plain, "a mapping", origin)
        hints = _hints(schema)
        for name, value in plain.items():
            child = f"{key}.{name}" if key else str(name)
            if name not in hints:
                raise _unknown_key(child, list(hints), origin)
            check_schema(value, hints[name], origin, child)
        for f in dataclasses.fields(schema):
            required = f.default == MISSING_VALUE and f.default_factory is dataclasses.MISSING
            if required and f.name not in plain:
                child = f"{key}.{f.name}" if key else f.name
                raise ConfigError(f"config key '{child}' is required and no file sets it "
                                  f"(expected in {origin(child)})")
        return
    if origin_type is dict:
        if not isinstance(plain, Mapping):
            raise _type_error(key, plain, "a mapping", origin)
        for name, value in plain.items():
            check_schema(value, args[1], origin, f"{key}.{name}")
        return
    if origin_type is list:
        if not isinstance(plain, (list, tuple)):
            raise _type_error(key, plain, "a list", origin)
        for i, value in enumerate(plain):
            check_schema(value, args[0], origin, f"{key}[{i}]")
        return
    accepted = {int: (int,), float: (int, float), bool: (bool,), str: (str, int, float)}[schema]
    if plain is None or isinstance(plain, bool) is not (schema is bool) \
            or not isinstance(plain, accepted):
        raise _type_error(key, plain, f"a value of type {schema.__name__}", origin)


MISSING_VALUE = "???"  # omegaconf.MISSING: the schema's mark of a key every config must set


def _check_data_source(plain: Any, schema: type, origin: Callable[[str], str], key: str) -> None:
    """A source block: its ``format`` picks a :mod:`vpeft.data.formats` format, which names the
    keys it takes (besides those ``schema`` adds, e.g. an evaluation set's ``name``)."""
    import dataclasses

    from vpeft.data import formats

    fmt = plain.get("format") if isinstance(plain, Mapping) else None
    if isinstance(fmt, str) and (fmt == MISSING_VALUE or "${" in fmt):
        return  # checked where it is used, resolved
    own = {f.name: _hints(schema)[f.name] for f in dataclasses.fields(schema) if f.name != "format"}
    try:
        cls = formats.check_block(plain, key, extra_keys=list(own))
    except formats.FormatConfigError as err:
        raise ConfigError(f"config key '{err.key}' (from {origin(err.key)}): {err.detail}") from None
    hints = {**formats.config_keys(cls), **own}
    for name, value in plain.items():
        if name in hints:
            check_schema(value, hints[name], origin, f"{key}.{name}")


@functools.lru_cache(maxsize=None)
def _hints(schema: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(schema)


def _unknown_key(key: str, valid: list[str], origin: Callable[[str], str]) -> ConfigError:
    import difflib

    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" Did you mean '{parent}.{close[0]}'?" if close and parent else (
        f" Did you mean '{close[0]}'?" if close else "")
    scope = f"Valid keys of {parent}" if parent else "Valid top-level keys"
    return ConfigError(f"unknown config key '{key}' (from {origin(key)}).{hint} {scope}: "
                       f"{', '.join(valid) or 'none'}")


def _type_error(key: str, value: Any, expected: str, origin: Callable[[str], str]) -> ConfigError:
    return ConfigError(f"config key '{key}' (from {origin(key)}): expected {expected}, "
                       f"got {value!r}")


def _check_study_schema(cfg: DictConfig, study: str, overrides: Sequence[str]) -> None:
    """The composed study against :class:`vpeft.schema.Config`, and its method grids' names."""
    from vpeft.schema import Config

    root = params_dir()
    files = [root / "study" / f"{study}.yaml", *sorted((root / "train").glob("*.yaml")),
             *sorted((root / "model").glob("*.yaml")), root / "config.yaml"]
    plain = OmegaConf.to_container(cfg, resolve=False)

    def origin(key: str) -> str:
        if key.startswith("method."):  # method.<name>...: that method's file
            return _origin(key, overrides, [root / "method" / f"{key.split('.')[1]}.yaml"])
        return _origin(key, overrides, files)

    check_schema(plain, Config, origin)
    known = sorted(plain["method"])  # the method group as composed: one per params/method file
    for method in (plain["study"].get("grid") or {}):
        if method not in known:
            raise ConfigError(f"study.grid.{method} (from {origin(f'study.grid.{method}')}): no "
                              f"such method; known methods: {', '.join(known)}")
    for method, block in plain["method"].items():
        _check_hparam_names(method, block, f"method.{method}", origin)
    for method, block in (plain["study"].get("grid") or {}).items():
        _check_hparam_names(method, block, f"study.grid.{method}", origin)


def _check_hparam_names(method: str, block: Any, key: str, origin: Callable[[str], str]) -> None:
    """The hyper-parameter names of a method file or a study's grid block against the method's
    declaration (:mod:`vpeft.hparams`, torch-free): a typo stops here, before anything is
    planned. Their values are checked by the method's typed config (``vpeft check``, the jobs)."""
    from vpeft.hparams import declared

    spec = declared(method)
    hparams = block.get("hparams") if isinstance(block, Mapping) else None
    if spec is None or not isinstance(hparams, Mapping):
        return
    for name in hparams:
        if name not in spec.names:
            raise _unknown_key(f"{key}.hparams.{name}", list(spec.names), origin)


def load_study(study: str, overrides: Sequence[str] = ()) -> StudyPlan:
    """Compose a study and expand the grid of every method it lists."""
    cfg = compose(study, overrides=overrides)
    _check_study_schema(cfg, study, overrides)
    _require(cfg, ["study.name", "study.tasks", "study.methods", "study.data.root", "model.name",
                   "model.weights"])
    check_cpu_kernels_value(cfg, study, overrides)
    if cfg.study.name != study:
        raise ConfigError(f"params/study/{study}.yaml sets study.name={cfg.study.name!r}; "
                          f"expected {study!r}")
    methods, known = list(cfg.study.methods), sorted(cfg.method)  # composed: params/method/*
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise ConfigError(f"study.methods: unknown method(s) {unknown}; known: {known}")
    with open_dict(cfg):  # keep the study's methods: the config recorded beside each result
        for name in set(cfg.method) - set(methods):
            del cfg.method[name]
    plan = StudyPlan(cfg=cfg, name=study, tasks=list(cfg.study.tasks), methods=methods,
                     overrides=tuple(overrides))
    for method in methods:
        plan.points[method] = grid_points(method_config(cfg, method))
    return plan


def check_cpu_kernels_value(cfg: DictConfig, study: str, overrides: Sequence[str]) -> None:
    """``train.cpu_kernels`` is one of vpeft.machine.CPU_KERNELS (the schema checks its type)."""
    from vpeft.machine import CPU_KERNELS

    value = cfg.train.get("cpu_kernels", "native")
    if value not in CPU_KERNELS:
        root = params_dir()
        files = [root / "study" / f"{study}.yaml", *sorted((root / "train").glob("*.yaml"))]
        raise ConfigError(f"config key 'train.cpu_kernels' (from "
                          f"{_origin('train.cpu_kernels', overrides, files)}): {value!r}; "
                          f"expected one of {', '.join(CPU_KERNELS)}")


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
