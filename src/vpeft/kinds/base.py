"""The study-kind registry: what a study's tasks are, and everything that follows from it.

A kind (VTAB-1K, the synthetic demo, many-shot, robustness) is a :class:`StudyKind` subclass in
its own module, registered with :func:`register`. It owns its task catalogue (class count, group
and description of each task), where a task's raw files are, the split sizes they must have, the
side its images are stored at, how its data is generated and checked, the jobs and Snakemake
rules it adds, and the shape of its report. The rest of vpeft asks the study's kind
(:func:`study_kind`) and never compares kind names.

Which kind a study is gets decided here once: a study section that names a kind
(``study.robustness``) wins, else ``study.data.kind``, the kind of the study's data. A kind bound
to a config (``study_kind(cfg)``) answers for that study; the report, which reads a finished
study's ``study.json`` rather than a config, asks :func:`recorded_kind`.
"""
from __future__ import annotations

import enum
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from omegaconf import DictConfig

from vpeft import layout
from vpeft.errors import UserError


@dataclass(frozen=True)
class TaskEntry:
    """A task as the study's catalogue knows it."""

    name: str
    num_classes: int
    group: str
    description: str = ""


@dataclass
class TaskCheck:
    """What one task's data looks like and what is wrong with it (`vpeft check`)."""

    task: str
    classes: int | None
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    staged_images: int = 0  # images check writes into a scratch view before decoding them


def any_split_sizes() -> dict[str, int | None]:
    """Every split, of any size: sizes the data decides."""
    from vpeft.data.shards import SPLITS

    return dict.fromkeys(SPLITS)


def problems_of(err: Exception) -> list[str]:
    """Every problem a UserError carries (a DataError collects several), one per line."""
    return list(getattr(err, "errors", None) or [str(err)])


class MainColumns(enum.Enum):
    """How the report's main table lays out its task columns."""

    VTAB_GROUPS = "vtab_groups"            # a block per VTAB group, the group means and the mean
    DATASET_SIZES = "dataset_sizes"        # a block per dataset, a column per training-set size
    IN_DISTRIBUTION = "in_distribution"    # one block: the in-distribution test set


@dataclass(frozen=True)
class ReportShape:
    """What a kind's report looks like (the report draws it; the kind only declares it)."""

    columns: MainColumns
    group_scopes: bool   # statistics and advice also per VTAB group and over all tasks
    advice_scope: str    # the advice section's "For each <advice_scope>:"


