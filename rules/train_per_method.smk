# One method per job (train.methods_per_job: 1, the default): grid jobs of train.points_per_job
# points of one method, then select, final training and evaluation per (task, method).

if jobs.points_per_job(CFG.train) == 1:

    rule train_grid:  # one job per grid point
        input:
            data=PREPARED_TASK,
            weights=WEIGHTS,
            init_head=INIT_HEAD,
        output:
            run_files(layout.grid_dir(CFG, "{task}", "{method}", "{point}"), layout.GRID_OUTPUTS),
        priority: GRID_PRIORITY
        threads: config["threads"]
        resources:
            **train_job("grid"),
        log:
            f"{LOGS}/{{task}}/{{method}}/grid/{{point}}.log",
        benchmark:
            f"{LOGS}/{{task}}/{{method}}/grid/{{point}}.benchmark.tsv",
        shell:
            vpeft("train") + " --phase grid --task {wildcards.task} --method {wildcards.method}"
            " --point {wildcards.point} --threads {threads} > {log} 2>&1"

else:
    # One rule per (method, job of points), named train_grid_<method>_<k>; its outputs are the
    # same per-point files as one job per point, so select and everything after are unchanged.
    # A rule per job because Snakemake derives outputs from wildcards only (no output functions,
    # every output with the same wildcards): a job's list of points cannot be a wildcard.
    for _method in PLAN.methods:
        _jobs = jobs.grid_chunks(PLAN, _method)
        _stem = "train_grid_" + _rule_stem(_method)
        for _k, _ids in enumerate(_jobs, start=1):

            rule:
                name:
                    f"{_stem}_{_k}"
                input:
                    data=PREPARED_TASK,
                    weights=WEIGHTS,
                    init_head=INIT_HEAD,
                output:
                    [f for point in _ids for f in
                     run_files(layout.grid_dir(CFG, "{task}", _method, point), layout.GRID_OUTPUTS)],
                priority: GRID_PRIORITY
                threads: config["threads"]
                resources:
                    **train_job("grid", [_method], len(_ids)),
                log:
                    f"{LOGS}/{{task}}/{_method}/grid/points-{_k}-of-{len(_jobs)}.log",
                benchmark:
                    f"{LOGS}/{{task}}/{_method}/grid/points-{_k}-of-{len(_jobs)}.benchmark.tsv",
                params:  # evaluated here, per rule (the shell line runs later, after the loop)
                    method=shlex.quote(_method),
                    points=" ".join(f"--point {shlex.quote(i)}" for i in _ids),
                shell:
                    vpeft("train") + " --phase grid --task {wildcards.task} --method {params.method}"
                    " {params.points} --threads {threads} > {log} 2>&1"


rule select:
    input:
        grid_metrics,
    output:
        str(layout.selection_file(CFG, "{task}", "{method}")),
    resources:
        **SELECT_JOB,
    log:
        f"{LOGS}/{{task}}/{{method}}/select.log",
    shell:
        vpeft("select") + " --task {wildcards.task} --method {wildcards.method} > {log} 2>&1"


rule train_final:
    input:
        selection=rules.select.output[0],
        data=PREPARED_TASK,
        weights=WEIGHTS,
        init_head=INIT_HEAD,
    output:
        run_files(layout.final_dir(CFG, "{task}", "{method}"), layout.FINAL_OUTPUTS),
    threads: config["threads"]
    resources:
        **train_job("final"),
    log:
        f"{LOGS}/{{task}}/{{method}}/final.log",
    benchmark:
        f"{LOGS}/{{task}}/{{method}}/final.benchmark.tsv",
    shell:
        vpeft("train") + " --phase final --task {wildcards.task} --method {wildcards.method}"
        " --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        final=rules.train_final.output,
        data=PREPARED_TASK,
    output:
        run_files(layout.final_dir(CFG, "{task}", "{method}"), layout.EVAL_OUTPUTS),
    group:
        "bookkeeping"
    resources:
        **EVALUATE_JOB,
    log:
        f"{LOGS}/{{task}}/{{method}}/evaluate.log",
    shell:
        vpeft("evaluate") + " --task {wildcards.task} --method {wildcards.method} > {log} 2>&1"


if EXTRA_SEEDS:

    rule train_final_seed:  # the chosen point retrained with another seed of train.seeds
        input:
            selection=rules.select.output[0],
            data=PREPARED_TASK,
            weights=WEIGHTS,
            init_head=INIT_HEAD,
        output:
            run_files(layout.final_dir_in(RUNS, "{task}", "{method}", "{seed}"),
                      layout.FINAL_OUTPUTS),
        wildcard_constraints:
            seed="|".join(str(s) for s in EXTRA_SEEDS),
        threads: config["threads"]
        resources:
            **train_job("final"),
        log:
            f"{LOGS}/{{task}}/{{method}}/final-seed{{seed}}.log",
        benchmark:
            f"{LOGS}/{{task}}/{{method}}/final-seed{{seed}}.benchmark.tsv",
        shell:
            vpeft("train") + " --phase final --task {wildcards.task} --method {wildcards.method}"
            " --seed {wildcards.seed} --threads {threads} > {log} 2>&1"

    rule evaluate_seed:
        input:
            final=rules.train_final_seed.output,
            data=PREPARED_TASK,
        output:
            run_files(layout.final_dir_in(RUNS, "{task}", "{method}", "{seed}"),
                      layout.EVAL_OUTPUTS),
        wildcard_constraints:
            seed="|".join(str(s) for s in EXTRA_SEEDS),
        group:
            "bookkeeping"
        resources:
            **EVALUATE_JOB,
        log:
            f"{LOGS}/{{task}}/{{method}}/evaluate-seed{{seed}}.log",
        shell:
            vpeft("evaluate") + " --task {wildcards.task} --method {wildcards.method}"
            " --seed {wildcards.seed} > {log} 2>&1"
