"""Contract cases for convpass, fact_tt and fact_tk: small hyper-parameters and closed-form
trainable-parameter counts (without the head) on the tiny ViT of conftest."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import DEPTH, DIM, MLP

B = 4      # convpass bottleneck in the tests
R_TT = 4   # FacT-TT rank in the tests
R_TK = 4   # FacT-TK rank in the tests
K = MLP // DIM  # the MLP's width in D-wide chunks (4)

CASES: dict[str, tuple[dict[str, Any], Callable[[], int]]] = {
    # per bypass: down D*b + b, 3x3 conv 9*b*b + b, up b*D + D; two bypasses per block
    "convpass": ({"bottleneck": B, "scale": 2.0},
                 lambda: DEPTH * 2 * (DIM * B + B + 9 * B * B + B + B * DIM + DIM)),
    # shared U, V: 2*D*r; per layer q, k, v, o cores r*r, fc1 core k*r*r, fc2 core r*k*r
    "fact_tt": ({"dim": R_TT, "scale": 2.0},
                lambda: 2 * DIM * R_TT + DEPTH * (4 + 2 * K) * R_TT * R_TT),
    # shared U, V: 2*D*r; core tensor r^3; coefficients r per matrix, (4 + 2k) matrices per layer
    "fact_tk": ({"dim": R_TK, "scale": 2.0},
                lambda: 2 * DIM * R_TK + R_TK ** 3 + DEPTH * (4 + 2 * K) * R_TK),
}
