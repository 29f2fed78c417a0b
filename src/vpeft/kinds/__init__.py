"""Study kinds: VTAB-1K, the synthetic demo, many-shot and robustness (:mod:`vpeft.kinds.base`).

``study_kind(cfg)`` is the study's kind, bound to its config; the report asks
``recorded_kind(study)`` of a finished study. Each kind lives in its own module of this package
and registers itself on import; every module here is imported below, the studies' kinds first
(docs/study-kinds.md: adding one).
"""
import importlib
import pkgutil

from vpeft.kinds.base import (MainColumns, ReportShape, StudyKind, TaskCheck, TaskEntry,
                              data_kind_of, data_kinds, get_kind, kind_names, recorded_kind,
                              register, study_kind)

_INFRASTRUCTURE = {"base"}
_ORDER = ["vtab", "synthetic", "manyshot", "robustness"]


def _kind_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__)} - _INFRASTRUCTURE
    ordered = [m for m in _ORDER if m in found]
    return ordered + sorted(found - set(ordered))


for _module in _kind_modules():
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["MainColumns", "ReportShape", "StudyKind", "TaskCheck", "TaskEntry", "data_kind_of",
           "data_kinds", "get_kind", "kind_names", "recorded_kind", "register", "study_kind"]
