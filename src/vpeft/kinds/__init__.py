"""Study kinds: VTAB-1K, the synthetic demo, many-shot and robustness (:mod:`vpeft.kinds.base`).

``study_kind(cfg)`` is the study's kind, bound to its config; the report asks
``recorded_kind(study)`` of a finished study. Each kind lives in its own module of this package
and registers itself on import; every module here is imported below, the studies' kinds first
(docs/study-kinds.md: adding one).
"""
from vpeft.kinds.base import (MainColumns, ReportShape, StudyKind, TaskCheck, TaskEntry,
                              data_kind_of, data_kinds, get_kind, kind_names, recorded_kind,
                              register, study_kind)
from vpeft.plugins import import_plugins

_INFRASTRUCTURE = {"base"}
_ORDER = ["vtab", "synthetic", "manyshot", "robustness"]

import_plugins(__name__, __path__, infrastructure=_INFRASTRUCTURE, order=_ORDER)

__all__ = ["MainColumns", "ReportShape", "StudyKind", "TaskCheck", "TaskEntry", "data_kind_of",
           "data_kinds", "get_kind", "kind_names", "recorded_kind", "register", "study_kind"]
