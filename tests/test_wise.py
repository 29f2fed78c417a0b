"""WiSE-FT for every registered method: the endpoints are the zero-shot and the fine-tuned model
exactly (bitwise: at α = 0 / 1 the mixed model runs the very same operations on the very same
tensors), and in between the method's contribution is scaled by α, not its parameters."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vpeft import methods
from vpeft.robustness.wise import ALPHAS, AlphaMix, WiseError, prepare_wise
from vpeft.models.zeroshot_head import ZeroShotHead, install_head

from conftest import DIM, perturb_trainable, tiny_vit
from test_method_contract import SMALL_HPARAMS

EMBED, CLASSES = 8, 6


def _zero_shot_model() -> nn.Module:
    model = tiny_vit(num_classes=CLASSES)
    g = torch.Generator().manual_seed(3)
    head = ZeroShotHead.from_tensors(torch.randn(EMBED, DIM, generator=g),
                                     10 * torch.randn(CLASSES, EMBED, generator=g))
    return install_head(model, head).eval()


def _fine_tuned_state(name: str) -> dict[str, torch.Tensor]:
    """A 'fine-tuned' checkpoint: the method attached, every trainable tensor moved off its init."""
    model = _zero_shot_model()
    torch.manual_seed(1)
    methods.apply(model, name, **SMALL_HPARAMS[name])
    perturb_trainable(model, seed=2, std=0.1)
    return methods.trainable_state(model), model


def _load(name: str, state: dict[str, torch.Tensor]):
    def attach(model: nn.Module) -> None:
        torch.manual_seed(1)
        methods.apply(model, name, **SMALL_HPARAMS[name])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)
    return attach


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", methods.names())
def test_endpoints_reproduce_zero_shot_and_fine_tuned_bitwise(name, images):
    state, tuned_model = _fine_tuned_state(name)
    with torch.no_grad():
        zero_logits = _zero_shot_model()(images)
        tuned_logits = tuned_model.eval()(images)
    assert not torch.equal(zero_logits, tuned_logits)  # the endpoints differ: the test can fail
    wise = prepare_wise(_zero_shot_model(), _load(name, state))
    wise.model.eval()
    with torch.no_grad():
        at = {a: wise.set_alpha(a)(images) for a in (0.0, 0.5, 1.0, 0.0)}
    assert torch.equal(at[0.0], zero_logits)
    assert torch.equal(at[1.0], tuned_logits)
    assert not torch.equal(at[0.5], zero_logits) and not torch.equal(at[0.5], tuned_logits)
    assert wise.changed_tensors >= 1  # at least the head


def test_whole_state_methods_interpolate_every_tensor(images):
    state, tuned_model = _fine_tuned_state("full")
    zero = _zero_shot_model()
    expected = _zero_shot_model()
    with torch.no_grad():
        tuned_by_name = dict(tuned_model.named_parameters())
        for key, p in expected.named_parameters():
            p.copy_(0.7 * dict(zero.named_parameters())[key] + 0.3 * tuned_by_name[key])
    wise = prepare_wise(_zero_shot_model(), _load("full", state))
    assert wise.sites == []
    with torch.no_grad():
        torch.testing.assert_close(wise.set_alpha(0.3).eval()(images), expected(images),
                                   rtol=1e-5, atol=1e-5)


def test_added_modules_scale_their_output_not_their_parameters(images):
    """Adapter: the bottleneck's output (after ReLU) is scaled by α. Scaling only the zero-init
    up-projection does exactly that; interpolating all adapter parameters toward zero does not."""
    state, _ = _fine_tuned_state("adapter")
    alpha = 0.4

    def scaled(model: nn.Module, which: tuple[str, ...]) -> None:
        _load("adapter", state)(model)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if any(f"adapter.{w}" in key for w in which):
                    p.mul_(alpha)
                if key.startswith("head."):  # the head is interpolated as a whole-state tensor
                    p.copy_((1 - alpha) * dict(_zero_shot_model().named_parameters())[key] + alpha * p)

    up_only, everything = _zero_shot_model(), _zero_shot_model()
    scaled(up_only, ("up",))
    scaled(everything, ("up", "down"))
    wise = prepare_wise(_zero_shot_model(), _load("adapter", state))
    assert len(wise.sites) == 2 * 2 and all(isinstance(s, AlphaMix) for s in wise.sites)
    with torch.no_grad():
        mixed = wise.set_alpha(alpha).eval()(images)
        torch.testing.assert_close(mixed, up_only.eval()(images), rtol=1e-5, atol=1e-5)
        assert (mixed - everything.eval()(images)).abs().max() > 1e-3


def test_alpha_grid_is_the_studys():
    assert ALPHAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_a_method_that_adds_a_bare_parameter_is_refused():
    def sneaky(model: nn.Module) -> None:
        model.blocks[0].norm1.register_parameter("extra", nn.Parameter(torch.zeros(DIM)))

    with pytest.raises(WiseError, match="directly on"):
        prepare_wise(_zero_shot_model(), sneaky)
