# Collect every final evaluation into Parquet tables and render the study's HTML report.


rule report:
    input:
        expand(f"{RUNS}/{{task}}/{{method}}/final/{layout.TEST_EVAL}", task=PLAN.tasks,
               method=PLAN.methods),
        [str(layout.analysis_dir(CFG, task) / f"{name}.parquet") for task in PLAN.tasks
         for name in layout.ANALYSIS_TABLES],
        REPORT_EXTRA_INPUTS,  # e.g. the robustness study's WiSE-FT tables
    output:
        report(REPORT, caption="report-caption.rst", category="Study report"),
        *[str(layout.report_dir(CFG) / t) for t in ("results.parquet", "grid.parquet",
                                                      "summary.parquet", "summary.json",
                                                      "metrics.json")],
    log:
        f"{LOGS}/report.log",
    shell:
        vpeft("report") + " > {log} 2>&1"
