"""vpt_shallow, vpt_deep, adapter, pfeiffer and adaptformer beyond the shared contract.

VPT: the prompts are in the sequence at every block they should be (hooks on every block's
input), deep prompts are block-specific, and after the blocks the token layout is the original one
(so 'token' and 'avg' pooling, registers included, see the right tokens) -- checked against a
hand-written forward. Adapters: where each one attaches (in series after a branch vs parallel to
the MLP, before/after LayerScale and drop-path), checked numerically against the published
formula computed from the block's own submodules.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from vpeft import methods
from vpeft.methods.adapter import Bottleneck, SequentialAdapter
from vpeft.methods.adaptformer import AdaptFormerBlock
from vpeft.methods.vpt_shallow import PromptedBlocks

from conftest import CLASSES, DEPTH, DIM, REPO, tiny_vit, perturb_trainable as perturb

P = 3         # prompt tokens in the tests
N = 1 + 16    # CLS + 4x4 patches of the tiny ViT
S = 2.0       # adapter scale in the tests


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: intra-op threads only add contention (x50 slower on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def block_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every timm block during one forward of ``model``."""
    seen: list[torch.Tensor] = []
    blocks = model.blocks.blocks
    handles = [b.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
               for b in blocks]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def reference_vpt(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """VPT written out by hand with timm's own pieces: embed, insert/replace prompts, blocks,
    drop prompts, norm, pool, head (eval mode: no prompt dropout)."""
    wrapper: PromptedBlocks = model.blocks
    n, p = model.num_prefix_tokens, wrapper.prompts.shape[1]
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    prompts = wrapper.prompts.unsqueeze(1).expand(-1, x.shape[0], -1, -1)  # (sets, B, p, D)
    h = torch.cat([h[:, :n], prompts[0], h[:, n:]], dim=1)
    for i, block in enumerate(wrapper.blocks):
        if i > 0 and prompts.shape[0] > 1:
            h = torch.cat([h[:, :n], prompts[i], h[:, n + p:]], dim=1)
        h = block(h)
    h = model.norm(torch.cat([h[:, :n], h[:, n + p:]], dim=1))
    if model.global_pool == "avg":
        pooled = h[:, n:].mean(dim=1)
    else:
        pooled = h[:, 0]
    return model.head(model.fc_norm(pooled))


# --------------------------------------------------------------------------------------- VPT


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_vpt_prompts_are_in_the_sequence_at_every_block(name):
    model = methods.apply(tiny_vit(), name, num_prompts=P).eval()
    assert isinstance(model.blocks, PromptedBlocks)
    inputs = block_inputs(model, images())
    assert [t.shape[1] for t in inputs] == [N + P] * DEPTH
    prompts = model.blocks.prompts
    assert prompts.shape == ((1 if name == "vpt_shallow" else DEPTH), P, DIM)
    # block 0 sees the (first) prompt set right after CLS, the patches after them
    assert torch.equal(inputs[0][:, 1:1 + P], prompts[0].expand(2, -1, -1))
    assert model.forward_features(images()).shape == (2, N, DIM)  # prompts removed after the blocks


def test_vpt_deep_block_i_sees_its_own_prompts():
    model = methods.apply(tiny_vit(), "vpt_deep", num_prompts=P).eval()
    perturb(model)
    inputs = block_inputs(model, images())
    for i, seen in enumerate(inputs):
        assert torch.equal(seen[:, 1:1 + P], model.blocks.prompts[i].expand(2, -1, -1)), i
    # the tokens outside the prompt positions are the previous block's outputs, not replaced
    out0 = model.blocks.blocks[0](inputs[0])
    torch.testing.assert_close(inputs[1][:, :1], out0[:, :1], rtol=0, atol=0)
    torch.testing.assert_close(inputs[1][:, 1 + P:], out0[:, 1 + P:], rtol=0, atol=0)


def test_vpt_shallow_prompts_are_carried_not_replaced():
    model = methods.apply(tiny_vit(), "vpt_shallow", num_prompts=P).eval()
    inputs = block_inputs(model, images())
    out0 = model.blocks.blocks[0](inputs[0])
    torch.testing.assert_close(inputs[1], out0, rtol=0, atol=0)  # block 1 sees block 0's prompts


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_every_prompt_set_changes_the_output(name):
    model = methods.apply(tiny_vit(), name, num_prompts=P).eval()
    x = images()
    before = model(x)
    # a random change (a constant shift of a token would be invisible behind LayerNorm)
    delta = torch.randn(P, DIM, generator=torch.Generator().manual_seed(3))
    for k in range(model.blocks.prompts.shape[0]):  # deep: the last block's prompts too
        with torch.no_grad():
            model.blocks.prompts[k].add_(delta)
            after = model(x)
            model.blocks.prompts[k].sub_(delta)
        assert not torch.allclose(after, before), f"{name}: prompt set {k} has no effect"


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
@pytest.mark.parametrize("vit_kwargs", [{}, {"global_pool": "avg", "class_token": True},
                                        {"reg_tokens": 2}, {"global_pool": "avg", "reg_tokens": 2}],
                         ids=["token", "avg", "token-registers", "avg-registers"])
def test_vpt_matches_a_hand_written_forward(name, vit_kwargs):
    model = methods.apply(tiny_vit(**vit_kwargs), name, num_prompts=P).eval()
    perturb(model)
    x = images()
    torch.testing.assert_close(model(x), reference_vpt(model, x), rtol=1e-6, atol=1e-6)
    prefix = model.num_prefix_tokens
    inputs = block_inputs(model, x)
    # the prompts go after every prefix token (CLS and registers), before the patches
    assert torch.equal(inputs[0][:, prefix:prefix + P], model.blocks.prompts[0].expand(2, -1, -1))
    assert model.forward_features(x).shape == (2, prefix + 16, DIM)


def test_vpt_init_and_dropout_follow_vpt():
    model = methods.apply(tiny_vit(), "vpt_deep", num_prompts=50)
    bound = math.sqrt(6.0 / (3 * 4 * 4 + DIM))  # xavier on the patch embedding's fan
    prompts = model.blocks.prompts
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    assert model.blocks.dropout.p == 0.1
    # train mode: an independent dropout mask per sample
    model.train()
    first = block_inputs(model, images(batch=2))[0][:, 1:1 + 50]
    assert not torch.equal(first[0], first[1])


# ---------------------------------------------------------------------------------- adapters


def _adapted(name: str, **vit_kwargs) -> nn.Module:
    model = methods.apply(tiny_vit(**vit_kwargs), name, bottleneck=4, scale=S).eval()
    perturb(model)
    return model


def _bottleneck(adapter: Bottleneck, h: torch.Tensor) -> torch.Tensor:
    """``up(relu(down(h)))`` written out (eval: no dropout)."""
    return nn.functional.linear(torch.relu(nn.functional.linear(h, adapter.down.weight,
                                                                 adapter.down.bias)),
                                adapter.up.weight, adapter.up.bias)


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, N, DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["adapter", "pfeiffer", "adaptformer"])
def test_adapters_start_with_a_zero_up_projection(name):
    model = methods.apply(tiny_vit(), name, bottleneck=4)
    adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(adapters) == DEPTH * (2 if name == "adapter" else 1)
    for a in adapters:
        assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
        assert torch.count_nonzero(a.down.bias) == 0 and torch.count_nonzero(a.down.weight) > 0
        assert isinstance(a.act, nn.ReLU) and a.dropout.p == 0.1
    down = torch.cat([a.down.weight.flatten() for a in adapters])
    kaiming = 1.0 / math.sqrt(DIM)  # kaiming-uniform a=sqrt(5) bound: 1/sqrt(fan_in)
    if name == "adaptformer":
        assert down.abs().max() <= kaiming
    else:  # xavier bound sqrt(6/(D+b)) is ~2.3x wider: some weights fall outside kaiming's
        assert down.abs().max() <= math.sqrt(6.0 / (DIM + 4)) and down.abs().max() > kaiming


