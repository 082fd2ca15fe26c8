"""rsLoRA, DoRA, PiSSA and LoRA+: each starts at the base model, follows its formula, and trains."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilora import (LoRALinear, apply_lora, count_parameters, lora_layers, loraplus_param_groups,
                      merge_lora, unmerge_lora)
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]




def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=2, n_embd=32, n_head=2, block_size=16))


def tokens(seed=1):
    return torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(seed))


def train_losses(model, steps=20, lr=1e-2, optimizer=None):
    """Losses over steps of AdamW on one fixed batch (a tiny memorisation task)."""
    optimizer = optimizer or torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    x, y = tokens(5), tokens(6)
    losses = []
    for _ in range(steps):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("variant", [dict(), dict(rslora=True), dict(dora=True), dict(pissa=True)])
def test_variant_starts_at_the_base_model_and_trains(variant):
    base = tiny_gpt()
    model = apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, **variant)
    idx = tokens()
    if variant.get("pissa"):  # the principal part moved from W0 into B A: equal up to rounding
        torch.testing.assert_close(model(idx)[0], base(idx)[0], atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(model(idx)[0], base(idx)[0])
    losses = train_losses(model)
    assert losses[-1] < losses[0] - 0.1, losses


def test_rslora_scaling():
    model = apply_lora(tiny_gpt(), ["q_proj"], r=16, alpha=8, rslora=True)
    assert model.blocks[0].attn.q_proj.scaling == 8 / math.sqrt(16)


def dora_layer(seed=0):
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(16, 24), r=4, alpha=8, dora=True)
    with torch.no_grad():
        layer.lora_B.normal_(std=0.1)
        layer.get_adapter().magnitude.mul_(1.0 + 0.1 * torch.randn(24))
    return layer


def test_dora_magnitude_starts_at_the_row_norms_of_W0():
    layer = LoRALinear(nn.Linear(16, 24), r=4, alpha=8, dora=True)
    m = layer.get_adapter().magnitude
    assert m.shape == (24,)
    torch.testing.assert_close(m, layer.base.weight.norm(dim=1))
    assert count_parameters(layer).trainable == 4 * (16 + 24) + 24


def test_dora_follows_its_formula_with_the_norm_detached():
    layer = dora_layer()
    adapter = layer.get_adapter()
    x = torch.randn(5, 16, requires_grad=True)
    grad_y = torch.randn(5, 24)

    def reference(x):  # m * (W0 + s B A) x / ||W0 + s B A||_row + b, norm a constant (DoRA Sec. 4.3)
        weight = layer.base.weight + adapter.scaling * adapter.lora_B @ adapter.lora_A
        return adapter.magnitude / weight.norm(dim=1).detach() * F.linear(x, weight) + layer.base.bias

    results = []
    for fn in (layer, reference):
        for p in (x, adapter.lora_A, adapter.lora_B, adapter.magnitude):
            p.grad = None
        (fn(x) * grad_y).sum().backward()
        results.append([fn(x).detach()] + [p.grad.clone() for p in (x, adapter.lora_A, adapter.lora_B,
                                                                      adapter.magnitude)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dora_merge_and_unmerge():
    layer = dora_layer()
    x = torch.randn(5, 16)
    w0, y = layer.base.weight.detach().clone(), layer(x)
    layer.merge()
    assert torch.equal(layer(x), layer.base(x))
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)


def test_pissa_puts_the_principal_part_in_the_adapter():
    torch.manual_seed(0)
    linear = nn.Linear(16, 24)
    w0 = linear.weight.detach().clone()
    layer = LoRALinear(linear, r=4, alpha=8, pissa=True)
    U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
    principal = U[:, :4] @ torch.diag(S[:4]) @ Vh[:4]
    torch.testing.assert_close(layer.delta_weight(), principal, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight, w0 - principal, atol=1e-5, rtol=1e-5)
    # A = sqrt(S_r / s) V_r^T and B = U_r sqrt(S_r / s), up to the sign of each singular pair
    torch.testing.assert_close(layer.lora_A.norm(dim=1) ** 2, S[:4] / layer.scaling)
    merge_lora(nn.Sequential(layer))
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-5, rtol=1e-5)
    unmerge_lora(nn.Sequential(layer))


def test_pissa_must_be_a_layers_only_adapter():
    model = apply_lora(tiny_gpt(), ["q_proj"], r=4, alpha=8)
    with pytest.raises(ValueError, match="PiSSA changes the base weight"):
        apply_lora(model, ["q_proj"], r=4, alpha=8, pissa=True, adapter_name="p")


def test_loraplus_groups_have_the_right_learning_rates():
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, bias="lora_only")
    groups = loraplus_param_groups(model, lr=1e-3, ratio=16, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["lora_A"]["lr"] == 1e-3 and by_name["lora_B"]["lr"] == 16e-3
    assert by_name["lora_A"]["weight_decay"] == by_name["lora_B"]["weight_decay"] == 0.1
    assert by_name["other"]["weight_decay"] == 0.0 and by_name["other"]["lr"] == 1e-3  # the biases
    layers = lora_layers(model)
    assert {id(p) for p in by_name["lora_B"]["params"]} == {id(layer.lora_B) for _, layer in layers}
    assert {id(p) for p in by_name["lora_A"]["params"]} == {id(layer.lora_A) for _, layer in layers}
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    assert n_grouped == count_parameters(model).trainable
    losses = train_losses(model, optimizer=torch.optim.AdamW(groups))
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("kwargs, match", [(dict(lr=0), "lr must be a number > 0, got 0"),
                                           (dict(lr=1e-3, ratio=-1), "ratio must be a number > 0, got -1")])
def test_loraplus_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loraplus_param_groups(apply_lora(tiny_gpt(), ["q_proj"], r=2, alpha=4), **kwargs)
    with pytest.raises(ValueError, match="no trainable lora_A"):
        loraplus_param_groups(tiny_gpt(), lr=1e-3)


@pytest.mark.parametrize("r", [4, 16])
def test_rslora_is_lora_with_B_rate_sqrt_r_times_A_rate_under_adam(r):
    """With Adam and no weight decay, scaling the update by k = sqrt(r) (rsLoRA) trains exactly as
    plain LoRA whose B has k times A's learning rate (LoRA+ with ratio k): Adam's step ignores the
    gradient's size, and B starts at zero. So rsLoRA and LoRA+ turn the same knob."""
    torch.manual_seed(0)
    base = GPT(config_from_preset("tiny", n_layer=1, n_embd=32, n_head=2, block_size=8))
    x = torch.randint(0, 256, (4, 8))
    y = torch.randint(0, 256, (4, 8))
    losses = {}
    for name in ("rslora", "lora_b_faster"):
        model = copy.deepcopy(base)
        torch.manual_seed(1)  # the same A at init
        apply_lora(model, ["q_proj", "v_proj", "up_proj"], r=r, alpha=8, rslora=name == "rslora")
        ratio = 1.0 if name == "rslora" else math.sqrt(r)
        opt = torch.optim.Adam(loraplus_param_groups(model, lr=1e-2, ratio=ratio), eps=1e-12)
        losses[name] = []
        for _ in range(10):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["rslora"][-1] < losses["rslora"][0] - 0.01  # it trains
    torch.testing.assert_close(losses["rslora"], losses["lora_b_faster"], rtol=1e-4, atol=0)
