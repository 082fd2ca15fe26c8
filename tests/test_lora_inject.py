"""apply_lora on a GPT and on a plain MLP, and the whole-model operations."""
import copy

import pytest
import torch
import torch.nn as nn

from minilora import (LoRAEmbedding, LoRALayer, LoRALinear, apply_lora, count_parameters, disable_lora,
                      lora_layers, lora_summary, merge_lora, unload_lora, unmerge_lora)
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

BLOCK_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]




def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_embd=32, n_head=2, block_size=16)
    settings.update(overrides)
    return GPT(config_from_preset("tiny", **settings))


def tokens(seed=1, batch=3):
    return torch.randint(0, 256, (batch, 16), generator=torch.Generator().manual_seed(seed))


def randomize_B(model):
    """Nonzero B everywhere, as after training, so that adapters change outputs."""
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_(std=0.05)
    return model


def test_gpt_starts_exactly_equal_to_base():
    base = tiny_gpt()
    model = apply_lora(copy.deepcopy(base), BLOCK_LINEARS, r=4, alpha=8)
    idx = tokens()
    assert torch.equal(model(idx)[0], base(idx)[0])


def test_targets_by_short_name_dotted_suffix_full_name_and_regex():
    def adapted(targets):
        return [n for n, _ in lora_layers(apply_lora(tiny_gpt(), targets, r=2, alpha=4))]
    q_and_v = ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj", "blocks.1.attn.q_proj", "blocks.1.attn.v_proj"]
    assert adapted(["q_proj", "v_proj"]) == q_and_v
    assert adapted(["attn.q_proj", "attn.v_proj"]) == q_and_v
    assert adapted(r".*\.(q|v)_proj") == q_and_v
    assert adapted(["blocks.1.mlp.up_proj"]) == ["blocks.1.mlp.up_proj"]


def test_all_linear_leaves_out_the_output_head():
    model = apply_lora(tiny_gpt(), "all-linear", r=2, alpha=4)
    assert len(lora_layers(model)) == 2 * 6
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.wte.weight  # the tie survives


def test_trainable_count_is_r_times_in_plus_out_per_layer():
    model = apply_lora(tiny_gpt(), BLOCK_LINEARS, r=4, alpha=8)
    C = 32
    per_block = 4 * 4 * (C + C) + 4 * (C + 4 * C) + 4 * (4 * C + C)  # q k v o, up, down
    trainable, total, percent = count_parameters(model)
    assert trainable == 2 * per_block
    base_total = sum(p.numel() for p in tiny_gpt().parameters())  # tied lm_head counted once
    assert total == base_total + trainable
    assert percent == pytest.approx(100 * trainable / total)


def test_everything_else_frozen_and_only_adapters_get_gradients():
    model = apply_lora(tiny_gpt(), ["q_proj", "v_proj"], r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    _, loss = model(tokens(), tokens(2))
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_bias_modes(bias):
    model = apply_lora(tiny_gpt(), ["q_proj"], r=2, alpha=4, bias=bias)
    trainable_biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")}
    if bias == "lora_only":
        assert trainable_biases == {"blocks.0.attn.q_proj.base.bias", "blocks.1.attn.q_proj.base.bias"}
    else:
        assert "blocks.0.ln_1.bias" in trainable_biases and "blocks.0.mlp.up_proj.bias" in trainable_biases
    _, loss = model(tokens(), tokens(2))
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable_biases)


def test_target_matching_nothing_is_a_clear_error():
    model = tiny_gpt()
    with pytest.raises(ValueError, match=r"target 'qproj' matches no module.*'q_proj'"):
        apply_lora(model, ["q_proj", "qproj"], r=2, alpha=4)
    with pytest.raises(ValueError, match="'q_proj' matches no module: a single string is a regular expression"):
        apply_lora(model, "q_proj", r=2, alpha=4)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        apply_lora(model, "q_proj[", r=2, alpha=4)
    assert not lora_layers(model)  # nothing was changed


def test_target_that_is_not_a_linear_is_a_clear_error():
    with pytest.raises(ValueError, match="'attn' matches 'blocks.0.attn', which is a CausalSelfAttention"):
        apply_lora(tiny_gpt(), ["attn"], r=2, alpha=4)


@pytest.mark.parametrize("targets", [5, [""], ["q_proj", 3], None])  # [] is a ValueError: test_lora_config.py
def test_bad_targets_type_is_a_clear_error(targets):
    with pytest.raises(TypeError, match="targets must be"):
        apply_lora(tiny_gpt(), targets, r=2, alpha=4)


def test_applying_twice_is_an_error():
    model = apply_lora(tiny_gpt(), ["q_proj"], r=2, alpha=4)
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        apply_lora(model, ["q_proj"], r=2, alpha=4)
    assert all(len(layer.adapters) == 1 for _, layer in lora_layers(model))


def test_tied_output_head_is_refused():
    with pytest.raises(ValueError, match=r"'lm_head'.weight is the same tensor as 'wte'.weight \(tied"):
        apply_lora(tiny_gpt(), ["lm_head"], r=2, alpha=4)
    with pytest.raises(ValueError, match="tied"):
        apply_lora(tiny_gpt(), ["wte"], r=2, alpha=4)


