"""Each method's hyper-parameter names, declared without torch.

The methods' typed configs (:mod:`vpeft.methods`, one dataclass per method) need torch; composing a
study must not (``vpeft plan`` and every Snakemake DAG build compose it). This table lets the
composition refuse a misspelled hyper-parameter (``rnak``) before anything is planned, naming
where it was written; ``tests/test_config.py`` keeps it equal to the typed configs' fields.

``shape`` names the hyper-parameters that change which tensors a method adds (a rank, a
bottleneck width, a prompt count, the tuner type or its target modules): the trainable-parameter
count depends on those alone, so ``vpeft check`` builds a model once per distinct set of them.
A method that is not declared here (a plug-in) is checked by its typed config only, in ``vpeft
check`` and in its jobs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodHparams:
    names: tuple[str, ...]         # every hyper-parameter, in the typed config's field order
    shape: tuple[str, ...] = ()    # those that change the method's tensors (see above)


_NONE = MethodHparams(())
_ADAPTER = MethodHparams(("bottleneck", "scale", "dropout"), shape=("bottleneck",))
_FACT = MethodHparams(("dim", "scale", "dropout"), shape=("dim",))
_PROMPTS = MethodHparams(("num_prompts", "dropout"), shape=("num_prompts",))

METHODS: dict[str, MethodHparams] = {
    "linear": _NONE,
    "full": _NONE,
    "bitfit": _NONE,
    "ln": _NONE,
    "difffit": _NONE,
    "ssf": _NONE,
    # drop_prompts_after_block0: the public code's defect, set by train.protocol (as published)
    "vpt_shallow": MethodHparams(("num_prompts", "dropout", "drop_prompts_after_block0"),
                                 shape=("num_prompts",)),
    "vpt_deep": _PROMPTS,
    "lora": MethodHparams(("rank", "alpha", "dropout"), shape=("rank",)),
    "adapter": _ADAPTER,
    "pfeiffer": _ADAPTER,
    "adaptformer": _ADAPTER,
    "convpass": MethodHparams(("bottleneck", "scale", "dropout", "xavier_init"),
                              shape=("bottleneck",)),
    "repadapter": _ADAPTER,
    "fact_tt": _FACT,
    "fact_tk": _FACT,
    "peft": MethodHparams(("tuner", "rank", "alpha", "dropout", "target"),
                          shape=("tuner", "rank", "target")),
}


def declared(method: str) -> MethodHparams | None:
    """The declaration of ``method``, or None for a method this table does not know."""
    return METHODS.get(method)
