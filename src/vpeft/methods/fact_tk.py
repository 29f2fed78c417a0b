"""FacT-TK (Jie & Deng, AAAI 2023, "FacT: Factor-Tuning for Lightweight Adaptation on Vision
Transformer"): the Tucker-style variant.

Same sites, shared factors U (r×D, ``FacTu``) and V (D×r, zero, ``FacTv``), wrapper, dropout and
merge as FacT-TT (see :mod:`vpeft.methods.fact_tt`). Instead of per-site cores, every core is a
mix of the slices of ONE shared core tensor ``C`` (r×r×r, ``FacTc``) with coefficients ``P``
(r × n·L, ``FacTp``), n = 4 + 2k matrices per layer (12 for k = hidden / D = 4), both
xavier-uniform as in the official code. Following the official code, layer l's slices are::

    S = C @ P[:, n·l : n·l + n]          # (r, r, n): S[a, b, j] = Σ_c C[a, b, c] P[c, n·l + j]
    q, k, v, o:  M = S[:, :, j]ᵀ for j = 0, 1, 2, 3            (r×r)
    fc1:         M = S[:, :, 4 : 4+k].reshape(r, k·r)ᵀ        (k·r × r)
    fc2:         M = S[:, :, 4+k : 4+2k].reshape(r, k·r)      (r × k·r)

(``M`` in the column convention of :class:`~vpeft.methods.fact_tt.FacTLinear`; the official code
multiplies row vectors, ``FacTu(x) @ S[:, :, j]``, hence the transposes. The ``reshape(r, k·r)``
of an (r, r, k) slice interleaves the k chunks exactly as the official code does.) FacT-TK trains
``2·D·r + r³ + (4 + 2k)·L·r`` parameters (``2Dr + r³ + 12Lr`` for k = 4); the pretrained function
is unchanged at init (V = 0) and the increments merge into the Linears.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpeft.methods.base import register
from vpeft.methods.fact_tt import FacTFactors, attach_fact, check_fact_config, merge


@dataclass(frozen=True)
class FacTTKConfig:
    dim: int = 16         # r, the rank of the shared factors and the size of the core tensor
    scale: float = 1.0    # s, multiplies every increment
    dropout: float = 0.1  # on the r-wide code before V

    def __post_init__(self) -> None:
        check_fact_config("fact_tk", self.dim, self.scale, self.dropout)


class TKFactors(FacTFactors):
    """FacT-TK: a shared core tensor C (r×r×r) and per-(layer, matrix) coefficients P."""

    def __init__(self, dim: int, rank: int, depth: int, ratio: int) -> None:
        super().__init__(dim, rank, depth, ratio)
        self.per_layer = 4 + 2 * ratio  # q, k, v, o, k chunks of fc1, k chunks of fc2
        self.core_tensor = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, rank, rank)))
        self.coeffs = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, self.per_layer * depth)))

    def slices(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s (r, r, n) core slices ``C @ P[:, n·l : n·l + n]``."""
        n = self.per_layer
        return self.core_tensor @ self.coeffs[:, n * layer: n * (layer + 1)]

    def core(self, layer: int, site: str) -> torch.Tensor:
        s, r, k = self.slices(layer), self.rank, self.ratio
        if site == "qkv":  # [M_q; M_k; M_v], M_j = S[:, :, j]ᵀ
            return s[:, :, :3].permute(2, 1, 0).reshape(3 * r, r)
        if site == "proj":
            return s[:, :, 3].T
        if site == "fc1":
            return s[:, :, 4:4 + k].reshape(r, k * r).T
        return s[:, :, 4 + k:4 + 2 * k].reshape(r, k * r)


@register("fact_tk", FacTTKConfig,
          "FacT-TK: qkv/proj/fc1/fc2 increments factorised with shared U, V and one shared core "
          "tensor mixed per site", identity_at_init=True, merge=merge,
          public_linears={TKFactors: ("u", "v")})  # its core and coefficients are no Linears there
def attach(model: nn.Module, config: FacTTKConfig) -> list[nn.Parameter]:
    return attach_fact(model, "fact_tk", int(config.dim), float(config.scale), config.dropout,
                       TKFactors)
