# Collect every final evaluation into Parquet tables and render the study's HTML report.
from vpeft.report.pages import task_page
from vpeft.report.published import published_csv

# The published test top-1 and grid the report compares with: a user's own CSV is an input, so
# editing it re-renders the report (a name shipped with vpeft resolves inside the package).
REFERENCE_INPUTS = [str(path) for key in ("published", "published_grid")
                    if (path := published_csv(CFG.study.get(key), f"study.{key}"))]


rule report:
    input:
        # every seed's evaluation (final/ and final-seed<s>/): the report's intervals and tests
        # read each seed's test_predictions.parquet, written by the same job
        [str(d / layout.TEST_EVAL) for task in PLAN.tasks for method in PLAN.methods
         for _, d in layout.seed_final_dirs(CFG, task, method)],
        [f for task in PLAN.tasks for f in
         run_files(layout.analysis_dir(CFG, task), [*layout.analysis_files(), layout.REPORT_PART])],
        REPORT_EXTRA_INPUTS,  # e.g. the robustness study's WiSE-FT tables
        REFERENCE_INPUTS,
    output:
        report(REPORT, caption="report-caption.rst", category="Study report"),
        # its tables (the analysis tables over all tasks among them) and JSON for DVC
        *[str(layout.report_dir(CFG) / name) for name in layout.report_files()],
        # one page per task beside index.html (vpeft.report.pages.task_page names them)
        *[str(layout.report_dir(CFG) / task_page(t)) for t in PLAN.tasks],
    # tasks are read, bootstrapped and rendered in one worker process per CPU it may use
    # (vpeft.report.parallel): as many as the job is given (4 not measured against 2 or 8)
    threads: 4
    resources:
        # Stated bound, not measured at full size here: the report holds per task, method and
        # seed only (index, label, pred) and correctness (~9 bytes per test example; VTAB-1K's
        # 19 tasks x 16 methods x 3 seeds: ~170 MB), never logits, plus ~0.5 GB of interpreter,
        # Arrow and rendering. benchmarks/fullsize.py measures it (docs/benchmarks.md).
        mem_mb=2000,
    log:
        f"{LOGS}/report.log",
    shell:
        vpeft("report") + " > {log} 2>&1"
