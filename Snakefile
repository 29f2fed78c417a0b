# vpeft workflow: data -> (pretrain) -> grid -> select -> final -> evaluate -> report.
#   snakemake --cores 2 all                      the offline demo
#   snakemake --profile slurm all --config study=vtab1k data_root=/data/vtab-1k weights=/w/vit.npz
# The grid comes from params/ (Hydra); every rule is a thin shell over `python -m vpeft <verb>`.
from snakemake.utils import min_version, validate

min_version("9.19")


configfile: "params/workflow.yaml"


validate(config, "rules/schemas/workflow.schema.yaml")


include: "rules/common.smk"


rule all:
    input:
        REPORT,


rule check:  # preflight, before anything is queued: `snakemake --cores 1 check --config ...`
    localrule: True
    log:
        f"{LOGS}/check.log",
    shell:  # shown on the terminal and kept (Snakemake's bash runs with pipefail: check's status)
        vpeft("check") + " 2>&1 | tee {log}"


rule data:  # every task prepared (and, for the demo, the backbone pretrained)
    input:
        [str(layout.prepared_task(CFG, task)) for task in PLAN.tasks],
        WEIGHTS,


rule train:  # every final run evaluated, and each task's mistake analysis (all of runs/<study>/)
    input:
        [str(layout.final_dir(CFG, task, method) / layout.TEST_EVAL) for task in PLAN.tasks
         for method in PLAN.methods],
        # further seeds of train.seeds: final-seed<s>/ (none when seeds has one element)
        [str(layout.final_dir(CFG, task, method, seed) / layout.TEST_EVAL) for task in PLAN.tasks
         for method in PLAN.methods for seed in layout.seeds(CFG)[1:]],
        [f for task in PLAN.tasks
         for f in run_files(layout.analysis_dir(CFG, task), layout.analysis_files())],


include: "rules/data.smk"
include: "rules/manyshot.smk"
include: "rules/pretrain.smk"
include: "rules/robustness.smk"
include: "rules/train.smk"
include: "rules/analysis.smk"
include: "rules/report.smk"
