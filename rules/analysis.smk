# Mistake analysis and ensembles of each task's final runs, from their saved test predictions
# (members of top-k ensembles are chosen by validation accuracy only).
rule analyze:
    input:
        expand(f"{RUNS}/{{{{task}}}}/{{method}}/final/{layout.TEST_PREDICTIONS}", method=PLAN.methods),
        expand(f"{RUNS}/{{{{task}}}}/{{method}}/selection.json", method=PLAN.methods),
        # every seed's predictions (the analysis reads the first seed's; the report all of them)
        expand(f"{RUNS}/{{{{task}}}}/{{method}}/final-seed{{seed}}/{layout.TEST_PREDICTIONS}",
               method=PLAN.methods, seed=EXTRA_SEEDS),
    output:
        [str(layout.analysis_dir(CFG, "{task}") / f"{name}.parquet") for name in layout.ANALYSIS_TABLES],
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
