"""vpeft and Hugging Face peft: the same LoRA, and vpeft's LoRA exported in peft's format."""
from __future__ import annotations

import pytest
import torch

from vpeft import methods
from vpeft.export import export_peft_adapter
from vpeft.methods.hf_peft import import_peft

from conftest import CLASSES, tiny_vit


def _trained_vpeft_lora() -> torch.nn.Module:
    model = methods.apply(tiny_vit(num_classes=CLASSES), "lora", rank=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_vpeft_lora_equals_peft_lora_with_the_same_weights():
    vpeft_model = _trained_vpeft_lora()
    peft_model = methods.apply(tiny_vit(num_classes=CLASSES), "peft", tuner="lora", rank=4,
                               alpha=4, target=["qkv"]).eval()
    with torch.no_grad():
        for block_v, block_p in zip(vpeft_model.blocks, peft_model.blocks):
            block_p.attn.qkv.lora_A["default"].weight.copy_(block_v.attn.qkv.lora_a)
            block_p.attn.qkv.lora_B["default"].weight.copy_(block_v.attn.qkv.lora_b)
        peft_model.head.load_state_dict(vpeft_model.head.state_dict())
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(peft_model(x), vpeft_model(x), rtol=1e-5, atol=1e-5)
    assert methods.count_trainable(peft_model) == methods.count_trainable(vpeft_model)


def test_vpeft_lora_exports_to_a_peft_adapter_that_peft_loads(tmp_path):
    peft = import_peft()
    vpeft_model = _trained_vpeft_lora()
    out = export_peft_adapter(vpeft_model, tmp_path / "peft_adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    loaded = peft.PeftModel.from_pretrained(tiny_vit(num_classes=CLASSES), str(out)).eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(loaded(x), vpeft_model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tuner", ["dora", "rslora", "loha", "lokr"])
def test_other_peft_tuners_train_through_the_same_registry(tuner):
    # dropout 0: LoHa/LoKr's module dropout skips a whole layer at random, leaving it without grad
    model = methods.apply(tiny_vit(num_classes=CLASSES), "peft", tuner=tuner, rank=2, dropout=0.0)
    counts = methods.count_trainable(model)
    assert 0 < counts["trainable_params"] < counts["total_params"]
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_tuner_lists_the_allowed_ones():
    with pytest.raises(methods.MethodError, match="allowed: .*dora"):
        methods.apply(tiny_vit(), "peft", tuner="adalora")
