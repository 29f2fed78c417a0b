"""vpeft: parameter-efficient fine-tuning of Vision Transformers, studied reproducibly.

Importing vpeft stays light (no torch): the CLI's bookkeeping verbs and Snakemake's DAG building
start fast. Modules that need timm call ``vpeft._compat.ensure_torchvision_importable()`` first.
"""
__version__ = "0.1.0"
