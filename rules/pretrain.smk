# The demo pretrains its own backbone on the synthetic source set; the paper's studies use the
# weights file the user brings (model.weights), which is then simply an input.
if CFG.study.get("pretrain") is not None:

    rule pretrain:
        input:
            str(layout.prepared_task(CFG, layout.SOURCE_TASK)),
        output:
            weights=WEIGHTS,
            info=str(layout.weights_info(WEIGHTS)),
        threads: max(config["threads"], 8)  # runs alone; Snakemake caps it at --cores
        log:
            f"{LOGS}/pretrain.log",
        benchmark:
            f"{LOGS}/pretrain.benchmark.tsv",
        shell:
            vpeft("pretrain") + " --threads {threads} > {log} 2>&1"