class StudyKind:
    """A study kind bound to one study's config (``kind.cfg``).

    Subclasses set the class attributes and implement :meth:`catalogue_entry` and
    :meth:`known_tasks`; every other method has the VTAB-1K layout's answer as its default (raw
    tasks under ``study.data.root``, ``study.data.split_sizes``, images stored at the model's
    input size, list files checked as VTAB-1K's).
    """

    name: ClassVar[str]                        # as recorded in study.json's "kind"
    data_kinds: ClassVar[tuple[str, ...]]      # the study.data.kind values that select it
    section: ClassVar[str | None] = None       # a study section that selects it when present
    metadata_key: ClassVar[str | None] = None  # the study.json section its report metadata fills
    report: ClassVar[ReportShape]
    draws_subsets: ClassVar[bool] = False      # rule subsets: each task a drawn subset's view

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}(study={self.cfg.study.name!r})"

    # -- the task catalogue ------------------------------------------------------------------

    def task_entry(self, task: str) -> TaskEntry:
        """Class count, group and description of ``task``.

        ``study.task_info.<task>: {num_classes, group}`` declares a task vpeft does not know
        (a user's own dataset in the VTAB-1K layout); every other task comes from the catalogue.
        """
        declared = (self.cfg.study.get("task_info") or {}).get(task)
        if declared is not None:
            return TaskEntry(task, int(declared.num_classes), str(declared.group),
                             str(declared.get("description", "")))
        return self.catalogue_entry(task)

    def catalogue_entry(self, task: str) -> TaskEntry:
        """``task`` from the kind's own catalogue, or a UserError listing the known tasks."""
        raise NotImplementedError

    def known_tasks(self) -> list[str]:
        """Every task of the kind's catalogue for this study (declared tasks not included)."""
        raise NotImplementedError

    # -- raw files, split sizes, stored images -----------------------------------------------

    def raw_task(self, task: str) -> Path:
        """What `vpeft prepare` reads for ``task`` (``task`` may be a wildcard pattern)."""
        return layout.data_root_dir(self.cfg, task)

    def split_sizes(self, task: str) -> dict[str, int | None]:
        """The split sizes ``task``'s lists must have: ``study.data.split_sizes`` (800 / 200 /
        1000 for VTAB-1K), or any size (None) for the pretraining source set, whose sizes its
        generator decides."""
        if task == layout.SOURCE_TASK:
            return any_split_sizes()
        return dict(self.cfg.study.data.split_sizes)

    @property
    def image_side(self) -> int:
        """Side of the study's tasks' stored images: the model's input size."""
        return int(self.cfg.model.img_size)

    def stored_image_size(self, task: str) -> int:
        """Side ``task``'s images are prepared at (the source set: always the model input)."""
        return int(self.cfg.model.img_size) if task == layout.SOURCE_TASK else self.image_side

    def prepare(self, task: str) -> dict[str, Any]:
        """``vpeft prepare``: validate the raw ``task`` and write its Parquet shards, with the
        class count and group of :meth:`task_entry`, the split sizes of :meth:`split_sizes` and
        the size of :meth:`stored_image_size`; returns the manifest."""
        from vpeft.data.vtab import prepare_task

        entry = self.task_entry(task)
        return prepare_task(self.raw_task(task), layout.prepared_task(self.cfg, task), task=task,
                            image_size=self.stored_image_size(task),
                            num_classes=entry.num_classes, group=entry.group,
                            split_sizes=self.split_sizes(task),
                            allow_duplicates=self.allow_duplicates,
                            drawn_splits=self.drawn_splits(task))

    @property
    def allow_duplicates(self) -> bool:
        """``study.data.allow_duplicates``: record duplicates that would be refused."""
        return bool(self.cfg.study.data.get("allow_duplicates", False))

    def drawn_splits(self, task: str) -> bool:
        """Whether vpeft draws ``task``'s train / val split itself from a dataset's official
        parts (then val vs train duplicates are the dataset's own: vpeft.data.duplicates). A
        VTAB-1K tree's splits are the user's."""
        return False

    def weight_files(self) -> list[tuple[str, Path, str | None]]:
        """Weight files the study reads besides ``model.weights`` (which check loads into the
        model): (config key, path, the rule that writes it, or None when the user brings it)."""
        return []

    # -- generated data (`vpeft synth`, rule synth) ------------------------------------------

    @property
    def generates_data(self) -> bool:
        """Whether the pipeline writes the study's raw data (rule synth, `vpeft synth`)."""
        return False

    @property
    def evaluates_shifts(self) -> bool:
        """Whether the study adds rules/robustness.smk: few-shot split, zero-shot head, shift
        sets and WiSE-FT."""
        return False

    def synthesize(self, task: str, *, seed: int) -> None:
        """``vpeft synth``: write ``task``'s raw data under ``study.data.root``. The pretraining
        source set is the same for every kind; other tasks are the kind's to generate."""
        if task == layout.SOURCE_TASK:
            from vpeft.demo import synthetic

            data = self.cfg.study.data
            synthetic.generate_source(Path(data.root), image_size=int(data.image_size), seed=seed)
            return
        self.synthesize_task(task, seed=seed)

    def not_yet_generated(self, task: str, classes: int, where: Path) -> TaskCheck | None:
        """Check's verdict on generated raw data ``where`` that does not exist yet: a note,
        not a problem (rule synth writes it when the study runs); None once it exists."""
        if where.exists():
            return None
        return TaskCheck(task, classes, notes=[f"{where}: written by `vpeft synth` when the "
                                               "study runs"])

    def synthesize_task(self, task: str, *, seed: int) -> None:
        raise UserError(f"study.data.kind: '{self.cfg.study.data.kind}' data is not generated; "
                        f"`vpeft synth` cannot write task '{task}' (bring it under "
                        f"{layout.data_root_dir(self.cfg, task)})")

    def extra_jobs(self, tasks: int) -> dict[str, int]:
        """Jobs the kind adds to ``snakemake all`` for ``tasks`` tasks (`vpeft check`'s count)."""
        return {}

    def view_sources(self, task: str) -> list[str]:
        """What a task's view is drawn from (rule subsets' inputs; kinds that draw subsets)."""
        raise NotImplementedError(f"the {self.name} kind draws no subsets")

    # -- `vpeft check` -----------------------------------------------------------------------

    def check_data(self, tasks: Sequence[str], decode: bool) -> list[TaskCheck]:
        """Every task's data read and checked (images decoded with ``decode``), writing nothing."""
        checks = []
        for task in tasks:
            try:
                classes = self.task_entry(task).num_classes
            except UserError as err:
                checks.append(TaskCheck(task, None, problems=problems_of(err)))
                continue
            checks.append(self.check_task(task, classes, decode))
        return checks

    def check_task(self, task: str, classes: int, decode: bool) -> TaskCheck:
        """One task's list files and images checked as VTAB-1K's (the default layout)."""
        return self.check_tree(task, self.raw_task(task), classes, decode)

    def check_tree(self, task: str, task_dir: Path, classes: int, decode: bool,
                   unwritten: Collection[str] = frozenset()) -> TaskCheck:
        """``task_dir`` (a VTAB-layout tree: the task's own, or the view ``vpeft subsets`` /
        ``imagenet-split`` would write) checked exactly as :meth:`prepare` checks it; without
        ``decode``, its structure only (``unwritten``: images the view's step writes itself)."""
        from vpeft.data.duplicates import duplicate_note
        from vpeft.data.errors import raise_collected
        from vpeft.data.vtab import inspect_task, same_file_problems, validate_task

        result = TaskCheck(task, classes)
        sizes = self.split_sizes(task)
        try:
            if not decode:
                entries = validate_task(task_dir, task, classes, sizes, unwritten)
                raise_collected(same_file_problems(
                    task_dir, entries, allow_duplicates=self.allow_duplicates,
                    drawn_splits=self.drawn_splits(task), unwritten=unwritten))
                result.counts = {s: len(v) for s, v in entries.items()}
                return result
            info = inspect_task(task_dir, task=task, num_classes=classes, split_sizes=sizes,
                                allow_duplicates=self.allow_duplicates,
                                drawn_splits=self.drawn_splits(task))
        except UserError as err:
            result.problems += problems_of(err)
            return result
        result.counts = info["counts"]
        content = info["content"]
        result.notes.append(
            f"train800val200 stored as {content['train800val200_layout']}; "
            f"{'equals' if content['train800val200_union'] == 'exact' else 'DIFFERS from'}"
            " train800 + val200 by content")
        result.notes += content["examples"]
        note = duplicate_note(content["duplicates"])
        if note:
            result.notes.append(f"{note} ({content['duplicates']['policy']}), e.g. "
                                + "; ".join(content["duplicates"]["examples"][:2]))
        modes = {m: n for m, n in info["modes"].items() if m != "RGB"}
        if modes:
            result.notes.append("converted to RGB: " + ", ".join(f"{n} {m}" for m, n in modes.items()))
        return result

    def check_staged(self, task: str, classes: int, decode: bool,
                     write: Callable[[Path, set[str] | None], object]) -> TaskCheck:
        """A task whose view a step writes (``vpeft subsets``, ``imagenet-split``) checked the
        way :meth:`prepare` will read it: ``write(folder, unwritten)`` is that step's own writer,
        run on a scratch folder (nothing of the study is written), and the view is checked by
        :meth:`check_tree`; messages name the view where the step will put it. Without
        ``decode``, ``unwritten`` is a set for the paths of images the writer would make from
        pixel arrays and skips (their pixels are what decoding checks), else None."""
        view = str(Path(self.raw_task(task)).absolute())
        unwritten: set[str] | None = None if decode else set()
        with tempfile.TemporaryDirectory(prefix="vpeft-check-") as scratch:
            staged = Path(scratch).absolute() / Path(view).name
            try:
                write(staged, unwritten)
            except UserError as err:
                return TaskCheck(task, classes, problems=problems_of(err))
            result = self.check_tree(task, staged, classes, decode, unwritten or frozenset())
        move = lambda text: text.replace(str(staged), view)  # noqa: E731
        result.problems = [move(p) for p in result.problems]
        result.notes = [move(n) for n in result.notes]
        if unwritten:
            result.staged_images = len(unwritten)
            result.notes.append(f"{len(unwritten):,} images the step writes into the view from "
                                "the dataset's pixel arrays: listed and counted, not written: "
                                "--no-decode")
        return result

    # -- training and the report -------------------------------------------------------------

    def augment_flips(self, task: str, default: Sequence[str]) -> tuple[str, ...]:
        """The flips ``train.augment`` may use on ``task`` (``default``: train.augment.flips)."""
        return tuple(default)

    def report_metadata(self, tasks: Sequence[str]) -> dict[str, Any]:
        """Sections the kind adds to the study's report metadata (study.json)."""
        return {}


