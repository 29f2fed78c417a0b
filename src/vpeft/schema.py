"""The schema of ``params/``: typed dataclasses for every config group and every method file.

The YAML files under ``params/`` hold the values (each default is written there, once); these
dataclasses hold the key names and types. A composed study is checked against :class:`Config`,
each method file (``method.<name>``) against :class:`MethodFile`, each ``study.grid.<method>`` block against
:class:`MethodGrid`: an unknown or misspelled key, or a value of the wrong type, is an error that
names the key, where it came from and the valid keys (:func:`vpeft.config.load_study`).

The check only validates: the config the pipeline runs on is the composed one, unchanged, so a key
a study leaves out stays out (``Optional`` fields here mean "may be left out", not a default).
Method hyper-parameters (``hparams``) are typed by each method's own config dataclass
(:mod:`vpeft.methods`): ``vpeft check`` and every training job check them against it; their names,
declared torch-free in :mod:`vpeft.hparams`, are checked at every composition.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class Paths:
    data: str = MISSING
    runs: str = MISSING
    reports: str = MISSING
    models: str = MISSING


@dataclass
class Model:
    name: str = MISSING                                   # timm architecture
    kwargs: Dict[str, Any] = field(default_factory=dict)  # free-form: timm refuses unknown kwargs
    img_size: int = MISSING
    weights: Optional[str] = MISSING
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    init_head: Optional[str] = None                       # zero-shot head (robustness study)


@dataclass
class Protocol:
    normalize_inputs: bool = MISSING
    drop_last: bool = MISSING
    lr_step_at_epoch_end: bool = MISSING
    redraw_added_linears: bool = MISSING
    vpt_shallow_drop_prompts_after_block0: bool = MISSING
    selection_ties: str = MISSING


@dataclass
class Augment:  # vpeft.train.augment
    scale: Optional[List[float]] = None
    ratio: Optional[List[float]] = None
    flips: Optional[List[str]] = None


@dataclass
class Rehearsal:  # train.rehearsal: cut every run short to rehearse a study's shape (benchmarks.rehearse)
    max_steps: Optional[int] = None         # training steps per run (null: the whole schedule)
    max_eval_batches: Optional[int] = None  # eval_batch_size batches per evaluation (null: all)


@dataclass
class Train:
    epochs: int = MISSING
    warmup_epochs: int = MISSING
    warmup_lr: float = MISSING
    lr_min: float = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    drop_path: float = MISSING
    label_smoothing: float = MISSING
    grad_clip: Optional[float] = MISSING
    device: str = MISSING
    seeds: List[int] = MISSING
    search_per_seed: bool = MISSING
    checkpoint_every: int = MISSING
    log_every_s: float = MISSING
    cache_linear_features: bool = MISSING
    points_per_job: int = MISSING
    methods_per_job: int = MISSING
    precision: str = MISSING
    compile: bool = MISSING
    cpu_kernels: str = MISSING  # vpeft.machine.CPU_KERNELS: native | portable
    protocol: Protocol = field(default_factory=Protocol)
    augment: Optional[Augment] = None
    rehearsal: Optional[Rehearsal] = None


@dataclass
class Pretrain:  # the demo backbone, pretrained by the pipeline (rule pretrain)
    epochs: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    batch_size: int = MISSING


@dataclass
class SplitSizes:  # null: the split's size as the data has it
    train800: Optional[int] = MISSING
    val200: Optional[int] = MISSING
    train800val200: Optional[int] = MISSING
    test: Optional[int] = None


@dataclass
class DataSource:  # a dataset part: `format` names a vpeft.data.formats format, which types the
    format: str = MISSING  # block's other keys (vpeft.config.check_schema asks it)


@dataclass
class SyntheticSource:  # a generated many-shot dataset (the demo)
    task: str = MISSING
    layout: Optional[str] = None
    image_size: Optional[int] = None
    train: int = MISSING
    test: Optional[int] = None


@dataclass
class Dataset:  # one dataset of a many-shot study
    group: str = MISSING
    num_classes: int = MISSING
    description: Optional[str] = None
    flips: Optional[List[str]] = None
    subsets: Optional[List[Any]] = None   # positive sizes and/or "full"
    test_fraction: Optional[float] = None
    classes: Optional[List[str]] = None
    train: Optional[DataSource] = None
    test: Optional[DataSource] = None
    synthetic: Optional[SyntheticSource] = None


@dataclass
class Data:
    kind: str = MISSING
    root: Optional[str] = MISSING
    image_size: Optional[int] = None
    split_sizes: Optional[SplitSizes] = None
    seed: Optional[int] = None
    allow_duplicates: Optional[bool] = None
    stored_size: Optional[int] = None
    subsets_dir: Optional[str] = None
    views: Optional[str] = None
    val_fraction: Optional[float] = None
    val_max: Optional[int] = None
    datasets: Dict[str, Dataset] = field(default_factory=dict)


@dataclass
class OptimGrid:  # a list value is a sweep axis, a scalar is fixed
    lr: Any = None
    weight_decay: Any = None
    drop_path: Any = None


@dataclass
class MethodGrid:  # study.grid.<method>: replaces keys of params/method/<method>.yaml
    hparams: Dict[str, Any] = field(default_factory=dict)
    optim: OptimGrid = field(default_factory=OptimGrid)


@dataclass
class MethodOptim(OptimGrid):
    lr: Any = MISSING
    weight_decay: Any = MISSING


@dataclass
class MethodFile:  # params/method/<method>.yaml
    name: str = MISSING
    hparams: Dict[str, Any] = field(default_factory=dict)
    optim: MethodOptim = field(default_factory=MethodOptim)


@dataclass
class TaskInfo:
    group: str = MISSING
    num_classes: int = MISSING
    description: Optional[str] = None


@dataclass
class EvalSet(DataSource):  # an ImageNet split or distribution shift as its public tool writes it
    name: Optional[str] = None
    expected_subset: Optional[str] = None


@dataclass
class Clip:  # the text tower that makes the zero-shot head
    model: str = MISSING
    weights: Optional[str] = MISSING


@dataclass
class Miniature:  # the robustness demo's generated data
    root: str = MISSING
    image_size: int = MISSING
    per_class: int = MISSING
    train_per_class: int = MISSING
    clip_steps: int = MISSING
    contrast: Optional[float] = None


@dataclass
class Robustness:
    label_space: str = MISSING
    shots: int = MISSING
    val_shots: int = MISSING
    split_seed: int = MISSING
    templates: Optional[str] = None
    train: EvalSet = field(default_factory=EvalSet)
    test: EvalSet = field(default_factory=EvalSet)
    shifts: Dict[str, EvalSet] = field(default_factory=dict)
    clip: Clip = field(default_factory=Clip)
    alphas: List[float] = MISSING
    miniature: Optional[Miniature] = None


@dataclass
class Study:
    name: str = MISSING
    title: Optional[str] = None
    description: Optional[str] = None
    published: Optional[str] = None      # the study's published figures (CSV) to compare against
    published_grid: Optional[str] = None  # the study's published grid (CSV): every point it ran
    data: Data = field(default_factory=Data)
    tasks: List[str] = MISSING
    methods: List[str] = MISSING
    task_info: Dict[str, TaskInfo] = field(default_factory=dict)
    pretrain: Optional[Pretrain] = None
    grid: Dict[str, MethodGrid] = field(default_factory=dict)
    robustness: Optional[Robustness] = None


@dataclass
class Analysis:  # the mistake analysis of each task (vpeft.analysis)
    top_ks: List[int] = MISSING
    confidence_threshold: float = MISSING


@dataclass
class Config:  # params/config.yaml composed with its groups
    model: Model = field(default_factory=Model)
    method: Dict[str, MethodFile] = field(default_factory=dict)  # method.<name>: its file
    train: Train = field(default_factory=Train)
    study: Study = field(default_factory=Study)
    paths: Paths = field(default_factory=Paths)
    analysis: Analysis = field(default_factory=Analysis)
