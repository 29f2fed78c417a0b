"""Backbones: timm ViTs loaded from local weight files, and the demo's own pretraining."""
