"""The robustness study: a CLIP image tower with a zero-shot head, fine-tuned on few-shot ImageNet,
scored on ImageNet and its distribution shifts, with WiSE-FT weight-space ensembles.

Modules: :mod:`~vpeft.robustness.zeroshot` (the head from a CLIP text tower; the head module
itself, its file and its installation: :mod:`vpeft.models.zeroshot_head`),
:mod:`~vpeft.robustness.imagenet` (label space, few-shot splits, shift readers),
:mod:`~vpeft.robustness.shifts` (evaluation sets and the class-subset logit mask),
:mod:`~vpeft.robustness.wise` (WiSE-FT for every method), :mod:`~vpeft.robustness.miniature`
(the offline demo's data and tiny CLIP).
"""
