"""The landing page (``index.html``): the study's answers in a few screens.

The main table and its chart, which method to use, accuracy vs trainable parameters and vs
cost, the cross-task summaries of the analysis (the detail is on the task pages), seed noise,
the many-shot and robustness sections when the study has them, the published reference and
the provenance. Each section's content is built by its own module; this one gathers them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from vpeft.report.advice import recommendations
from vpeft.report.collect import StudyResults, study_methods, study_tasks
from vpeft.report.cost import cost_view, params_scatter
from vpeft.report.crosstask import confidence_summary, ensemble_overview, mean_overlap_heatmap, \
    mean_seed_noise, mistakes_summary
from vpeft.report.maintable import main_table, mean_bars
from vpeft.report.mistakes import analysis_index, analysis_tasks
from vpeft.report.pages import split_columns
from vpeft.report.provenance import consistency_notes, input_data_rows, representative_config, \
    shared_facts
from vpeft.report.published import PUBLISHED_TITLE, published_table, read_published
from vpeft.report.reproduction import PAIR_HEADERS, Reproduction, reproduction_landing
from vpeft.report.seednoise import seed_noise_view
from vpeft.report.view import fmt_hparam

__all__ = ["MAIN_COLUMNS", "PUBLISHED_COLUMNS", "landing_context"]

# The widest a main / published table part may be, in value columns, so that it fits a
# 1400-px window (a main-table cell holds "88.5 ± 0.3" over its interval; a published one "88.5"
# over its delta); measured in Chromium by tests/test_report_layout.py.
MAIN_COLUMNS = 12
PUBLISHED_COLUMNS = 16


def landing_context(results: StudyResults, study: Mapping, published_csv: Path | None,
                    provenance: Mapping, common: Mapping,
                    reproduction: Reproduction | None = None) -> dict:
    """The landing page's template context: ``common`` (what every page shares) and its own;
    ``reproduction``: the runs against the study's published grid, if it declares one."""
    from vpeft.report.manyshot import manyshot_curves
    from vpeft.report.robustness import robustness_view

    published = published_table(results, study, read_published(published_csv)) \
        if published_csv is not None else None
    tasks = study_tasks(study)
    main = main_table(results, study)
    config = representative_config(results, study)
    seed_noise = [(t, v) for t, _ in tasks
                  if (v := seed_noise_view(results.seed_noise, t, study_methods(study)))]
    analysed = analysis_tasks(results, study)
    return dict(common) | dict(
        num_tasks=len(tasks),
        main=main,
        main_parts=split_columns(main, MAIN_COLUMNS),
        chart=mean_bars(results, study),
        chart_omitted=[r["method"] for r in results.summary.to_pylist() if r["mean"] is None],
        published=published,
        published_parts=split_columns(published, PUBLISHED_COLUMNS) if published else [],
        published_title=PUBLISHED_TITLE,
        reproduction=reproduction_landing(reproduction),
        reproduction_headers=PAIR_HEADERS,
        provenance=[(str(k), fmt_hparam(v)) for k, v in provenance.items() if k != "date"],
        shared_facts=(facts := shared_facts(results, study))[0],
        fact_exceptions=facts[1],
        input_data=input_data_rows(study),
        notes=consistency_notes(results),
        config=config,
        ensemble_overview=ensemble_overview(results, study),
        mistakes_summary=mistakes_summary(analysis_index(results), analysed),
        overlap_chart=mean_overlap_heatmap(analysis_index(results), study_methods(study)),
        confidence_summary=confidence_summary(analysis_index(results), study_methods(study)),
        analysis_tasks=analysed,
        scatter=params_scatter(results, study),
        advice=recommendations(results, study),
        manyshot=manyshot_curves(results, study),  # [] unless the study is a many-shot one
        robustness=robustness_view(results, study),  # [] unless the runs have WiSE-FT curves
        cost=cost_view(results, study),
        seed_noise_mean=mean_seed_noise(seed_noise),
        stats=results.stats is not None and results.stats.num_rows > 0,
        ci_kinds=sorted({r["ci_kind"] for r in results.stats.to_pylist()})
        if results.stats is not None else [],
    )
