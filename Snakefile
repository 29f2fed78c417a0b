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


rule data:  # every task prepared (and, for the demo, the backbone pretrained)
    input:
        expand(f"{PREPARED}/{{task}}", task=PLAN.tasks),
        WEIGHTS,


rule train:  # every final run evaluated
    input:
        expand(f"{RUNS}/{{task}}/{{method}}/final/{layout.TEST_EVAL}", task=PLAN.tasks,
               method=PLAN.methods),


include: "rules/data.smk"
include: "rules/pretrain.smk"
include: "rules/train.smk"
include: "rules/analysis.smk"
include: "rules/report.smk"
