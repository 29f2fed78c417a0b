"""The method registry: attaching, trainable parameters by module identity, clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vpeft import methods
from vpeft.methods.lora import LoRALinear

from conftest import tiny_vit


def trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def test_names_lists_the_registered_methods():
    assert {"linear", "full", "bitfit", "lora"} <= set(methods.names())


def test_linear_trains_only_the_head():
    model = methods.apply(tiny_vit(), "linear")
    assert trainable_ids(model) == {id(p) for p in model.head.parameters()}


def test_full_trains_everything():
    model = methods.apply(tiny_vit(), "full")
    assert all(p.requires_grad for p in model.parameters())


def test_bitfit_trains_every_bias_and_nothing_else():
    model = methods.apply(tiny_vit(), "bitfit")
    biases = {id(m.bias) for m in model.modules()
              if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m.bias is not None}
    expected = biases | {id(p) for p in model.head.parameters()}
    assert trainable_ids(model) == expected
    # patch embedding, attention, MLP and LayerNorm biases are all in
    for module in (model.patch_embed.proj, model.blocks[0].attn.qkv, model.blocks[0].attn.proj,
                   model.blocks[1].mlp.fc2, model.blocks[1].norm1, model.norm):
        assert module.bias.requires_grad
    # 12 blocks named '1' and '11' would collide under substring matching; identity cannot
    assert not model.blocks[1].attn.qkv.weight.requires_grad


def test_trainable_counts_in_closed_form():
    dim, depth, classes, rank = 32, 2, 5, 4
    model = methods.apply(tiny_vit(num_classes=classes), "lora", rank=rank)
    counts = methods.count_trainable(model)
    assert counts["trainable_params"] == depth * rank * (dim + 3 * dim)
    assert counts["trainable_params_with_head"] == counts["trainable_params"] + classes * dim + classes


def test_lora_preserves_the_pretrained_function_at_init():
    reference = tiny_vit().eval()
    model = methods.apply(tiny_vit(), "lora", rank=4).eval()
    assert all(isinstance(b.attn.qkv, LoRALinear) for b in model.blocks)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_lora_update_changes_output_and_merges():
    model = methods.apply(tiny_vit(), "lora", rank=2).eval()
    layer = model.blocks[0].attn.qkv
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 10, 32)
    merged = nn.functional.linear(x, layer.merged_weight(), layer.base.bias)
    torch.testing.assert_close(layer(x), merged, rtol=1e-5, atol=1e-5)


def test_unknown_method_lists_known_ones():
    with pytest.raises(methods.MethodError, match="known methods: .*lora"):
        methods.apply(tiny_vit(), "no_such_method")


def test_unknown_hyperparameter_lists_allowed_ones():
    with pytest.raises(methods.MethodError, match=r"unknown hyper-parameter\(s\) \['rnak'\].*rank"):
        methods.apply(tiny_vit(), "lora", rnak=4)


@pytest.mark.parametrize("value", [0, -1, 2.5, "8"])
def test_out_of_range_rank_is_rejected(value):
    with pytest.raises(methods.MethodError, match="rank"):
        methods.apply(tiny_vit(), "lora", rank=value)


def test_one_step_changes_only_method_and_head(tiny_weights):
    model = methods.apply(tiny_vit(), "lora", rank=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        if name not in trainable:
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.head.weight, before["head.weight"])
