"""Generators of the offline demo's data: nothing in the core imports this package except the
CLI verbs that generate demo data (``vpeft synth``; the robustness miniature's ``robust-synth``
and ``fit-clip``).

- :mod:`vpeft.demo.synthetic`: synthetic tasks in the VTAB-1K on-disk format, and the source set
  the demo pretrains its tiny ViT on (the demo and smoke studies);
- :mod:`vpeft.demo.manyshot`: the many-shot miniature's datasets, synthetic tasks written as
  class-folder trees or list files;
- :mod:`vpeft.demo.robustness`: the robustness miniature's ImageNet-like trees (in-distribution
  renders and their shifts) and its tiny CLIP.

What the core reads of the demo's data is the core's, and the generators import it from there:
the synthetic tasks' registry (:mod:`vpeft.data.catalog`), the miniature's label space and prompt
templates (:mod:`vpeft.robustness.pipeline`, :mod:`vpeft.robustness.zeroshot`).
"""
