"""Mixed-adapter batches: each row of one forward pass equals that row run alone with its adapter."""
import pytest
import torch

from minilora import (add_adapter, apply_adalora, apply_lora, disable_lora, lora_layers, merge_lora, mixed_adapters,
                      set_adapter)
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_embd=32, n_head=2, block_size=16)
    settings.update(overrides)
    return GPT(config_from_preset("tiny", **settings)).eval()


def tokens(rows, seed=1, length=16):
    return torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(seed))


def randomize(model, seed=2):
    """Random nonzero factors everywhere (a fresh adapter has B = 0 and would add nothing)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for adapter in layer.adapters.values():
                adapter.lora_A.normal_(std=0.3)
                adapter.lora_B.normal_(std=0.3)
                if hasattr(adapter, "lora_E"):
                    adapter.lora_E.normal_()
                if adapter.magnitude is not None:
                    adapter.magnitude.mul_(1 + 0.3 * torch.rand_like(adapter.magnitude))
    return model


@torch.no_grad()
def alone(model, name, row):
    """Logits of one row (1, T) with adapter name active (None: the base model)."""
    if name is None:
        with disable_lora(model):
            return model(row)[0]
    set_adapter(model, name)
    return model(row)[0]


@torch.no_grad()
def assert_rows_equal_alone(model, names, idx=None):
    idx = tokens(len(names)) if idx is None else idx
    with mixed_adapters(model, names):
        mixed = model(idx)[0]  # (rows, T, V)
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i:i + 1], alone(model, name, idx[i:i + 1]), **TOL)
    return mixed


def three_adapters():
    """"a" r=4, "b" r=2 with rsLoRA, "c" r=3 on q_proj only: different ranks, scales and targets."""
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, adapter_name="a")
    add_adapter(model, "b", TARGETS, r=2, alpha=3, rslora=True)
    add_adapter(model, "c", ["q_proj"], r=3, alpha=5)
    return randomize(model)


def test_each_row_equals_its_adapter_alone():
    model = three_adapters()
    names = ["a", "b", None, "c", "a", "b"]
    mixed = assert_rows_equal_alone(model, names)
    assert not torch.allclose(mixed[0], mixed[1]) and not torch.allclose(mixed[0], mixed[2])  # adapters matter


def test_the_model_is_as_before_after_the_block():
    model = three_adapters()
    set_adapter(model, "b")
    idx = tokens(3)
    with torch.no_grad():
        before = model(idx)[0]
        with mixed_adapters(model, ["a", "c", None]):
            pass
        after = model(idx)[0]
    assert torch.equal(before, after)
    assert all(layer.row_adapters is None and layer.active_adapter == "b" for _, layer in lora_layers(model))


def test_one_adapter_for_every_row_takes_the_ordinary_path_bit_for_bit():
    model = three_adapters()
    idx = tokens(4)
    set_adapter(model, "b")
    with torch.no_grad():
        expected = model(idx)[0]
        set_adapter(model, "a")
        with mixed_adapters(model, ["b"] * 4):
            assert all(layer.row_adapters is None for _, layer in lora_layers(model))  # nothing gathered
            got = model(idx)[0]
    assert torch.equal(got, expected)
    assert all(layer.active_adapter == "a" for _, layer in lora_layers(model))


def test_dora_beside_plain_lora():
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, adapter_name="dora", dora=True)
    add_adapter(model, "plain", TARGETS, r=2, alpha=4)
    assert_rows_equal_alone(randomize(model), ["dora", "plain", None, "dora"])


def test_adalora_triplets():
    model = apply_adalora(tiny_gpt(), TARGETS, init_r=6, target_r=4, alpha=8, adapter_name="ada")
    for _, layer in lora_layers(model):
        layer.add_adapter("ada2", init_r=3, target_r=2, alpha=4)
    randomize(model)
    with torch.no_grad():  # pruned triplets (lambda_i = 0), as the rank allocator leaves them
        model.blocks[0].attn.q_proj.adapters["ada"].lora_E[:3] = 0
    assert_rows_equal_alone(model, ["ada", "ada2", None])


def test_qlora_base():
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, adapter_name="a", quantize="nf4")
    add_adapter(model, "b", TARGETS, r=2, alpha=4)
    assert_rows_equal_alone(randomize(model), ["a", "b", None])


def test_embedding_adapters():
    model = apply_lora(tiny_gpt(tie_weights=False), ["wte", "q_proj"], r=4, alpha=8, adapter_name="a")
    add_adapter(model, "b", ["wte"], r=2, alpha=4)
    assert_rows_equal_alone(randomize(model), ["a", "b", None, "b"])


def test_bf16_model_computes_in_bf16_as_closely_as_alone():
    model = three_adapters()
    idx = tokens(3)
    exact = torch.cat([alone(model, n, idx[i:i + 1]) for i, n in enumerate(["a", "b", None])])  # fp32
    model.to(torch.bfloat16)
    with torch.no_grad(), mixed_adapters(model, ["a", "b", None]):
        mixed = model(idx)[0]
    bf16_alone = torch.cat([alone(model, n, idx[i:i + 1]) for i, n in enumerate(["a", "b", None])])
    assert mixed.dtype == torch.bfloat16
    # bf16 rounds differently along the two paths; each should be as far from fp32 as the other
    err_mixed, err_alone = (mixed.float() - exact).abs().mean(), (bf16_alone.float() - exact).abs().mean()
    assert err_mixed < 1.5 * err_alone


def test_greedy_generation_row_by_row():
    model = three_adapters()
    names = ["a", "b", "c", None]
    prompt = tokens(4, length=5)
    with mixed_adapters(model, names):
        out = model.generate(prompt, 20, top_k=1)  # top_k=1: greedy, so no random draw to line up
    assert out.shape == (4, 25)
    for i, name in enumerate(names):
        if name is None:
            with disable_lora(model):
                expected = model.generate(prompt[i:i + 1], 20, top_k=1)
        else:
            set_adapter(model, name)
            expected = model.generate(prompt[i:i + 1], 20, top_k=1)
        assert torch.equal(out[i:i + 1], expected), name
    assert len({tuple(row.tolist()) for row in out}) == 4  # four different continuations


def test_clear_errors():
    model = three_adapters()
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['zz'\].*\['a', 'b', 'c'\]"):
        with mixed_adapters(model, ["a", "zz"]):
            pass
    with pytest.raises(TypeError, match="one adapter name"):
        with mixed_adapters(model, []):
            pass
    with pytest.raises(ValueError, match="set up for 2 rows.*must be 2"):
        with torch.no_grad(), mixed_adapters(model, ["a", "b"]):
            model(tokens(3))
    with pytest.raises(RuntimeError, match="already inside"):
        with mixed_adapters(model, ["a", "b"]), mixed_adapters(model, ["a", "b"]):
            pass
    assert all(layer.row_adapters is None for _, layer in lora_layers(model))  # cleaned up after errors
    set_adapter(model, "a")
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        with mixed_adapters(model, ["a", "b"]):
            pass


def test_dropout_in_training_mode_is_refused():
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, dropout=0.1, adapter_name="a")
    add_adapter(model, "b", TARGETS, r=2, alpha=4)
    model.train()
    with pytest.raises(RuntimeError, match=r"\['a'\] have dropout.*model.eval\(\)"):
        with mixed_adapters(model, ["a", "b"]):
            pass
    model.eval()
    assert_rows_equal_alone(randomize(model), ["a", "b"])


def test_gradients_reach_each_rows_adapter_as_when_run_alone():
    model = three_adapters()
    names, idx, targets = ["a", "b", "a", "c"], tokens(4), tokens(4, seed=3)
    adapters = [p for n, p in model.named_parameters() if ".adapters." in n]

    def per_row_loss(logits, i):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[i:i + 1].flatten(), reduction="sum")

    for i, name in enumerate(names):  # alone: each row with its adapter active, gradients summed
        set_adapter(model, name)
        per_row_loss(model(idx[i:i + 1])[0], i).backward()
    alone_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in adapters]
    for p in adapters:
        p.grad = None
        p.requires_grad_(True)
    with mixed_adapters(model, names):
        logits = model(idx)[0]
    sum(per_row_loss(logits[i:i + 1], i) for i in range(4)).backward()
    for p, expected in zip(adapters, alone_grads):
        torch.testing.assert_close(torch.zeros_like(p) if p.grad is None else p.grad, expected, rtol=1e-4, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in alone_grads)


def test_an_adapter_changed_inside_the_block_is_seen():
    model = three_adapters()
    idx = tokens(2)
    with torch.no_grad(), mixed_adapters(model, ["a", "b"]):
        before = model(idx)[0]
        for _, layer in lora_layers(model):
            layer.adapters["b"].lora_B.mul_(2.0)  # in place, as an optimizer step or load_adapter writes
        after = model(idx)[0]
    assert torch.equal(after[0], before[0]) and not torch.allclose(after[1], before[1])
    torch.testing.assert_close(after[1:2], alone(model, "b", idx[1:2]), **TOL)
