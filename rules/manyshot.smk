# Many-shot studies (study.data.kind: manyshot): each task is a dataset at one training-set size.
# `vpeft subsets` draws the task's subset once (saved index file under study.data.subsets_dir, read
# on every later run) and writes a VTAB-layout view of it; the ordinary prepare rule reads the view.
if CFG.study.data.kind == "manyshot":
    from omegaconf import OmegaConf

    from vpeft.data.manyshot import dataset_specs

    MANYSHOT_DATASETS = dataset_specs(CFG)

    rule subsets:
        input:
            manyshot_sources,
        output:
            directory(str(layout.view_dir(CFG, "{task}"))),
        log:
            f"{LOGS}/subsets/{{task}}.log",
        shell:
            vpeft("subsets") + " --task {wildcards.task} > {log} 2>&1"

    # The miniature generates its datasets and its backbone's pretraining set (a real study has
    # neither, so the users' data can never be mistaken for something to generate).
    MANYSHOT_GENERATED = CFG.study.get("pretrain") is not None or any(
        OmegaConf.select(CFG, f"study.data.datasets.{name}.synthetic") is not None
        for name in MANYSHOT_DATASETS)

if CFG.study.data.kind == "manyshot" and MANYSHOT_GENERATED:

    rule synth:
        output:
            directory(str(layout.data_root_dir(CFG, "{task}"))),
        log:
            f"{LOGS}/synth/{{task}}.log",
        shell:
            vpeft("synth") + " --task {wildcards.task} > {log} 2>&1"
