"""vpeft: parameter-efficient fine-tuning of Vision Transformers, studied reproducibly."""
from vpeft._compat import ensure_torchvision_importable

ensure_torchvision_importable()

__version__ = "0.1.0"
