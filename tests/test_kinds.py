"""Study kinds (vpeft.kinds): every registered kind answers the contract for a shipped study of
its kind with the values the study has always had; a study's kind is decided in one place; an
unknown ``study.data.kind`` is a clear error; and no code outside the registry compares kind
names."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vpeft import kinds, layout
from vpeft.config import load_study
from vpeft.data.shards import SPLITS
from vpeft.data.vtab import GROUPS, PRETRAINING_GROUP
from vpeft.errors import UserError
from vpeft.kinds import MainColumns, ReportShape, StudyKind, TaskEntry, recorded_kind, study_kind

REPO = Path(__file__).resolve().parents[1]

# What a user supplies for the paper's studies (their data and weights); the demos need nothing.
USER_KEYS = {"manyshot": ["study.data.root=/data", "model.weights=/w/vit.npz"],
             "robustness": ["study.data.root=/data", "model.weights=/w/clip.safetensors"],
             "vtab1k": ["study.data.root=/data", "model.weights=/w/vit.npz"]}
# Each shipped study and its kind: a new kind brings a study (or a test config) of its kind here.
STUDY_KINDS = {"smoke": "synthetic", "demo": "synthetic", "vtab1k": "vtab",
               "demo_manyshot": "manyshot", "manyshot": "manyshot",
               "demo_robustness": "robustness", "robustness": "robustness"}


def kind_of(study: str) -> StudyKind:
    return study_kind(load_study(study, USER_KEYS.get(study, [])).cfg)


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------

def test_every_study_in_params_has_its_kind_and_every_kind_a_study():
    shipped = sorted(p.stem for p in (REPO / "params" / "study").glob("*.yaml"))
    assert sorted(STUDY_KINDS) == shipped
    assert set(STUDY_KINDS.values()) == set(kinds.kind_names())
    assert kinds.kind_names() == ["vtab", "synthetic", "manyshot", "robustness"]
    assert kinds.data_kinds() == ["vtab", "synthetic", "manyshot", "imagenet"]


@pytest.mark.parametrize("name", ["vtab", "synthetic", "manyshot", "robustness"])
def test_every_kind_declares_what_the_pipeline_and_report_ask(name):
    kind = kinds.get_kind(name)
    assert kind.name == name and kind.data_kinds and isinstance(kind.report, ReportShape)
    assert isinstance(kind.report.columns, MainColumns) and kind.report.advice_scope
    for method in ("catalogue_entry", "known_tasks"):  # the catalogue is the kind's own
        assert getattr(kind, method) is not getattr(StudyKind, method), (name, method)


@pytest.mark.parametrize("study", sorted(STUDY_KINDS))
def test_every_task_of_a_study_has_an_entry_sizes_and_paths(study):
    plan = load_study(study, USER_KEYS.get(study, []))
    kind = study_kind(plan.cfg)
    assert kind.name == STUDY_KINDS[study] and kind.cfg is plan.cfg
    tasks = [*plan.tasks, *([layout.SOURCE_TASK] if plan.cfg.study.get("pretrain") else [])]
    for task in [*tasks, *kind.known_tasks()]:
        entry = kind.task_entry(task)
        assert isinstance(entry, TaskEntry) and entry.name == task, task
        assert entry.num_classes >= 2 and entry.group in (*GROUPS, PRETRAINING_GROUP), entry
    for task in tasks:
        assert set(kind.split_sizes(task)) == set(SPLITS)
        assert isinstance(kind.raw_task(task), Path)
        assert kind.stored_image_size(task) > 0
    assert kind.image_side > 0


def test_vtab_kind_is_the_nineteen_tasks_in_the_users_root():
    kind = kind_of("vtab1k")
    assert len(kind.known_tasks()) == 19 and not kind.generates_data
    assert kind.task_entry("cifar") == TaskEntry("cifar", 100, "natural", "")
    assert kind.split_sizes("cifar") == {"train800": 800, "val200": 200, "train800val200": 1000,
                                        "test": None}
    assert kind.raw_task("cifar") == Path("/data/cifar")
    assert kind.stored_image_size("cifar") == 224 and kind.extra_jobs(19) == {}
    with pytest.raises(UserError, match=r"study.tasks: 'source' is not a VTAB-1K task; known: "
                                        r"\['caltech101'.*declare others under study.task_info"):
        kind.task_entry("source")


def test_synthetic_kind_generates_the_demo_tasks_and_its_source_set():
    kind = kind_of("demo")
    assert kind.generates_data and not kind.draws_subsets and not kind.evaluates_shifts
    entry = kind.task_entry("count")
    assert (entry.num_classes, entry.group) == (6, "structured")
    assert entry.description.endswith("(rendered with PIL ImageDraw)")
    assert kind.task_entry("source").group == "source"
    assert kind.split_sizes("source") == dict.fromkeys(SPLITS)
    assert kind.split_sizes("count") == dict(kind.cfg.study.data.split_sizes)
    assert kind.extra_jobs(5) == {"synth": 5}
    with pytest.raises(UserError, match=r"'cifar' is not a synthetic demo task; known: "
                                        r"\['count', 'digits'"):
        kind.task_entry("cifar")


def test_manyshot_kind_prepares_views_at_the_stored_size():
    kind = kind_of("demo_manyshot")
    cfg = kind.cfg
    task = kind.known_tasks()[0]
    assert kind.draws_subsets and kind.generates_data  # the miniature generates its datasets
    assert kind.raw_task(task) == layout.view_dir(cfg, task)
    assert kind.raw_task(layout.SOURCE_TASK) == layout.data_root_dir(cfg, layout.SOURCE_TASK)
    assert kind.split_sizes(task) == dict.fromkeys(SPLITS)
    assert kind.stored_image_size(task) == kind.image_side == int(cfg.study.data.stored_size)
    assert kind.stored_image_size(layout.SOURCE_TASK) == int(cfg.model.img_size)
    assert kind.extra_jobs(3) == {"subsets": 3}
    assert kind.view_sources(task) == [str(layout.data_root_dir(cfg, task.split("_n")[0]))]
    real = kind_of("manyshot")
    assert real.draws_subsets and not real.generates_data  # the users' data: nothing generated
    with pytest.raises(NotImplementedError):
        kind_of("demo").view_sources("count")


def test_robustness_kind_is_decided_by_its_section_and_its_data_by_data_kind():
    mini, real = kind_of("demo_robustness"), kind_of("robustness")
    assert mini.cfg.study.data.kind == "synthetic" and real.cfg.study.data.kind == "imagenet"
    assert mini.evaluates_shifts and real.evaluates_shifts
    assert mini.generates_data and not real.generates_data  # the miniature's source set
    assert mini.extra_jobs(1) == {"synth": 1} and real.extra_jobs(1) == {}
    assert mini.task_entry("imagenet") == TaskEntry("imagenet", 24, "natural",
                                                    "few-shot source classes")
    assert mini.task_entry("source").num_classes == 24
    assert real.task_entry("imagenet").num_classes == 1000 and real.known_tasks() == []
    with pytest.raises(UserError, match=r"'source' is not declared under study.task_info"):
        real.task_entry("source")
    [check] = mini.check_data(["imagenet"], decode=False)
    assert check.task == "robustness miniature" and "robust-synth" in check.notes[0]


def test_recorded_kind_shapes_the_report_of_a_finished_study():
    assert recorded_kind({}).name == "vtab"  # recorded without a kind: VTAB groups
    assert recorded_kind({"kind": "synthetic"}).report == recorded_kind({"kind": "vtab"}).report
    assert recorded_kind({"kind": "manyshot"}).name == "manyshot"
    assert recorded_kind({"manyshot": {"t": {}}}).name == "manyshot"
    assert recorded_kind({"kind": "imagenet"}).name == "robustness"
    assert recorded_kind({"robustness": {"alphas": []}}).name == "robustness"
    assert recorded_kind({"kind": "vtab"}).report.group_scopes
    assert not recorded_kind({"kind": "robustness"}).report.group_scopes


def test_a_kind_name_or_data_kind_is_registered_once():
    class Again(kinds.get_kind("vtab")):  # type: ignore[misc, valid-type]
        name = "again"
        data_kinds = ("vtab",)

    with pytest.raises(ValueError, match="'vtab' claimed by both 'vtab' and 'again'"):
        kinds.register(Again)
    with pytest.raises(ValueError, match="'vtab' registered twice"):
        kinds.register(kinds.get_kind("vtab"))
    assert "again" not in kinds.kind_names()


# ---------------------------------------------------------------------------------------------
# An unknown kind
# ---------------------------------------------------------------------------------------------

KNOWN = r"'vtab', 'synthetic', 'manyshot', 'imagenet'"


def test_an_unknown_data_kind_names_the_key_and_every_known_kind():
    cfg = load_study("smoke", ["study.data.kind=vtab1k"]).cfg
    with pytest.raises(UserError, match=rf"^study.data.kind: 'vtab1k' is not one of {KNOWN}$"):
        study_kind(cfg)
    with pytest.raises(UserError, match="unknown study kind 'vtab1k'; known: vtab, synthetic"):
        kinds.get_kind("vtab1k")


def test_an_unknown_data_kind_is_one_line_from_the_cli():
    run = subprocess.run([sys.executable, "-m", "vpeft", "check", "--study", "smoke", "--no-decode",
                          "-o", "study.data.kind=vtab1k"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert re.search(rf"study.data.kind: 'vtab1k' is not one of {KNOWN}", run.stderr), run.stderr


# ---------------------------------------------------------------------------------------------
# No kind comparisons outside the registry
# ---------------------------------------------------------------------------------------------

KINDS_PACKAGE = REPO / "src" / "vpeft" / "kinds"


def kind_comparison(names: list[str]) -> re.Pattern[str]:
    """A line that compares a kind name (``== "manyshot"``, ``"vtab" !=``, ``in ("imagenet",
    ...)``) where a kind is meant (the line says kind), or compares ``data.kind`` at all."""
    quoted = r"""['"](?:%s)['"]""" % "|".join(map(re.escape, names))
    compared = rf"(?:(?:==|!=)\s*{quoted}|{quoted}\s*(?:==|!=)|\bin\s*[(\[{{][^\n]*{quoted})"
    return re.compile(rf"(?i)(?=.*kind).*{compared}|\bdata\.kind\s*(?:==|!=|(?:not\s+)?in\b)")


def sources() -> list[Path]:
    found = [*sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "src").rglob("*.j2")),
             *sorted((REPO / "rules").rglob("*.smk")), REPO / "Snakefile"]
    return [p for p in found if KINDS_PACKAGE not in p.parents]