@pytest.mark.parametrize("r, match", [(0, "r=0"), (-1, "r=-1"), (33, r"r=33 .*'blocks.0.attn.q_proj'.*1\.\.32")])
def test_bad_rank_is_a_clear_error_and_changes_nothing(r, match):
    model = tiny_gpt()
    with pytest.raises(ValueError, match=match):
        apply_lora(model, ["q_proj", "up_proj"], r=r, alpha=4)
    assert not lora_layers(model)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(alpha=0), ValueError, "got 0"), (dict(alpha="8"), TypeError, "got '8'"),
    (dict(dropout=-0.1), ValueError, "got -0.1"), (dict(bias="some"), ValueError, r"bias must be one of \['none'"),
])
def test_bad_hyperparameters_are_clear_errors(kwargs, error, match):
    args = dict(r=2, alpha=4) | kwargs
    with pytest.raises(error, match=match):
        apply_lora(tiny_gpt(), ["q_proj"], **args)


def test_untied_embedding_can_be_adapted():
    base = tiny_gpt(tie_weights=False)
    model = apply_lora(copy.deepcopy(base), ["wte", "q_proj"], r=4, alpha=8)
    assert isinstance(model.wte, LoRAEmbedding)
    idx = tokens()
    assert torch.equal(model(idx)[0], base(idx)[0])
    with pytest.raises(ValueError, match="'wte' is an nn.Embedding: dropout"):
        apply_lora(copy.deepcopy(base), ["wte"], r=4, alpha=8, dropout=0.1)


def test_plain_mlp_learns_with_lora():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    before = ((mlp(x) - y) ** 2).mean().item()
    apply_lora(mlp, ["0", "2"], r=2, alpha=4)
    assert isinstance(mlp[0], LoRALinear) and isinstance(mlp[2], LoRALinear)
    assert count_parameters(mlp).trainable == 2 * (8 + 32) + 2 * (32 + 4)
    opt = torch.optim.Adam([p for p in mlp.parameters() if p.requires_grad], lr=3e-2)
    for _ in range(20):
        loss = ((mlp(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < before


def test_merge_lora_and_unmerge_lora():
    model = randomize_B(apply_lora(tiny_gpt(), BLOCK_LINEARS, r=4, alpha=8))
    idx = tokens()
    y = model(idx)[0]
    merge_lora(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(model(idx)[0], y, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    torch.testing.assert_close(model(idx)[0], y, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="nothing to unmerge"):
        unmerge_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"):
        merge_lora(tiny_gpt())


def test_disable_lora_gives_base_outputs_and_restores():
    base = tiny_gpt()
    model = randomize_B(apply_lora(copy.deepcopy(base), BLOCK_LINEARS, r=4, alpha=8))
    idx = tokens()
    y_base, y_lora = base(idx)[0], model(idx)[0]
    assert not torch.equal(y_base, y_lora)
    with disable_lora(model):
        assert torch.equal(model(idx)[0], y_base)
    assert torch.equal(model(idx)[0], y_lora)
    with pytest.raises(KeyError):
        with disable_lora(model):
            raise KeyError("boom")
    assert torch.equal(model(idx)[0], y_lora)  # restored after an exception too
    merge_lora(model)
    with disable_lora(model):
        torch.testing.assert_close(model(idx)[0], y_base, atol=1e-5, rtol=1e-5)
    assert all(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(model(idx)[0], y_lora, atol=1e-5, rtol=1e-5)


def test_unload_lora_returns_plain_linears_with_merged_outputs():
    model = randomize_B(apply_lora(tiny_gpt(), BLOCK_LINEARS, r=4, alpha=8))
    idx = tokens()
    y = model(idx)[0]
    plain = unload_lora(model)
    assert not any(isinstance(m, LoRALayer) for m in plain.modules())
    assert type(plain.blocks[0].attn.q_proj) is nn.Linear
    torch.testing.assert_close(plain(idx)[0], y, atol=1e-5, rtol=1e-5)


def test_train_and_eval_change_nothing():
    model = randomize_B(apply_lora(tiny_gpt(), BLOCK_LINEARS, r=4, alpha=8))
    idx = tokens()
    y = model(idx)[0]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()
    model.train()
    model.eval()
    assert not any(layer.merged for _, layer in lora_layers(model))
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert torch.equal(model(idx)[0], y)


def test_lora_summary_lists_layers_and_counts():
    model = apply_lora(tiny_gpt(), ["q_proj", "up_proj"], r=4, alpha=8)
    text = lora_summary(model)
    assert "blocks.0.attn.q_proj" in text and "blocks.1.mlp.up_proj" in text
    assert "Linear(32->128)" in text and "640" in text  # 4 * (32 + 128) parameters added
    assert f"{count_parameters(model).trainable:,}" in text
    assert lora_summary(tiny_gpt()) == "no LoRA layers in this model"
