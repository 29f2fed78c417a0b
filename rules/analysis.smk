# Mistake analysis and ensembles of each task's final runs, from their saved test predictions
# (members of top-k ensembles are chosen by validation accuracy only).
rule analyze:
    input:
        [str(layout.final_dir(CFG, "{task}", m) / layout.TEST_PREDICTIONS) for m in PLAN.methods],
        [str(layout.selection_file(CFG, "{task}", m)) for m in PLAN.methods],
        # every seed's predictions (the analysis reads the first seed's; the report all of them)
        [str(layout.final_dir(CFG, "{task}", m, s) / layout.TEST_PREDICTIONS)
         for m in PLAN.methods for s in EXTRA_SEEDS],
    output:
        run_files(layout.analysis_dir(CFG, "{task}"), layout.analysis_files()),
        # the task's runs read and bootstrapped once, for the report
        str(layout.analysis_dir(CFG, "{task}") / layout.REPORT_PART),
    group:
        "bookkeeping"
    resources:
        **BOOKKEEPING_JOB,
        mem_mb=analyze_mem_mb,
    log:
        f"{LOGS}/{{task}}/analyze.log",
    shell:
        vpeft("analyze") + " --task {wildcards.task} > {log} 2>&1"