K = TypeVar("K", bound=type[StudyKind])

_REGISTRY: dict[str, type[StudyKind]] = {}


def register(kind: K) -> K:
    """Class decorator: register ``kind`` under its ``name`` (each name and data kind once)."""
    claimed = {d: k.name for k in _REGISTRY.values() for d in k.data_kinds}
    if kind.name in _REGISTRY:
        raise ValueError(f"study kind '{kind.name}' registered twice")
    for data_kind in kind.data_kinds:
        if data_kind in claimed:
            raise ValueError(f"study.data.kind '{data_kind}' claimed by both "
                             f"'{claimed[data_kind]}' and '{kind.name}'")
    _REGISTRY[kind.name] = kind
    return kind


def kind_names() -> list[str]:
    """Registered study kinds, in registration order."""
    return list(_REGISTRY)


def data_kinds() -> list[str]:
    """Every value ``study.data.kind`` may take, in registration order."""
    return [d for k in _REGISTRY.values() for d in k.data_kinds]


def get_kind(name: str) -> type[StudyKind]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown study kind '{name}'; known: {', '.join(kind_names())}") from None


def data_kind_of(cfg: DictConfig) -> type[StudyKind]:
    """The kind that ``study.data.kind`` names, or a UserError naming the key and every value."""
    value = str(cfg.study.data.kind)
    for kind in _REGISTRY.values():
        if value in kind.data_kinds:
            return kind
    raise UserError(f"study.data.kind: '{value}' is not one of "
                    + ", ".join(f"'{d}'" for d in data_kinds()))


def study_kind(cfg: DictConfig) -> StudyKind:
    """The study's kind, bound to ``cfg``: the kind whose section the study has
    (``study.robustness``), else the kind of its data (``study.data.kind``, always checked)."""
    by_data = data_kind_of(cfg)
    for kind in _REGISTRY.values():
        if kind.section is not None and cfg.study.get(kind.section) is not None:
            return kind(cfg)
    return by_data(cfg)


def recorded_kind(study: Mapping[str, Any]) -> type[StudyKind]:
    """The kind of a finished study from its report metadata (study.json, or the report's
    mapping): its recorded ``kind`` (a kind or data-kind name) or a kind's metadata section;
    VTAB-1K when neither says (a study recorded without its kind). Kinds with a metadata
    section are asked first: their report is shaped by it."""
    recorded = study.get("kind")
    for kind in sorted(_REGISTRY.values(), key=lambda k: k.metadata_key is None):
        if recorded == kind.name or recorded in kind.data_kinds or (
                kind.metadata_key is not None and study.get(kind.metadata_key)):
            return kind
    return _REGISTRY[DEFAULT_KIND]


DEFAULT_KIND = "vtab"
