"""Weights in Google's original ViT release layout (google-research/vision_transformer
``ViT-B_16.npz``, flax names): the inverse of timm's ``_load_weights``. Used by the weights-format
tests and by the rehearsal (``benchmarks.rehearse``), which writes a random ViT-B/16 this way so
the study's backbone is loaded through exactly the code path a downloaded file takes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def write_google_vit_npz(model: torch.nn.Module, path: Path,
                         pre_logits: tuple[torch.Tensor, torch.Tensor] | None = None) -> Path:
    """``model`` (a timm ViT) under the names and layouts of Google's original ViT release.
    ``pre_logits`` = (weight [out, in], bias) adds the in21k representation layer."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"],
           "Transformer/encoder_norm/bias": sd["norm.bias"],
           "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(len(model.blocks)):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        mha = b + "MultiHeadDotProductAttention_1/"
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{b}{ln}/scale"], out[f"{b}{ln}/bias"] = sd[f"{t}{norm}.weight"], sd[f"{t}{norm}.bias"]
        qkv_w, qkv_b = sd[f"{t}attn.qkv.weight"], sd[f"{t}attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * dim, (j + 1) * dim)
            out[f"{mha}{name}/kernel"] = qkv_w[rows].T.reshape(dim, heads, dim // heads)
            out[f"{mha}{name}/bias"] = qkv_b[rows].reshape(heads, dim // heads)
        out[f"{mha}out/kernel"] = sd[f"{t}attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        out[f"{mha}out/bias"] = sd[f"{t}attn.proj.bias"]
        for r in range(2):
            out[f"{b}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{t}mlp.fc{r + 1}.weight"].T
            out[f"{b}MlpBlock_3/Dense_{r}/bias"] = sd[f"{t}mlp.fc{r + 1}.bias"]
    if pre_logits is not None:
        out["pre_logits/kernel"], out["pre_logits/bias"] = pre_logits[0].numpy().T, pre_logits[1].numpy()
    np.savez(path, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()})
    return path
