"""convpass, fact_tt and fact_tk beyond the shared contract: where each attaches, its init, that
the convolution really mixes neighbouring patches, and that every FacT increment is the
documented product of the shared factors and the cores (checked against the official code's
operations, reshapes included)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vpeft import methods
from vpeft.methods.convpass import ConvpassAdapter, ConvpassBranch, quick_gelu
from vpeft.methods.fact_tt import FacTFactors, FacTLinear

from conftest import CLASSES, DEPTH, DIM, MLP, tiny_vit, perturb_trainable as perturb

GRID = 4  # the tiny ViT's 4x4 patch grid, after one CLS token
K = MLP // DIM


# ---------------------------------------------------------------------------------- convpass


def test_convpass_wraps_attention_and_mlp_with_the_published_init():
    model = methods.apply(tiny_vit(), "convpass", bottleneck=4)
    for block in model.blocks:
        for branch in (block.attn, block.mlp):
            assert isinstance(branch, ConvpassBranch)
            a = branch.adapter
            assert a.grid == (GRID, GRID) and a.num_prefix_tokens == 1
            assert a.conv.kernel_size == (3, 3) and a.conv.padding == (1, 1)
            assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
            assert torch.count_nonzero(a.down.bias) == 0 and torch.count_nonzero(a.conv.bias) == 0
            assert torch.count_nonzero(a.conv.weight[:, :, 0, 0]) > 0  # xavier: not just the centre
            assert a.dropout.p == 0.1
    assert type(model.blocks[0].attn.branch).__name__ == "Attention"
    assert type(model.blocks[0].mlp.branch).__name__ == "Mlp"


def test_convpass_identity_centre_init_when_not_xavier():
    adapter = ConvpassAdapter(DIM, 4, (GRID, GRID), 1, xavier_init=False)
    expected = torch.zeros(4, 4, 3, 3)
    expected[:, :, 1, 1] = torch.eye(4)
    assert torch.equal(adapter.conv.weight, expected)


def _adapter(seed: int = 0) -> ConvpassAdapter:
    torch.manual_seed(seed)
    adapter = ConvpassAdapter(DIM, 4, (GRID, GRID), num_prefix_tokens=1).eval()
    with torch.no_grad():  # a trained adapter: non-zero up and conv bias
        nn.init.normal_(adapter.up.weight)
        nn.init.normal_(adapter.conv.bias)
    return adapter


def test_convpass_conv_mixes_only_neighbouring_patches():
    adapter = _adapter()
    h = torch.randn(1, 1 + GRID * GRID, DIM)
    row, col = 1, 2
    moved = h.clone()
    moved[0, 1 + row * GRID + col] += torch.randn(DIM)  # one patch token's normed input
    changed = (adapter(moved) - adapter(h)).abs().amax(-1)[0] > 1e-6
    assert not changed[0]  # the CLS token does not see the patches
    for i in range(GRID):
        for j in range(GRID):
            near = abs(i - row) <= 1 and abs(j - col) <= 1
            assert changed[1 + i * GRID + j] == near, (i, j)


def test_convpass_handles_the_cls_token_alone_with_the_centre_tap():
    adapter = _adapter()
    h = torch.randn(2, 1 + GRID * GRID, DIM)
    moved = h.clone()
    moved[:, 0] += torch.randn(DIM)
    changed = (adapter(moved) - adapter(h)).abs().amax(-1) > 1e-6
    assert changed[:, 0].all() and not changed[:, 1:].any()
    # CLS as a 1x1 map: only the centre tap and the bias of the same conv act on it
    z = quick_gelu(adapter.down(h[:, 0]))
    z = z @ adapter.conv.weight[:, :, 1, 1].T + adapter.conv.bias
    torch.testing.assert_close(adapter(h)[:, 0], adapter.up(quick_gelu(z)))


def test_convpass_is_parallel_on_the_normed_input_of_both_branches_and_scaled():
    model = methods.apply(tiny_vit(), "convpass", bottleneck=4, scale=3.0).eval()
    perturb(model)
    block = model.blocks[0]
    x = torch.randn(2, 1 + GRID * GRID, DIM)
    for wrapper, norm in ((block.attn, block.norm1), (block.mlp, block.norm2)):
        h = norm(x)
        bypass = wrapper(h) - wrapper.branch(h)
        assert bypass.abs().max() > 1e-3
        torch.testing.assert_close(bypass, 3.0 * wrapper.adapter(h), rtol=1e-5, atol=1e-5)
    # the block adds both bypasses to the residual stream
    plain = x + block.attn.branch(block.norm1(x))
    plain = plain + block.mlp.branch(block.norm2(plain))
    assert (block(x) - plain).abs().max() > 1e-3
    # the scale multiplies the bypass linearly
    h = block.norm1(x)
    base = block.attn.branch(h)
    one = block.attn(h) - base
    block.attn.scale = 6.0
    torch.testing.assert_close(block.attn(h) - base, 2.0 * one, rtol=1e-5, atol=1e-5)


def test_convpass_rejects_tokens_that_do_not_fit_the_grid():
    adapter = _adapter()
    with pytest.raises(methods.MethodError, match="patch grid"):
        adapter(torch.randn(1, 10, DIM))


@pytest.mark.parametrize("hparams", [{"bottleneck": 0}, {"bottleneck": 2.5}, {"scale": -1.0},
                                     {"dropout": 1.0}, {"xavier_init": "yes"}])
def test_convpass_rejects_out_of_range_hyper_parameters(hparams):
    with pytest.raises(methods.MethodError):
        methods.apply(tiny_vit(), "convpass", **hparams)


# -------------------------------------------------------------------------------------- FacT

FACT = {"fact_tt": 4, "fact_tk": 4}


def _fact(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    model = methods.apply(tiny_vit(**overrides), name, dim=FACT[name], scale=2.0)
    perturb(model)
    return model.eval()


def _wrappers(model: nn.Module) -> list[FacTLinear]:
    return [m for m in model.modules() if isinstance(m, FacTLinear)]


@pytest.mark.parametrize("name", list(FACT))
def test_fact_factors_are_shared_by_every_layer_and_site(name):
    model = methods.apply(tiny_vit(), name, dim=4)
    factors = model.fact
    assert isinstance(factors, FacTFactors)
    wrappers = _wrappers(model)
    assert len(wrappers) == 4 * DEPTH
    for block in model.blocks:
        for site in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            assert isinstance(site, FacTLinear) and isinstance(site.base, nn.Linear)
    assert all(w.factors is factors for w in wrappers)
    assert {(w.layer, w.site) for w in wrappers} == {(layer, s) for layer in range(DEPTH)
                                                      for s in ("qkv", "proj", "fc1", "fc2")}
    # each shared tensor is registered (listed, counted, saved) once, under model.fact
    names = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert names == [f"fact.{n}" for n, _ in factors.named_parameters()]
    assert len(model.state_dict()) == len(tiny_vit().state_dict()) + len(names)
    assert torch.count_nonzero(factors.v) == 0 and torch.count_nonzero(factors.u) > 0
    assert all(w.dropout.p == 0.1 for w in wrappers)


def test_fact_parameter_count_does_not_grow_with_the_sites_sharing_u_and_v():
    r = 4
    for depth in (1, 3):
        model = methods.apply(tiny_vit(depth=depth), "fact_tt", dim=r)
        assert methods.count_trainable(model)["trainable_params"] == 2 * DIM * r + 12 * depth * r * r
        model = methods.apply(tiny_vit(depth=depth), "fact_tk", dim=r)
        assert methods.count_trainable(model)["trainable_params"] == 2 * DIM * r + r ** 3 + 12 * depth * r


def _official_tt(f, layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
    """The official FacT-TT forward of one site (cores as nn.Linear weights, eval mode)."""
    u = lambda t: t @ f.u.T
    v = lambda t: t @ f.v.T
    b, n, c = x.shape[0], x.shape[1], f.dim
    if site == "qkv":
        return torch.cat([v(u(x) @ f.attn_cores[layer, j].T) for j in range(3)], dim=2)
    if site == "proj":
        return v(u(x) @ f.attn_cores[layer, 3].T)
    if site == "fc1":
        return v((u(x) @ f.fc1_cores[layer].T).reshape(b, n, K, f.rank)).reshape(b, n, K * c)
    return v(u(x.reshape(b, n, K, c)).reshape(b, n, K * f.rank) @ f.fc2_cores[layer].T)


def _official_tk(f, layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
    """The official FacT-TK forward of one site (FacTc @ FacTp slices, eval mode)."""
    u = lambda t: t @ f.u.T
    v = lambda t: t @ f.v.T
    b, n, c, r = x.shape[0], x.shape[1], f.dim, f.rank
    start = 12 * layer
    attn = f.core_tensor @ f.coeffs[:, start:start + 4]
    mlp = f.core_tensor @ f.coeffs[:, start + 4:start + 12]
    if site == "qkv":
        return torch.cat([v(u(x) @ attn[:, :, j]) for j in range(3)], dim=2)
    if site == "proj":
        return v(u(x) @ attn[:, :, 3])
    if site == "fc1":
        fc1 = mlp[:, :, :4].reshape(r, r * 4)
        return v((u(x) @ fc1).reshape(b, n, 4, r)).reshape(b, n, 4 * c)
    fc2 = mlp[:, :, 4:].reshape(r, r * 4)
    return v(u(x.reshape(b, n, 4, c)).reshape(b, n, 4 * r) @ fc2.t())


@pytest.mark.parametrize("name,official", [("fact_tt", _official_tt), ("fact_tk", _official_tk)])
def test_fact_increment_is_the_documented_factor_product(name, official):
    model = _fact(name)
    f = model.fact
    layer = DEPTH - 1
    block = model.blocks[layer]
    for wrapper, width in ((block.attn.qkv, DIM), (block.attn.proj, DIM), (block.mlp.fc1, DIM),
                           (block.mlp.fc2, MLP)):
        x = torch.randn(2, 5, width)
        effect = wrapper(x) - wrapper.base(x)
        assert effect.abs().max() > 1e-3
        # the official code's operations, reshapes included
        torch.testing.assert_close(effect, 2.0 * official(f, layer, wrapper.site, x),
                                   rtol=1e-4, atol=1e-5)
        # the documented closed form s (I⊗V) M (I⊗U), written out with Kronecker products
        n_in, n_out = wrapper.n_in, wrapper.n_out
        delta = 2.0 * (torch.kron(torch.eye(n_out), f.v) @ f.core(layer, wrapper.site)
                       @ torch.kron(torch.eye(n_in), f.u))
        torch.testing.assert_close(effect, x @ delta.T, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(wrapper.delta_weight().float(), delta, rtol=1e-4, atol=1e-6)


def test_fact_tt_core_shapes_follow_the_official_linears():
    f = methods.apply(tiny_vit(), "fact_tt", dim=4).fact
    assert f.attn_cores.shape == (DEPTH, 4, 4, 4)  # q, k, v, proj: nn.Linear(r, r)
    assert f.fc1_cores.shape == (DEPTH, 4 * K, 4)  # nn.Linear(r, 4r)
    assert f.fc2_cores.shape == (DEPTH, 4, 4 * K)  # nn.Linear(4r, r)
    assert f.attn_cores.abs().max() <= 1 / 4 ** 0.5 and f.fc2_cores.abs().max() <= 1 / (4 * K) ** 0.5


def test_fact_tk_core_and_coefficients_follow_the_official_shapes():
    f = methods.apply(tiny_vit(), "fact_tk", dim=4).fact
    assert f.core_tensor.shape == (4, 4, 4) and f.coeffs.shape == (4, 12 * DEPTH)


@pytest.mark.parametrize("name", list(FACT))
def test_fact_dropout_acts_in_training_only(name):
    model = _fact(name)
    qkv = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(qkv(x), qkv(x))
    qkv.train()
    torch.manual_seed(0)
    first = qkv(x)
    assert not torch.allclose(first, qkv(x))


@pytest.mark.parametrize("name", list(FACT))
def test_fact_merge_removes_the_shared_factors_and_is_idempotent(name):
    model = _fact(name)
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    spec = methods.spec(name)
    spec.merge(model)
    assert not hasattr(model, "fact") and not _wrappers(model)
    spec.merge(model)  # nothing left to merge: unchanged
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(FACT))
def test_fact_supports_another_mlp_ratio(name):
    model = _fact(name, mlp_ratio=2.0)
    assert model.fact.ratio == 2
    r = FACT[name]
    per_layer = (4 + 2 * 2) * (r * r if name == "fact_tt" else r)
    shared = 2 * DIM * r + (r ** 3 if name == "fact_tk" else 0)
    assert methods.count_trainable(model)["trainable_params"] == shared + DEPTH * per_layer
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    methods.spec(name).merge(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(FACT))
def test_fact_rejects_an_mlp_not_cut_into_whole_chunks(name):
    with pytest.raises(methods.MethodError, match="multiple"):
        methods.apply(tiny_vit(mlp_ratio=2.5), name, dim=4)


@pytest.mark.parametrize("name", list(FACT))
@pytest.mark.parametrize("hparams", [{"dim": 0}, {"dim": 2.5}, {"scale": -0.1}, {"dropout": 1.0}])
def test_fact_rejects_out_of_range_hyper_parameters(name, hparams):
    with pytest.raises(methods.MethodError):
        methods.apply(tiny_vit(), name, **hparams)


@pytest.mark.parametrize("name", list(FACT))
def test_fact_cannot_be_attached_twice(name):
    model = methods.apply(tiny_vit(num_classes=CLASSES), name, dim=4)
    with pytest.raises(methods.MethodError, match="twice"):
        methods.apply(model, name, dim=4)
