"""Several named adapters on one base: switching, trainability, and exact weighted combination."""
import copy

import pytest
import torch

from minilora import (add_adapter, add_weighted_adapter, adapter_names, apply_lora, lora_layers, merge_lora,
                      set_adapter, unmerge_lora)
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

TARGETS = ["q_proj", "v_proj", "up_proj"]




def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=2, n_embd=32, n_head=2, block_size=16))


def tokens(seed=1):
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(seed))


def two_adapter_model(seed=0):
    """A GPT with adapters "default" (r=4) and "other" (r=2), both with random nonzero B."""
    model = apply_lora(tiny_gpt(seed), TARGETS, r=4, alpha=8)
    add_adapter(model, "other", TARGETS, r=2, alpha=2)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for adapter in layer.adapters.values():
                adapter.lora_B.normal_(std=0.05)
    return model


def test_added_adapter_is_inactive_and_frozen_until_set():
    model = two_adapter_model()
    assert adapter_names(model) == ["default", "other"]
    layer = model.blocks[0].attn.q_proj
    assert layer.active_adapter == "default" and layer.lora_A.shape == (4, 32)
    assert not layer.adapters["other"].lora_A.requires_grad
    set_adapter(model, "other")
    assert layer.active_adapter == "other" and layer.lora_A.shape == (2, 32)  # lora_A follows the active one
    assert layer.adapters["other"].lora_A.requires_grad and not layer.adapters["default"].lora_A.requires_grad


def test_switching_changes_outputs_and_switching_back_restores_them_exactly():
    model = two_adapter_model()
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters() if ".base." in n}
    idx = tokens()
    y_default = model(idx)[0]
    set_adapter(model, "other")
    y_other = model(idx)[0]
    assert not torch.allclose(y_default, y_other)
    set_adapter(model, "default")
    assert torch.equal(model(idx)[0], y_default)
    assert all(torch.equal(p, base_weights[n]) for n, p in model.named_parameters() if ".base." in n)


def test_gradients_reach_only_the_active_adapter():
    model = two_adapter_model()
    set_adapter(model, "other")
    _, loss = model(tokens(), tokens(2))
    loss.backward()
    layer = model.blocks[0].attn.q_proj
    assert layer.adapters["other"].lora_A.grad is not None
    assert layer.adapters["default"].lora_A.grad is None


def test_weighted_adapter_is_the_weighted_sum_of_delta_W():
    model = two_adapter_model()
    add_weighted_adapter(model, ["default", "other"], [0.7, -0.3], "mix")
    for _, layer in lora_layers(model):
        expected = 0.7 * layer.delta_weight("default") - 0.3 * layer.delta_weight("other")
        torch.testing.assert_close(layer.delta_weight("mix"), expected, atol=1e-6, rtol=1e-5)
        assert layer.adapters["mix"].r == 6 and layer.adapters["mix"].scaling == 1.0
    # and in outputs: the mix equals merging 0.7 of one and -0.3 of the other into the base
    expected_model = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in lora_layers(expected_model):
            layer.base.weight += 0.7 * layer.delta_weight("default") - 0.3 * layer.delta_weight("other")
            layer.active_adapter = None
    set_adapter(model, "mix")
    torch.testing.assert_close(model(tokens())[0], expected_model(tokens())[0], atol=1e-5, rtol=1e-5)


def test_multi_adapter_errors_name_the_problem():
    model = two_adapter_model()
    with pytest.raises(ValueError, match=r"no adapter named 'nope'; the model's adapters: \['default', 'other'\]"):
        set_adapter(model, "nope")
    with pytest.raises(ValueError, match="already has an adapter named 'other'"):
        add_adapter(model, "other", TARGETS, r=2, alpha=2)
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\]"):
        add_weighted_adapter(model, ["default", "nope"], [1, 1], "mix")
    with pytest.raises(ValueError, match="weights must be a list of 2 numbers"):
        add_weighted_adapter(model, ["default", "other"], [1], "mix")
    with pytest.raises(ValueError, match="an adapter named 'other' already exists"):
        add_weighted_adapter(model, ["default"], [1], "other")
    with pytest.raises(ValueError, match="adapter name must be"):
        add_adapter(model, "a.b", TARGETS, r=2, alpha=2)
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        set_adapter(model, "other")
    unmerge_lora(model)


def test_adapters_on_different_layers():
    model = apply_lora(tiny_gpt(), ["q_proj"], r=4, alpha=8)
    add_adapter(model, "mlp", ["up_proj"], r=4, alpha=8)
    set_adapter(model, "mlp")  # q_proj has no "mlp" adapter: it computes its base function
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for adapter in layer.adapters.values():
                adapter.lora_B.normal_()
    base = tiny_gpt()
    with torch.no_grad():
        base.blocks[0].mlp.up_proj.weight += model.blocks[0].mlp.up_proj.delta_weight()
        base.blocks[1].mlp.up_proj.weight += model.blocks[1].mlp.up_proj.delta_weight()
    torch.testing.assert_close(model(tokens())[0], base(tokens())[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="combined adapters must sit on the same layers"):
        add_weighted_adapter(model, ["default", "mlp"], [1, 1], "mix")
