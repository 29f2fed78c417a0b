# The protocol: every grid point trains on train800 and scores val200; the best point (val200
# only) is retrained on train800val200; its test predictions are scored once. The grid is searched
# with the first of train.seeds; each further seed is one more final run + evaluation (seed
# wildcard, final-seed<s>/), so the first seed's jobs are exactly those of a single-seed study.
# How runs are packed into jobs (train.points_per_job, train.methods_per_job) is vpeft.jobs's.
import re

from vpeft import jobs

EXTRA_SEEDS = layout.seeds(CFG)[1:]


def _rule_stem(name):
    return re.sub(r"\W", "_", name)


if jobs.groups_methods(CFG.train):

    include: "train_grouped.smk"

else:

    include: "train_per_method.smk"
