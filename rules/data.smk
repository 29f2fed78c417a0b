# Data: generate the demo's synthetic tasks (or use the user's VTAB-1K root), then validate and
# prepare each task into Parquet shards once.
if CFG.study.data.kind == "synthetic":

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
        lambda w: str(layout.raw_task(CFG, w.task)),
    output:
        directory(PREPARED_TASK),
    priority: source_first
    log:
        f"{LOGS}/prepare/{{task}}.log",
    shell:
        vpeft("prepare") + " --task {wildcards.task} > {log} 2>&1"
