"""The run store: the JSON records a study's runs leave, typed, and where to find them.

A method directory (``runs/<study>/<task>/<method>/``, :class:`MethodRuns`) holds one run per
grid point and one final run per seed (:class:`RunDir`) and the selection that links them::

    grid/<point>/metrics.json       RunMetrics   (phase "grid")
    selection.json                  Selection    (the chosen grid point, with every candidate)
    final/metrics.json              RunMetrics   (phase "final": the first seed's final run)
    final/test_eval.json            TestEval     (its one test evaluation)
    final-seed<s>/...               the same files, for every further seed of train.seeds

vpeft.protocol writes the records through this module; the report, the analysis, export and the
robustness step read them through it. Every path comes from vpeft.layout.

A record keeps its JSON object's keys in the order it was made with (a file's own order when it
was read), so a record written back gives the same bytes: keys a file lacks (runs made before the
key existed, hand-made files) read as None and are not written back, and keys the record does not
name are kept, in their place, in ``extra``. What the values mean is checked by the readers that
rely on them (vpeft.report.collect checks them against the directory they were found in).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from omegaconf import DictConfig

from vpeft import layout
from vpeft.io import read_json, write_json

__all__ = ["Candidate", "MethodRuns", "RunDir", "RunFileError", "RunMetrics", "Selection",
           "StudyRuns", "TestEval", "find_study_dir", "read", "write"]

R = TypeVar("R", bound="Record")


class RunFileError(ValueError):
    """A run file is not what its record expects (invalid JSON, not a JSON object, a malformed
    entry); the message names the file."""


@dataclass(frozen=True, kw_only=True)
class Record:
    """A JSON object with named fields (declared by the subclasses) and its keys' order."""

    # The object's keys in order (None: every field, in the order the class declares them).
    key_order: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    # Keys the class does not name, with their values.
    extra: Mapping[str, Any] = field(default_factory=dict)

    # Fields holding a list of records of another class (Selection.candidates).
    nested: ClassVar[Mapping[str, type[Record]]] = {}
    # Keys a record nested in another must have.
    required: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.key_order is None:
            object.__setattr__(self, "key_order", (*self.field_names(), *self.extra))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The JSON keys the class names, in its order."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name not in ("key_order", "extra"))

    @classmethod
    def of(cls: type[R], **values: Any) -> R:
        """The record holding exactly ``values``, its keys in their order (as a dict literal
        would be written): a field not given is None and is not written."""
        named = set(cls.field_names())
        return cls(**{k: cls._nest(k, v) for k, v in values.items() if k in named},
                   extra={k: v for k, v in values.items() if k not in named},
                   key_order=tuple(values))

    @classmethod
    def _nest(cls, key: str, value: Any) -> Any:
        kind = cls.nested.get(key)
        if kind is None or value is None:
            return value
        return tuple(v if isinstance(v, kind) else kind.of(**v) for v in value)

    @classmethod
    def from_dict(cls: type[R], data: Any, where: Path | str) -> R:
        """The record of the JSON value ``data`` read from ``where`` (which errors name)."""
        if not isinstance(data, Mapping):
            raise RunFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key, kind in cls.nested.items():
            entries = data.get(key) or []
            if not isinstance(entries, list):
                raise RunFileError(f"{where}: {key} is not a list: {entries!r}")
            for i, entry in enumerate(entries):
                if not isinstance(entry, Mapping) or any(k not in entry for k in kind.required):
                    raise RunFileError(f"{where}: {key}[{i}] is not an object with "
                                       f"{', '.join(map(repr, kind.required))}: {entry!r}")
        return cls.of(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, its keys in the record's order."""
        out = {}
        for key in self.key_order:
            value = self.extra[key] if key in self.extra else getattr(self, key)
            if key in self.nested and value is not None:
                value = [v.to_dict() for v in value]
            out[key] = value
        return out


@dataclass(frozen=True, kw_only=True)
class RunMetrics(Record):
    """``metrics.json`` of a grid or final run: what identifies it, its result, its cost and its
    provenance (vpeft.protocol writes it last: its presence means the run is complete)."""

    study: str | None = None
    task: str | None = None
    method: str | None = None
    point: str | None = None                 # None: a final run with no selectable point
    group: str | None = None
    phase: str | None = None                 # "grid" | "final"
    train_split: str | None = None
    seed: int | None = None
    eval_split: str | None = None            # "val200" for grid runs, None for final runs
    status: str | None = None                # "ok" | "diverged"
    val_top1: float | None = None            # grid runs that did not diverge
    hparams: Mapping[str, Any] | None = None
    optim: Mapping[str, Any] | None = None
    trainable_params: int | None = None
    trainable_params_with_head: int | None = None
    total_params: int | None = None
    wall_time_s: float | None = None
    epochs: int | None = None
    steps: int | None = None
    train_images_per_s: float | None = None
    eval_images_per_s: float | None = None   # the evaluation split's prediction (cached: head only)
    setup_s: float | None = None             # the job's start-up: data, model, method, features
    train_s: float | None = None             # the job's training loop (all its fused points)
    peak_memory_bytes: int | None = None
    peak_host_rss_bytes: int | None = None   # the process's peak RSS (= peak_memory_bytes on CPU)
    device: str | None = None
    protocol: str | None = None              # vpeft.train.published.protocol_name
    loss_curve: list[float | None] | None = None
    diverged_at: int | None = None
    feature_cache: Mapping[str, Any] | None = None
    precision: str | None = None
    fused_attention: bool | None = None
    compiled: bool | None = None
    fused_points: int | None = None
    rehearsal: Mapping[str, int] | None = None  # train.rehearsal when set: not a real result
    config: Mapping[str, Any] | None = None  # the composed config the run was made with
    versions: Mapping[str, str] | None = None
    machine: Mapping[str, Any] | None = None  # vpeft.machine.describe: CPU, torch build, GPU
    git_commit: str | None = None


@dataclass(frozen=True, kw_only=True)
class Candidate(Record):
    """One grid point as the selection saw it."""

    required: ClassVar[tuple[str, ...]] = ("point",)

    point: str | None = None
    status: str | None = None
    val_top1: float | None = None
    hparams: Mapping[str, Any] | None = None
    optim: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Selection(Record):
    """``selection.json``: the grid point every seed's final run trains (None: every point
    diverged), chosen on validation top-1 alone, and every candidate in grid order."""

    nested: ClassVar[Mapping[str, type[Record]]] = {"candidates": Candidate}

    task: str | None = None
    method: str | None = None
    criterion: str | None = None
    grid_seed: int | None = None
    selection_ties: str | None = None        # "first" | "last"
    best_point: str | None = None
    best_val_top1: float | None = None
    candidates: tuple[Candidate, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class TestEval(Record):
    """``test_eval.json``: the one scoring of a final run's test predictions."""

    __test__ = False  # not a pytest test class, whatever its name

    task: str | None = None
    method: str | None = None
    point: str | None = None
    seed: int | None = None
    test_top1: float | None = None           # None when the run diverged
    num_test: int | None = None
    status: str | None = None
    rehearsal: Mapping[str, int] | None = None  # scored on a rehearsal's first test batches


def read(kind: type[R], path: Path | str) -> R:
    """The ``kind`` record in ``path``. A missing file raises FileNotFoundError; an invalid one
    :class:`RunFileError` naming the file (and, for bad JSON, the line and column)."""
    try:
        data = read_json(path)
    except ValueError as err:  # vpeft.io names the file and position
        raise RunFileError(str(err)) from err
    return kind.from_dict(data, path)


def write(path: Path | str, record: Record) -> None:
    """Write ``record`` atomically as indented JSON (vpeft.io.write_json)."""
    write_json(path, record.to_dict())


@dataclass(frozen=True)
class RunDir:
    """One run's directory: a grid point's, or one seed's final run."""

    path: Path
    seed: int | None = None  # a final run's seed, when known

    @property
    def metrics_file(self) -> Path:
        return self.path / layout.METRICS

    @property
    def test_eval_file(self) -> Path:
        return self.path / layout.TEST_EVAL

    @property
    def test_predictions_file(self) -> Path:
        return self.path / layout.TEST_PREDICTIONS

    def read_metrics(self) -> RunMetrics:
        return read(RunMetrics, self.metrics_file)

    def write_metrics(self, metrics: RunMetrics) -> None:
        write(self.metrics_file, metrics)

    def read_test_eval(self) -> TestEval:
        return read(TestEval, self.test_eval_file)

    def write_test_eval(self, result: TestEval) -> None:
        write(self.test_eval_file, result)


@dataclass(frozen=True)
class MethodRuns:
    """The runs of one task x method of a study: ``layout.method_dir_in(runs, task, method)``.

    ``seeds`` is the study's ``train.seeds`` when known: the first seed's final run is ``final/``,
    every further seed's ``final-seed<s>/``. Without it, the further seeds are those whose
    directories exist.
    """

    runs: Path
    task: str
    method: str
    seeds: tuple[int, ...] | None = None

    @classmethod
    def of(cls, cfg: DictConfig, task: str, method: str) -> MethodRuns:
        """The runs of ``task``/``method`` in the study ``cfg`` composes."""
        return cls(layout.runs_dir(cfg), task, method, tuple(layout.seeds(cfg)))

    @property
    def path(self) -> Path:
        return layout.method_dir_in(self.runs, self.task, self.method)

    @property
    def selection_file(self) -> Path:
        return layout.selection_file_in(self.runs, self.task, self.method)

    def read_selection(self) -> Selection:
        return read(Selection, self.selection_file)

    def write_selection(self, selection: Selection) -> None:
        write(self.selection_file, selection)

    def grid(self, point: str) -> RunDir:
        return RunDir(layout.grid_dir_in(self.runs, self.task, self.method, point))

    def grid_runs(self, points: Iterable[str] | None = None) -> Iterator[tuple[str, RunDir]]:
        """``(point, run)`` of ``points``, in their order, or of every grid directory present
        (sorted by point id)."""
        if points is None:
            folder = self.path / layout.GRID_DIR
            points = sorted(p.name for p in folder.iterdir() if p.is_dir()) \
                if folder.is_dir() else []
        for point in points:
            yield point, self.grid(point)

    def final(self, seed: int | None = None) -> RunDir:
        """The final run of ``seed``: ``final/`` for the first seed (or None), else
        ``final-seed<seed>/``."""
        further = None if seed is None or (self.seeds and int(seed) == self.seeds[0]) \
            else int(seed)
        path = layout.final_dir_in(self.runs, self.task, self.method, further)
        return RunDir(path, self.seeds[0] if seed is None and self.seeds else seed)

    def further_seeds(self) -> list[RunDir]:
        """The final runs of the seeds after the first: every further seed of ``seeds``, in
        their order, present or not, when known; else the ``final-seed<s>/`` directories present,
        by seed."""
        if self.seeds is not None:
            return [self.final(s) for s in self.seeds[1:]]
        prefix = layout.FINAL_DIR + layout.SEED_SUFFIX
        found = []
        for path in self.path.glob(f"{prefix}*"):
            suffix = path.name[len(prefix):]
            if path.is_dir() and suffix.lstrip("-").isdigit():
                found.append(int(suffix))
        return [self.final(s) for s in sorted(found)]

    def final_runs(self) -> list[RunDir]:
        """Every seed's final run, the first seed's (``final/``) first."""
        return [self.final(), *self.further_seeds()]


@dataclass(frozen=True)
class StudyRuns:
    """A study's run directory ``runs/<study>``: a :class:`MethodRuns` per task x method."""

    path: Path
    seeds: tuple[int, ...] | None = None

    def method(self, task: str, method: str) -> MethodRuns:
        return MethodRuns(self.path, task, method, self.seeds)

    def cells(self, tasks: Sequence[str], methods: Sequence[str]) -> Iterator[MethodRuns]:
        """Every task x method, task by task."""
        for task in tasks:
            for method in methods:
                yield self.method(task, method)


def find_study_dir(runs_dir: Path | str, name: str, tasks: Sequence[str]) -> Path:
    """The study's run directory from ``runs_dir``: the study's own (``runs/<study>``, as the CLI
    passes it) or the root above it (``runs``). It is the one holding the task folders; with
    neither, ``runs_dir`` (whose missing files then name paths under it)."""
    runs_dir = Path(runs_dir)
    if any(layout.task_dir_in(runs_dir, task).is_dir() for task in tasks):
        return runs_dir
    if (runs_dir / name).is_dir():  # the root (paths.runs): layout.runs_dir is <root>/<study>
        return runs_dir / name
    return runs_dir
