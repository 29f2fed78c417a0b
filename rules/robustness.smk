# The robustness study (study.robustness): few-shot split -> the ordinary protocol on task
# `imagenet` (every run starts from the zero-shot head, model.init_head) -> WiSE-FT of every final
# run on the ID test set and every shift.   snakemake ... robustness --config study=robustness
if KIND.evaluates_shifts:
    from vpeft.robustness import pipeline as robust

    ROBUST = CFG.study.robustness
    MINIATURE = ROBUST.get("miniature") is not None
    SHIFTS = list(ROBUST.shifts)
    SHIFT_DIR = str(robust.shift_dir(CFG, "{shift}"))
    CLIP_DIR = str(ROBUST.clip.model).removeprefix("local-dir:")

    def wise_job():
        """WiSE-FT's requests (vpeft.requests: calibrated once the shift sets are prepared, else
        GPU_JOB's constants)."""
        def ask(wildcards, attempt):
            return REQUESTS.wise(wildcards.task, wildcards.method,
                                 [SHIFT_DIR.format(shift=s) for s in SHIFTS],
                                 len(ROBUST.alphas), attempt)

        return {**GPU_JOB, "runtime": lambda wildcards, attempt: ask(wildcards, attempt)["runtime"],
                "mem_mb": lambda wildcards, attempt: ask(wildcards, attempt)["mem_mb"]}

    # one WiSE-FT curve per seed's final run (wise/ for the first seed, wise-seed<s>/ for others)
    WISE_TABLES = [str(layout.wise_dir(CFG, t, m, s) / layout.WISE_TABLE) for t in PLAN.tasks
                   for m in PLAN.methods for s in layout.seeds(CFG)]
    REPORT_EXTRA_INPUTS.extend(WISE_TABLES)  # the report shows the WiSE-FT curves

    rule robustness:
        input:
            WISE_TABLES,

    if MINIATURE:

        rule robust_synth:
            output:
                directory(str(ROBUST.miniature.root)),
            log:
                f"{LOGS}/robust_synth.log",
            shell:
                vpeft("robust-synth") + " > {log} 2>&1"

        rule fit_clip:
            input:
                str(layout.prepared_task(CFG, layout.SOURCE_TASK)),
                WEIGHTS,
            output:
                directory(CLIP_DIR),
                str(layout.weights_info(CLIP_DIR)),  # the fit's record, beside the folder
            log:
                f"{LOGS}/fit_clip.log",
            shell:
                vpeft("fit-clip") + " > {log} 2>&1"

    rule imagenet_split:
        input:
            ROBUST.miniature.root if MINIATURE else
            [robust.required(CFG, f"study.robustness.{s}.root") for s in ("train", "test")],
        output:
            directory(str(layout.data_root_dir(CFG, "{task}"))),  # the task's raw view
        wildcard_constraints:
            task="|".join(PLAN.tasks),
        log:
            f"{LOGS}/imagenet_split/{{task}}.log",
        shell:
            vpeft("imagenet-split") + " --task {wildcards.task} > {log} 2>&1"

    if KIND.generates_data:  # the miniature's source set: rule synth

        ruleorder: imagenet_split > synth

    rule prepare_shift:
        input:
            ROBUST.miniature.root if MINIATURE else
            lambda w: [robust.required(CFG, f"study.robustness.shifts.{w.shift}.root")],
        output:
            directory(SHIFT_DIR),
        log:
            f"{LOGS}/prepare_shift/{{shift}}.log",
        shell:
            vpeft("prepare-shift") + " --shift {wildcards.shift} > {log} 2>&1"

    rule zeroshot_head:
        input:
            [CLIP_DIR] if MINIATURE else [robust.required(CFG, "study.robustness.clip.weights")],
            WEIGHTS,
        output:
            str(CFG.model.init_head),
            str(layout.weights_info(CFG.model.init_head)),  # the head's record, beside it
        log:
            f"{LOGS}/zeroshot_head.log",
        shell:
            vpeft("zeroshot-head") + " > {log} 2>&1"

    rule wise:
        input:
            str(layout.final_dir(CFG, "{task}", "{method}") / layout.METRICS),
            PREPARED_TASK,
            [SHIFT_DIR.format(shift=s) for s in SHIFTS],
            str(CFG.model.init_head),
        output:
            run_files(layout.wise_dir(CFG, "{task}", "{method}"), layout.WISE_OUTPUTS),
        threads: config["threads"]
        resources:
            **wise_job(),
        log:
            f"{LOGS}/{{task}}/{{method}}/wise.log",
        benchmark:
            f"{LOGS}/{{task}}/{{method}}/wise.benchmark.tsv",
        shell:
            vpeft("wise") + " --task {wildcards.task} --method {wildcards.method}"
            " --threads {threads} > {log} 2>&1"

    if len(layout.seeds(CFG)) > 1:

        rule wise_seed:  # WiSE-FT of another seed's final run (final-seed<s>/)
            input:
                str(layout.final_dir_in(RUNS, "{task}", "{method}", "{seed}") / layout.METRICS),
                PREPARED_TASK,
                [SHIFT_DIR.format(shift=s) for s in SHIFTS],
                str(CFG.model.init_head),
            output:
                run_files(layout.wise_dir_in(RUNS, "{task}", "{method}", "{seed}"),
                          layout.WISE_OUTPUTS),
            wildcard_constraints:
                seed="|".join(str(s) for s in layout.seeds(CFG)[1:]),
            threads: config["threads"]
            resources:
                **wise_job(),
            log:
                f"{LOGS}/{{task}}/{{method}}/wise-seed{{seed}}.log",
            benchmark:
                f"{LOGS}/{{task}}/{{method}}/wise-seed{{seed}}.benchmark.tsv",
            shell:
                vpeft("wise") + " --task {wildcards.task} --method {wildcards.method}"
                " --seed {wildcards.seed} --threads {threads} > {log} 2>&1"