def test_no_study_kind_is_compared_outside_the_registry():
    pattern = kind_comparison([*kinds.kind_names(), *kinds.data_kinds()])
    bad = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in sources()
           for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, ("compare kinds in vpeft.kinds only (ask study_kind(cfg) / recorded_kind "
                     "instead):\n" + "\n".join(bad))


@pytest.mark.parametrize("line, found", [
    ('if CFG.study.data.kind == "synthetic":', True),
    ("    elif data.kind == 'manyshot':", True),
    ('{% if kind == "vtab" %}VTAB group{% endif %}', True),
    ('if study_kind(study) != "vtab":', True),
    ('if study.get("robustness") or kind in ("imagenet", "robustness"):', True),
    ("if cfg.study.data.kind in KNOWN:", True),
    ('if space == "imagenet":', False),            # a label space, not a kind
    ('if kind == "square":', False),               # a demo shape
    ('"kind": kind.name, "seeds": seeds}', False),
])
def test_the_grep_sees_kind_comparisons(line, found):
    pattern = kind_comparison([*kinds.kind_names(), *kinds.data_kinds()])
    assert bool(pattern.search(line)) is found


def test_kinds_sit_above_the_data_layer_and_below_what_asks_them():
    """The data layer never asks the kind; a kind reads data and never the layers that ask it
    (the robustness kind's `vpeft check` reads its input sets through vpeft.robustness)."""
    from test_layers import SOURCES, imports, module_name, within

    above = ("vpeft.train", "vpeft.models", "vpeft.methods", "vpeft.protocol", "vpeft.report",
             "vpeft.analysis", "vpeft.check", "vpeft.cli")
    bad = []
    for path in SOURCES:
        here = module_name(path)
        for line, module, _ in imports(path):
            if (within(here, "vpeft.data") and within(module, "vpeft.kinds")) or (
                    within(here, "vpeft.kinds") and any(within(module, a) for a in above)):
                bad.append(f"{here}:{line} imports {module}")
    assert not bad, "\n".join(bad)
