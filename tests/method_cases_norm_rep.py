"""Contract cases for ln, difffit, ssf and repadapter: small hyper-parameters and closed-form
trainable-parameter counts (without the head) on the tiny ViT of conftest."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import DEPTH, DIM, MLP

LAYERNORMS = 2 * DEPTH + 1  # norm1, norm2 per block, final norm
BIASES = DEPTH * (3 * DIM + DIM + MLP + DIM + 2 * DIM) + DIM + DIM  # bitfit's count
R = 4  # repadapter bottleneck in the tests

CASES: dict[str, tuple[dict[str, Any], Callable[[], int]]] = {
    # weight + bias of every LayerNorm
    "ln": ({}, lambda: LAYERNORMS * 2 * DIM),
    # every bias + every LayerNorm weight + γ1, γ2 per block
    "difffit": ({}, lambda: BIASES + LAYERNORMS * DIM + DEPTH * 2 * DIM),
    # scale + shift after: patch embed (D); norm1 D, qkv 3D, proj D, norm2 D, fc1 MLP, fc2 D; final norm D
    "ssf": ({}, lambda: 2 * DIM + DEPTH * 2 * (7 * DIM + MLP) + 2 * DIM),
    # per adapter: A D*r + r, grouped B D*r/2 + D; two adapters per block
    "repadapter": ({"bottleneck": R, "scale": 2.0},
                   lambda: DEPTH * 2 * (DIM * R + R + DIM * R // 2 + DIM)),
}
