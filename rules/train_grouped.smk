# Methods sharing jobs (train.methods_per_job: N > 1, or 0 for all): for each group of N methods
# of a task, ONE grid job (every point of the group's methods), one select, one final training
# (per seed) and one evaluation (per seed). The same runs and files as one method per job
# (rules/train_per_method.smk); only the number of processes differs. Rules are named
# <step>_group<g> (train_grid_group1, select_group1, ...; `snakemake -n` lists them).


def _methods_args(methods):
    return " ".join(f"--method {shlex.quote(m)}" for m in methods)


def _final_files(methods, seed, names):
    """``<final run of seed>/<name>`` (layout.final_dir) of task {task}, for every method and
    name."""
    return [f for m in methods for f in run_files(layout.final_dir(CFG, "{task}", m, seed), names)]


for _g, _methods in enumerate(jobs.method_groups(PLAN), start=1):
    _points = sum(len(PLAN.points[m]) for m in _methods)

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
            **{**GPU_JOB, "runtime": lambda wildcards, attempt, n=_points:
               config["train_runtime_min"] * attempt * n},
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

    # Every seed's final training and evaluation of the group: final/ for the first seed,
    # final-seed<s>/ for the others (the seed wildcard; empty for the first).
    for _seed in layout.seeds(CFG):
        _first = _seed == layout.seeds(CFG)[0]
        _dir = layout.final_dir(CFG, "{task}", _methods[0], _seed).name  # names the logs
        _suffix = "" if _first else f"_seed{_seed}"

        rule:
            name:
                f"train_final{_suffix}_group{_g}"
            input:
                selection=[str(layout.selection_file(CFG, "{task}", m)) for m in _methods],
                data=PREPARED_TASK,
                weights=WEIGHTS,
                init_head=INIT_HEAD,
            output:
                _final_files(_methods, _seed, layout.FINAL_OUTPUTS),
            threads: config["threads"]
            resources:
                **{**GPU_JOB, "runtime": lambda wildcards, attempt, n=len(_methods):
                   config["train_runtime_min"] * attempt * n},
            log:
                f"{LOGS}/{{task}}/group{_g}/{_dir}.log",
            benchmark:
                f"{LOGS}/{{task}}/group{_g}/{_dir}.benchmark.tsv",
            params:
                runs=_methods_args(_methods) + ("" if _first else f" --seed {_seed}"),
            shell:
                vpeft("train") + " --phase final --task {wildcards.task} {params.runs}"
                " --threads {threads} > {log} 2>&1"

        rule:
            name:
                f"evaluate{_suffix}_group{_g}"
            input:
                final=_final_files(_methods, _seed, layout.FINAL_OUTPUTS),
                data=PREPARED_TASK,
            output:
                _final_files(_methods, _seed, layout.EVAL_OUTPUTS),
            group:
                "bookkeeping"
            resources:
                **EVALUATE_JOB,
            log:
                f"{LOGS}/{{task}}/group{_g}/evaluate-{_dir}.log",
            params:
                runs=_methods_args(_methods) + ("" if _first else f" --seed {_seed}"),
            shell:
                vpeft("evaluate") + " --task {wildcards.task} {params.runs} > {log} 2>&1"
