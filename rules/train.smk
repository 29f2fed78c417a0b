# The protocol: every grid point trains on train800 and scores val200; the best point (val200
# only) is retrained on train800val200; its test predictions are scored once.


rule train_grid:
    input:
        data=f"{PREPARED}/{{task}}",
        weights=WEIGHTS,
    output:
        [f"{RUNS}/{{task}}/{{method}}/grid/{{point}}/{name}" for name in layout.GRID_OUTPUTS],
    threads: config["threads"]
    resources:
        **GPU_JOB,
    log:
        f"{LOGS}/{{task}}/{{method}}/grid/{{point}}.log",
    shell:
        vpeft("train") + " --phase grid --task {wildcards.task} --method {wildcards.method}"
        " --point {wildcards.point} --threads {threads} > {log} 2>&1"


rule select:
    input:
        grid_metrics,
    output:
        f"{RUNS}/{{task}}/{{method}}/selection.json",
    log:
        f"{LOGS}/{{task}}/{{method}}/select.log",
    shell:
        vpeft("select") + " --task {wildcards.task} --method {wildcards.method} > {log} 2>&1"


rule train_final:
    input:
        selection=rules.select.output[0],
        data=f"{PREPARED}/{{task}}",
        weights=WEIGHTS,
    output:
        [f"{RUNS}/{{task}}/{{method}}/final/{name}" for name in layout.FINAL_OUTPUTS],
    threads: config["threads"]
    resources:
        **GPU_JOB,
    log:
        f"{LOGS}/{{task}}/{{method}}/final.log",
    shell:
        vpeft("train") + " --phase final --task {wildcards.task} --method {wildcards.method}"
        " --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        final=rules.train_final.output,
        data=f"{PREPARED}/{{task}}",
    output:
        [f"{RUNS}/{{task}}/{{method}}/final/{name}" for name in layout.EVAL_OUTPUTS],
    log:
        f"{LOGS}/{{task}}/{{method}}/evaluate.log",
    shell:
        vpeft("evaluate") + " --task {wildcards.task} --method {wildcards.method} > {log} 2>&1"
