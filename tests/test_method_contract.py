"""The contract every registered method keeps, checked on a tiny timm ViT.

Per-method facts (small hyper-parameters for the tests, the closed-form trainable-parameter count)
live in ``CASES`` below and in ``tests/method_cases_*.py`` files (each defines ``CASES``); a method
missing from them fails the suite, so a new method cannot land untested.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from vpeft import methods

from conftest import CLASSES, DEPTH, DIM, MLP, perturb_trainable, tiny_vit


def _all_params() -> int:
    return sum(p.numel() for p in tiny_vit(num_classes=CLASSES).parameters()) - (DIM * CLASSES + CLASSES)


# name -> (small hyper-parameters for the tests, closed-form trainable parameters without head)
CASES: dict[str, tuple[dict[str, Any], Callable[[], int]]] = {
    "linear": ({}, lambda: 0),
    "full": ({}, _all_params),
    # per block: qkv 3D + proj D + fc1 MLP + fc2 D + 2 LayerNorms 2D; patch embed D; final norm D
    "bitfit": ({}, lambda: DEPTH * (3 * DIM + DIM + MLP + DIM + 2 * DIM) + DIM + DIM),
    "lora": ({"rank": 4}, lambda: DEPTH * 4 * (DIM + 3 * DIM)),
}
for _file in sorted(Path(__file__).parent.glob("method_cases_*.py")):
    _spec = importlib.util.spec_from_file_location(_file.stem, _file)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    CASES.update(_module.CASES)

SMALL_HPARAMS = {name: case[0] for name, case in CASES.items()}
EXPECTED_TRAINABLE = {name: case[1] for name, case in CASES.items()}

ALL = methods.names()


def _attached(name: str, seed: int = 0) -> nn.Module:
    model = tiny_vit(num_classes=CLASSES)
    torch.manual_seed(seed)
    return methods.apply(model, name, **SMALL_HPARAMS[name])


def _perturb_method_parameters(model: nn.Module) -> None:
    perturb_trainable(model, std=0.05)


def test_every_method_is_covered_by_these_tables():
    assert set(ALL) == set(SMALL_HPARAMS) == set(EXPECTED_TRAINABLE)


@pytest.mark.parametrize("name", ALL)
def test_trainable_parameters_match_the_closed_form(name):
    counts = methods.count_trainable(_attached(name))
    assert counts["trainable_params"] == EXPECTED_TRAINABLE[name]()
    assert counts["trainable_params_with_head"] == counts["trainable_params"] + DIM * CLASSES + CLASSES


@pytest.mark.parametrize("name", ALL)
def test_a_training_step_changes_only_the_method_and_the_head(name):
    model = _attached(name)
    _perturb_method_parameters(model)  # zero-init factors would otherwise block gradients
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.arange(4))
    loss.backward()
    opt.step()
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert torch.equal(params[n], before), f"{name}: frozen {n} changed"
    changed = [n for n, before in trainable.items() if not torch.equal(params[n], before)]
    assert "head.weight" in changed
    if name != "linear":
        assert any(not n.startswith("head.") for n in changed), f"{name}: no method parameter learned"


@pytest.mark.parametrize("name", [n for n in ALL if methods.spec(n).identity_at_init])
def test_published_init_preserves_the_pretrained_function(name):
    reference = tiny_vit(num_classes=CLASSES).eval()
    model = _attached(name).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in ALL if methods.spec(n).public_linears])
def test_the_declared_public_linears_are_trainable_tensors_the_method_attaches(name):
    """A method's as-published initialisation (``public_linears``, redrawn with
    ``train.protocol.redraw_added_linears``) names modules it attaches and tensors it trains."""
    model = _attached(name)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for cls, attrs in methods.spec(name).public_linears.items():
        found = [m for m in model.modules() if type(m) is cls]
        assert found, f"{name}: declares {cls.__name__}, which it does not attach"
        for module in found:
            for attr in attrs:
                target = getattr(module, attr)
                weight = target.weight if isinstance(target, nn.Linear) else target
                assert isinstance(weight, nn.Parameter) and id(weight) in trainable, (cls, attr)


@pytest.mark.parametrize("name", ALL)
def test_adapter_save_and_load_onto_a_fresh_backbone(name, tmp_path):
    model = _attached(name)
    _perturb_method_parameters(model)
    path = tmp_path / "adapter.safetensors"
    methods.save_adapter(model, path)
    restored = methods.load_adapter(tiny_vit(num_classes=CLASSES), path)
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(restored.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert (tmp_path / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", [n for n in ALL if methods.spec(n).merge is not None])
def test_merging_gives_a_plain_timm_model_with_the_same_outputs(name):
    model = _attached(name).eval()
    _perturb_method_parameters(model)
    x = torch.randn(3, 3, 16, 16)
    expected = model(x)
    methods.spec(name).merge(model)
    plain = tiny_vit(num_classes=CLASSES)
    assert [type(m) for m in model.modules()] == [type(m) for m in plain.modules()]
    plain.load_state_dict(model.state_dict())  # strict: exactly timm's own tensors
    torch.testing.assert_close(plain.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_loading_an_adapter_of_another_width_is_a_clear_error(tmp_path):
    path = tmp_path / "adapter.safetensors"
    methods.save_adapter(_attached("lora"), path)
    with pytest.raises(methods.MethodError, match="shape mismatch|does not fit"):
        methods.load_adapter(tiny_vit(num_classes=CLASSES, embed_dim=64), path)
