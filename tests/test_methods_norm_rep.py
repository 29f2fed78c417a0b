"""ln, difffit, ssf and repadapter beyond the shared contract: what each one trains, where it
attaches, its init, and the edge cases of merging.

Merging policy tested here: every ``merge`` is idempotent. Merging a model that carries none of
the method's modules (never attached, or already merged) is a harmless no-op; a model that cannot
be merged exactly (a shift with no bias to fold into) raises a ``MethodError`` naming the layer.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vpeft import methods
from vpeft.methods.difffit import GammaScale
from vpeft.methods.repadapter import NormRepAdapter, RepAdapter
from vpeft.methods.ssf import SSF

from conftest import CLASSES, DEPTH, DIM, tiny_vit

MERGEABLE = {"difffit": {}, "ssf": {}, "repadapter": {"bottleneck": 4, "scale": 2.0}}


def trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def perturb(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def layernorm_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}


def test_ln_trains_exactly_the_layernorms():
    model = methods.apply(tiny_vit(), "ln")
    lns = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(lns) == 2 * DEPTH + 1
    assert trainable_ids(model) == layernorm_ids(model) | {id(p) for p in model.head.parameters()}


def test_ln_includes_fc_norm_under_average_pooling():
    model = methods.apply(tiny_vit(global_pool="avg", fc_norm=True), "ln")
    assert isinstance(model.fc_norm, nn.LayerNorm) and model.fc_norm.weight.requires_grad


def test_difffit_adds_two_unit_gammas_per_block_and_trains_biases_and_layernorms():
    model = methods.apply(tiny_vit(), "difffit")
    gammas = [m for m in model.modules() if isinstance(m, GammaScale)]
    assert len(gammas) == 2 * DEPTH
    for block in model.blocks:
        assert isinstance(block.ls1, GammaScale) and isinstance(block.ls2, GammaScale)
        assert isinstance(block.ls1.inner, nn.Identity)
    assert all(torch.equal(g.gamma, torch.ones(DIM)) for g in gammas)
    biases = {id(m.bias) for m in model.modules()
              if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m.bias is not None}
    expected = (biases | layernorm_ids(model) | {id(g.gamma) for g in gammas}
                | {id(p) for p in model.head.parameters()})
    assert trainable_ids(model) == expected
    assert not model.blocks[0].attn.qkv.weight.requires_grad


def test_difffit_merges_gamma_into_a_timm_layerscale():
    model = methods.apply(tiny_vit(init_values=0.1), "difffit").eval()
    perturb(model)
    proj = model.blocks[0].attn.proj.weight.detach().clone()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    methods.spec("difffit").merge(model)
    assert type(model.blocks[0].ls1).__name__ == "LayerScale"
    assert torch.equal(model.blocks[0].attn.proj.weight, proj)  # γ went into the LayerScale
    plain = tiny_vit(init_values=0.1)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_ssf_wraps_every_site_with_the_published_init():
    model = methods.apply(tiny_vit(), "ssf")
    wrappers = [m for m in model.modules() if isinstance(m, SSF)]
    # patch embedding + (norm1, qkv, proj, norm2, fc1, fc2) per block + final norm
    assert len(wrappers) == 1 + 6 * DEPTH + 1
    assert isinstance(model.patch_embed.norm, SSF) and isinstance(model.norm, SSF)
    block = model.blocks[0]
    for site in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2, block.mlp.fc1,
                 block.mlp.fc2):
        assert isinstance(site, SSF)
    assert trainable_ids(model) == ({id(p) for w in wrappers for p in (w.scale, w.shift)}
                                    | {id(p) for p in model.head.parameters()})
    scale = torch.cat([w.scale.detach() for w in wrappers])  # 768 values on the tiny ViT
    shift = torch.cat([w.shift.detach() for w in wrappers])
    assert abs(scale.mean().item() - 1.0) < 0.005 and 0.015 < scale.std().item() < 0.025
    assert abs(shift.mean().item()) < 0.005 and 0.015 < shift.std().item() < 0.025


def test_ssf_merges_into_fc_norm_under_average_pooling():
    model = methods.apply(tiny_vit(global_pool="avg", fc_norm=True), "ssf").eval()
    assert isinstance(model.fc_norm, SSF)
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    methods.spec("ssf").merge(model)
    plain = tiny_vit(global_pool="avg", fc_norm=True)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_repadapter_wraps_the_norms_with_a_two_group_up_projection():
    r = 8
    model = methods.apply(tiny_vit(), "repadapter", bottleneck=r, scale=1.0)
    for block in model.blocks:
        for wrapper in (block.norm1, block.norm2):
            assert isinstance(wrapper, NormRepAdapter) and isinstance(wrapper.norm, nn.LayerNorm)
            up = wrapper.adapter.up
            assert up.groups == 2 and up.weight.shape == (DIM, r // 2, 1)  # no off-diagonal blocks
            assert torch.count_nonzero(up.weight) == 0 and torch.count_nonzero(up.bias) == 0
            assert torch.count_nonzero(wrapper.adapter.down.bias) == 0
            assert wrapper.adapter.dropout.p == 0.1


def test_repadapter_is_the_affine_map_it_merges_into():
    torch.manual_seed(0)
    adapter = RepAdapter(DIM, 4, scale=3.0, dropout=0.1).eval()
    perturb(adapter)
    dense = adapter.dense_up()
    assert torch.count_nonzero(dense[: DIM // 2, 2:]) == 0 and torch.count_nonzero(dense[DIM // 2:, :2]) == 0
    h = torch.randn(2, 7, DIM)
    m, c = adapter.affine()
    torch.testing.assert_close(adapter(h), (h.double() @ m.T + c).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bottleneck", [3, 7, 0, 1, 2.5])
def test_repadapter_rejects_a_bottleneck_that_two_groups_cannot_split(bottleneck):
    with pytest.raises(methods.MethodError, match="bottleneck"):
        methods.apply(tiny_vit(), "repadapter", bottleneck=bottleneck)


def test_repadapter_rejects_a_negative_scale():
    with pytest.raises(methods.MethodError, match="scale"):
        methods.apply(tiny_vit(), "repadapter", scale=-1.0)


@pytest.mark.parametrize("name", sorted(MERGEABLE))
def test_merging_twice_or_merging_a_plain_model_is_a_no_op(name):
    merge = methods.spec(name).merge
    plain = tiny_vit(num_classes=CLASSES)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    merge(plain)  # nothing attached: nothing to do
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())

    model = methods.apply(tiny_vit(num_classes=CLASSES), name, **MERGEABLE[name]).eval()
    perturb(model)
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    merge(model)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    merge(model)  # already merged: nothing to do
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    assert all(torch.equal(v, once[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ssf", "repadapter"])
def test_merging_a_shift_into_a_linear_without_bias_is_a_clear_error_that_changes_nothing(name):
    model = methods.apply(tiny_vit(qkv_bias=False), name, **MERGEABLE[name])
    perturb(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(methods.MethodError, match=r"blocks\.0\.attn\.qkv.*no bias"):
        methods.spec(name).merge(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
