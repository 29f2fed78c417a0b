"""Contract cases for vpt_shallow, vpt_deep, adapter, pfeiffer and adaptformer: small
hyper-parameters and closed-form trainable-parameter counts (without the head) on the tiny ViT of
conftest."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import DEPTH, DIM

P = 3  # prompt tokens in the tests
B = 4  # adapter bottleneck in the tests


def _bottleneck() -> int:
    """One adapter: down D*b + b, up b*D + D."""
    return DIM * B + B + B * DIM + DIM


CASES: dict[str, tuple[dict[str, Any], Callable[[], int]]] = {
    "vpt_shallow": ({"num_prompts": P}, lambda: P * DIM),
    "vpt_deep": ({"num_prompts": P}, lambda: DEPTH * P * DIM),
    "adapter": ({"bottleneck": B, "scale": 2.0}, lambda: DEPTH * 2 * _bottleneck()),
    "pfeiffer": ({"bottleneck": B, "scale": 2.0}, lambda: DEPTH * _bottleneck()),
    "adaptformer": ({"bottleneck": B, "scale": 2.0}, lambda: DEPTH * _bottleneck()),
}
