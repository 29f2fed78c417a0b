# Methods sharing jobs (train.methods_per_job: N > 1, or 0 for all): for each group of N methods
# of a task, ONE grid job (every point of the group's methods), one select, one final training
# (per seed) and one evaluation (per seed). The same runs and files as one method per job
# (rules/train_per_method.smk); only the number of processes differs. Rules are named
# <step>_group<g> (train_grid_group1, select_group1, ...; `snakemake -n` lists them); further
# seeds are the {seed} wildcard of train_final_seed_group<g> and evaluate_seed_group<g>.
# One set of rules per group, because a job's outputs are every run file of its methods, and
# Snakemake derives a rule's outputs from wildcards only (no output functions): a list of
# methods cannot be a wildcard.


def _methods_args(methods):
    return " ".join(f"--method {shlex.quote(m)}" for m in methods)


def _seed_runs_args(methods):
    """The runs of a further seed's job: the methods and --seed <wildcard>. One params value with
    the seed inside, as when each seed had its own rule: the shell line and the params that
    finished jobs recorded stay the same, so Snakemake's code and params triggers rerun nothing."""
    return lambda wildcards: f"{_methods_args(methods)} --seed {wildcards.seed}"


def _final_files(methods, seed, names):
    """``<final run>/<name>`` of task {task} for every method and name: final/ (seed None, the
    first seed) or final-seed<seed>/ (``seed`` the pattern "{seed}")."""
    return [f for m in methods
            for f in run_files(layout.final_dir_in(RUNS, "{task}", m, seed), names)]


for _g, _methods in enumerate(jobs.method_groups(PLAN), start=1):

    rule:
        name:
            f"train_grid_group{_g}"
        input:
            data=PREPARED_TASK,
            weights=WEIGHTS,
            init_head=INIT_HEAD,
        output:
            [f for m in _methods for p in PLAN.points[m]
             for f in run_files(layout.grid_dir(CFG, "{task}", m, p.id), layout.GRID_OUTPUTS)],
        priority: GRID_PRIORITY
        threads: config["threads"]
        resources:
            **train_job("grid", _methods, {m: len(PLAN.points[m]) for m in _methods}),
        log:
            f"{LOGS}/{{task}}/group{_g}/grid.log",
        benchmark:
            f"{LOGS}/{{task}}/group{_g}/grid.benchmark.tsv",
        params:  # evaluated here, per rule (the shell line runs later, after the loop)
            methods=_methods_args(_methods),
        shell:
            vpeft("train") + " --phase grid --task {wildcards.task} {params.methods} --points all"
            " --threads {threads} > {log} 2>&1"

    rule:
        name:
            f"select_group{_g}"
        input:
            [str(layout.grid_dir(CFG, "{task}", m, p.id) / layout.METRICS) for m in _methods
             for p in PLAN.points[m]],
        output:
            [str(layout.selection_file(CFG, "{task}", m)) for m in _methods],
        resources:
            **SELECT_JOB,
        log:
            f"{LOGS}/{{task}}/group{_g}/select.log",
        params:
            methods=_methods_args(_methods),
        shell:
            vpeft("select") + " --task {wildcards.task} {params.methods} > {log} 2>&1"

    rule:
        name:
            f"train_final_group{_g}"
        input:
            selection=[str(layout.selection_file(CFG, "{task}", m)) for m in _methods],
            data=PREPARED_TASK,
            weights=WEIGHTS,
            init_head=INIT_HEAD,
        output:
            _final_files(_methods, None, layout.FINAL_OUTPUTS),
        threads: config["threads"]
        resources:
            **train_job("final", _methods),
        log:
            f"{LOGS}/{{task}}/group{_g}/final.log",
        benchmark:
            f"{LOGS}/{{task}}/group{_g}/final.benchmark.tsv",
        params:
            runs=_methods_args(_methods),
        shell:
            vpeft("train") + " --phase final --task {wildcards.task} {params.runs}"
            " --threads {threads} > {log} 2>&1"

    rule:
        name:
            f"evaluate_group{_g}"
        input:
            final=_final_files(_methods, None, layout.FINAL_OUTPUTS),
            data=PREPARED_TASK,
        output:
            _final_files(_methods, None, layout.EVAL_OUTPUTS),
        group:
            "bookkeeping"
        resources:
            **EVALUATE_JOB,
        log:
            f"{LOGS}/{{task}}/group{_g}/evaluate-final.log",
        params:
            runs=_methods_args(_methods),
        shell:
            vpeft("evaluate") + " --task {wildcards.task} {params.runs} > {log} 2>&1"

    if EXTRA_SEEDS:  # final-seed<s>/: the group's chosen points retrained with another seed

        rule:
            name:
                f"train_final_seed_group{_g}"
            input:
                selection=[str(layout.selection_file(CFG, "{task}", m)) for m in _methods],
                data=PREPARED_TASK,
                weights=WEIGHTS,
                init_head=INIT_HEAD,
            output:
                _final_files(_methods, "{seed}", layout.FINAL_OUTPUTS),
            wildcard_constraints:
                seed="|".join(str(s) for s in EXTRA_SEEDS),
            threads: config["threads"]
            resources:
                **train_job("final", _methods),
            log:
                f"{LOGS}/{{task}}/group{_g}/final-seed{{seed}}.log",
            benchmark:
                f"{LOGS}/{{task}}/group{_g}/final-seed{{seed}}.benchmark.tsv",
            params:
                runs=_seed_runs_args(_methods),
            shell:
                vpeft("train") + " --phase final --task {wildcards.task} {params.runs}"
                " --threads {threads} > {log} 2>&1"

        rule:
            name:
                f"evaluate_seed_group{_g}"
            input:
                final=_final_files(_methods, "{seed}", layout.FINAL_OUTPUTS),
                data=PREPARED_TASK,
            output:
                _final_files(_methods, "{seed}", layout.EVAL_OUTPUTS),
            wildcard_constraints:
                seed="|".join(str(s) for s in EXTRA_SEEDS),
            group:
                "bookkeeping"
            resources:
                **EVALUATE_JOB,
            log:
                f"{LOGS}/{{task}}/group{_g}/evaluate-final-seed{{seed}}.log",
            params:
                runs=_seed_runs_args(_methods),
            shell:
                vpeft("evaluate") + " --task {wildcards.task} {params.runs} > {log} 2>&1"
