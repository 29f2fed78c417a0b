# The demo pretrains its own backbone on the synthetic source set; the paper's studies use the
# weights file the user brings (model.weights), which is then simply an input.
if CFG.study.get("pretrain") is not None:

    rule pretrain:
        input:
            f"{PREPARED}/{layout.SOURCE_TASK}",
        output:
            weights=WEIGHTS,
            info=str(layout.Path(WEIGHTS).with_suffix(".json")),
        threads: workflow.cores  # it runs alone: nothing else can start before it
        log:
            f"{LOGS}/pretrain.log",
        shell:
            vpeft("pretrain") + " --threads {threads} > {log} 2>&1"
