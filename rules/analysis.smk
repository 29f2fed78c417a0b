# Mistake analysis and ensembles of each task's final runs, from their saved test predictions
# (members of top-k ensembles are chosen by validation accuracy only).
from vpeft import analysis as _analysis


def analyze_mem_mb(wildcards):
    """Memory of one analyze job (vpeft.analysis.memory_mb: measured peak + margin), from the
    task's test size, class count and the study's methods. Known when the plan is made: the
    study's split_sizes, else the prepared task's manifest (once `prepare` ran), else the
    planning bound analysis.PLANNING_NUM_TEST. Never from the job's own inputs: in the
    bookkeeping group they are written by the same SLURM job, after its size was requested."""
    from vpeft.data.catalog import task_entry

    return _analysis.memory_mb(_analysis.planned_num_test(CFG, wildcards.task),
                               task_entry(CFG, wildcards.task).num_classes, len(PLAN.methods))


rule analyze:
    input:
        expand(f"{RUNS}/{{{{task}}}}/{{method}}/final/{layout.TEST_PREDICTIONS}", method=PLAN.methods),
        expand(f"{RUNS}/{{{{task}}}}/{{method}}/selection.json", method=PLAN.methods),
        # every seed's predictions (the analysis reads the first seed's; the report all of them)
        expand(f"{RUNS}/{{{{task}}}}/{{method}}/final-seed{{seed}}/{layout.TEST_PREDICTIONS}",
               method=PLAN.methods, seed=EXTRA_SEEDS),
    output:
        [str(layout.analysis_dir(CFG, "{task}") / f"{name}.parquet") for name in layout.ANALYSIS_TABLES],
    group:
        "bookkeeping"
    resources:
        **BOOKKEEPING_JOB,
        mem_mb=analyze_mem_mb,
    log:
        f"{LOGS}/{{task}}/analyze.log",
    shell:
        vpeft("analyze") + " --task {wildcards.task} > {log} 2>&1"
