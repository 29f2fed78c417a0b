# Data: generate the study's data when its kind does (the demo's synthetic tasks, a miniature's
# datasets and pretraining set; otherwise the users' root), then validate and prepare each task
# into Parquet shards once.
if KIND.generates_data:

    rule synth:
        output:
            directory(str(layout.data_root_dir(CFG, "{task}"))),
        priority: source_first
        log:
            f"{LOGS}/synth/{{task}}.log",
        shell:
            vpeft("synth") + " --task {wildcards.task} > {log} 2>&1"


rule prepare:
    input:
        lambda w: str(KIND.raw_task(w.task)),
    output:
        directory(PREPARED_TASK),
    priority: source_first
    log:
        f"{LOGS}/prepare/{{task}}.log",
    shell:
        vpeft("prepare") + " --task {wildcards.task} > {log} 2>&1"