@pytest.mark.parametrize("vit_kwargs", [{}, {"init_values": 0.5}], ids=["plain", "layerscale"])
def test_adapter_is_in_series_after_attention_and_mlp(vit_kwargs):
    model = _adapted("adapter", **vit_kwargs)
    for block in model.blocks:
        assert isinstance(block.ls1, SequentialAdapter) and isinstance(block.ls2, SequentialAdapter)
        x = _tokens()
        a = block.attn(block.norm1(x))
        x1 = x + block.ls1.base(a + S * _bottleneck(block.ls1.adapter, a))
        m = block.mlp(block.norm2(x1))
        expected = x1 + block.ls2.base(m + S * _bottleneck(block.ls2.adapter, m))
        torch.testing.assert_close(block(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vit_kwargs", [{}, {"init_values": 0.5}], ids=["plain", "layerscale"])
def test_pfeiffer_is_in_series_after_the_mlp_only(vit_kwargs):
    model = _adapted("pfeiffer", **vit_kwargs)
    for block in model.blocks:
        assert not isinstance(block.ls1, SequentialAdapter)
        assert isinstance(block.ls2, SequentialAdapter)
        x = _tokens()
        x1 = x + block.ls1(block.attn(block.norm1(x)))
        m = block.mlp(block.norm2(x1))
        expected = x1 + block.ls2.base(m + S * _bottleneck(block.ls2.adapter, m))
        torch.testing.assert_close(block(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vit_kwargs", [{}, {"init_values": 0.5}], ids=["plain", "layerscale"])
def test_adaptformer_is_parallel_to_the_mlp_on_the_residual_stream(vit_kwargs):
    model = _adapted("adaptformer", **vit_kwargs)
    for wrapper in model.blocks:
        assert isinstance(wrapper, AdaptFormerBlock)
        block = wrapper.block
        x = _tokens()
        x1 = x + block.ls1(block.attn(block.norm1(x)))
        expected = x1 + block.ls2(block.mlp(block.norm2(x1))) + S * _bottleneck(wrapper.adapter, x1)
        torch.testing.assert_close(wrapper(x), expected, rtol=1e-6, atol=1e-6)


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_adaptformer_term_is_outside_the_mlp_drop_path():
    """With the MLP's drop-path dropping everything, the adapter term must remain."""
    model = _adapted("adaptformer")
    wrapper = model.blocks[0]
    block = wrapper.block
    block.drop_path2 = _Zero()
    x = _tokens()
    x1 = x + block.ls1(block.attn(block.norm1(x)))
    torch.testing.assert_close(wrapper(x), x1 + S * _bottleneck(wrapper.adapter, x1),
                               rtol=1e-6, atol=1e-6)


def test_adaptformer_refuses_blocks_that_override_forward():
    from timm.models.vision_transformer import Block

    class OddBlock(Block):
        def forward(self, x, attn_mask=None, is_causal=False):
            return x

    model = tiny_vit()
    model.blocks[1].__class__ = OddBlock
    with pytest.raises(methods.MethodError, match="overrides Block.forward"):
        methods.apply(model, "adaptformer", bottleneck=4)


# ------------------------------------------------------------------------ configs and grids


@pytest.mark.parametrize("name, hparams", [
    ("vpt_shallow", {"num_prompts": 0}), ("vpt_deep", {"num_prompts": 2.5}),
    ("vpt_deep", {"dropout": 1.0}), ("adapter", {"bottleneck": 0}),
    ("pfeiffer", {"scale": -1.0}), ("adaptformer", {"dropout": -0.1}),
    ("adaptformer", {"bottleneck": True}),
])
def test_out_of_range_hyper_parameters_are_refused(name, hparams):
    with pytest.raises(methods.MethodError, match="out of range"):
        methods.make_config(name, **hparams)


@pytest.mark.parametrize("name, grid", [
    ("vpt_shallow", {"num_prompts": [5, 10, 50, 100, 200], "dropout": 0.1}),
    ("vpt_deep", {"num_prompts": [5, 10, 50, 100], "dropout": 0.1}),
    ("adapter", {"bottleneck": [4, 8, 16, 32], "scale": [0.01, 0.1, 1.0, 10.0], "dropout": 0.1}),
    ("pfeiffer", {"bottleneck": [4, 8, 16, 32, 64], "scale": [0.01, 0.1, 1.0, 10.0],
                  "dropout": 0.1}),
    ("adaptformer", {"bottleneck": [4, 16, 32], "scale": [0.05, 0.1, 0.2], "dropout": 0.1}),
])
def test_paper_grids(name, grid):
    data = yaml.safe_load(Path(REPO, "params", "method", f"{name}.yaml").read_text())
    assert data["name"] == name and data["hparams"] == grid
    assert data["optim"] == {"lr": [1.0e-3, 1.0e-2], "weight_decay": [1.0e-4, 1.0e-3]}
    for key, value in grid.items():  # every grid point is a valid config
        for v in (value if isinstance(value, list) else [value]):
            methods.make_config(name, **{key: v})


def test_methods_are_registered_with_their_contract_flags():
    for name in ("vpt_shallow", "vpt_deep"):
        assert methods.spec(name).identity_at_init is False and methods.spec(name).merge is None
    for name in ("adapter", "pfeiffer", "adaptformer"):
        assert methods.spec(name).identity_at_init is True and methods.spec(name).merge is None
    assert CLASSES == 5  # the tiny ViT of conftest the counts in method_cases_* assume
