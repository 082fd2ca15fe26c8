"""The KV cache in GPT.generate: the same tokens as running the whole window at every step."""
import pytest
import torch

from minilora import add_adapter, apply_lora, disable_lora, lora_layers, mixed_adapters, set_adapter
from nanogpt.model import GPT, KVCache
from nanogpt.presets import config_from_preset

SHAPES = {  # several presets, shrunk where a full-size one would make the test slow
    "tiny": dict(),
    "tiny, 1 layer, 1 head": dict(n_layer=1, n_head=1, n_embd=32, block_size=16),
    "small, narrow": dict(n_layer=6, n_head=6, n_embd=96, block_size=32),
}


def gpt(seed=0, preset="tiny", **overrides):
    torch.manual_seed(seed)
    return GPT(config_from_preset(preset, **overrides)).eval()


def prompt(rows, length, seed=1):
    return torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extra", [0, 1, 40], ids=["to the block", "one past", "far past"])
def test_greedy_tokens_equal_the_uncached_path_also_past_block_size(shape, extra):
    overrides = SHAPES[shape]
    model = gpt(preset="small" if shape.startswith("small") else "tiny", **overrides)
    block = model.config.block_size
    idx = prompt(3, 5)
    n = block - 5 + extra  # the sequence ends exactly at block_size, one past it, or slides far past it
    cached = model.generate(idx, n, top_k=1)
    uncached = model.generate(idx, n, top_k=1, use_cache=False)
    assert cached.shape == (3, 5 + n)
    assert torch.equal(cached, uncached)


def test_sampled_tokens_equal_the_uncached_path_for_one_seed():
    model = gpt(**SHAPES["tiny, 1 layer, 1 head"])
    idx = prompt(2, 4)
    runs = [model.generate(idx, 30, temperature=0.9, generator=torch.Generator().manual_seed(7), use_cache=c)
            for c in (True, False)]
    assert torch.equal(runs[0], runs[1])


def test_a_prompt_longer_than_the_block_slides_from_the_start():
    model = gpt(**SHAPES["tiny, 1 layer, 1 head"])
    idx = prompt(1, 20)  # block_size 16
    assert torch.equal(model.generate(idx, 5, top_k=1), model.generate(idx, 5, top_k=1, use_cache=False))


@torch.no_grad()
def test_cached_logits_equal_the_full_forward_position_by_position():
    model = gpt(**SHAPES["small, narrow"], preset="small")
    idx = prompt(2, 12)
    full, _ = model(idx)  # (2, 12, V)
    caches = [KVCache() for _ in model.blocks]
    first, _ = model(idx[:, :5], caches=caches)  # prefill 5 positions
    assert [len(c) for c in caches] == [5] * 6
    assert caches[0].k.shape == (2, 6, 5, 16)  # (B, nh, T_past, hs)
    chunk, _ = model(idx[:, 5:8], caches=caches)  # several new positions at once: the shifted causal mask
    steps = [model(idx[:, t:t + 1], caches=caches)[0] for t in range(8, 12)]  # then one at a time
    torch.testing.assert_close(torch.cat([first, chunk, *steps], dim=1), full, rtol=1e-5, atol=1e-5)
    assert len(caches[-1]) == 12


def test_the_cache_cannot_run_past_block_size():
    model = gpt(**SHAPES["tiny, 1 layer, 1 head"])
    caches = [KVCache()]
    model(prompt(1, 16), caches=caches)
    with pytest.raises(ValueError, match="sequence length 17 is longer than block_size 16"):
        model(prompt(1, 1), caches=caches)


@torch.no_grad()
def test_mixed_adapters_generate_with_the_cache_as_each_adapter_alone():
    model = gpt(n_layer=2, n_head=2, n_embd=32, block_size=16)
    apply_lora(model, "all-linear", r=2, alpha=4, adapter_name="a")
    add_adapter(model, "b", ["q_proj", "v_proj"], r=4, alpha=4)
    torch.manual_seed(3)
    for _, layer in lora_layers(model):
        for adapter in layer.adapters.values():
            adapter.lora_A.normal_(std=0.5)
            adapter.lora_B.normal_(std=0.5)
    names = ["a", None, "b", "a", "b"]
    idx = prompt(len(names), 4)
    n = 20  # past block_size 16: the cached steps, then the sliding window
    with mixed_adapters(model, names):
        mixed = model.generate(idx, n, top_k=1)
        mixed_uncached = model.generate(idx, n, top_k=1, use_cache=False)
    assert torch.equal(mixed, mixed_uncached)
    for i, name in enumerate(names):
        if name is None:
            with disable_lora(model):
                expected = model.generate(idx[i:i + 1], n, top_k=1, use_cache=False)
        else:
            set_adapter(model, name)
            expected = model.generate(idx[i:i + 1], n, top_k=1, use_cache=False)
        assert torch.equal(mixed[i:i + 1], expected), f"row {i} ({name})"
    assert len({tuple(row.tolist()) for row in mixed[:, 4:]}) > 1  # the adapters make a difference


@torch.no_grad()
def test_the_gather_kept_for_generation_sees_an_adapter_changed_in_place():
    model = gpt(n_layer=1, n_head=2, n_embd=32, block_size=16)
    apply_lora(model, ["q_proj", "up_proj"], r=2, alpha=2, adapter_name="a")
    add_adapter(model, "b", ["q_proj", "up_proj"], r=2, alpha=2)
    idx = prompt(2, 6)
    with mixed_adapters(model, ["a", "b"]):
        before = model(idx)[0]
        assert torch.equal(model(idx)[0], before)  # the kept gather: the same numbers again
        layer = model.blocks[0].mlp.up_proj
        layer.adapters["b"].lora_B.normal_(std=0.5)  # an in-place change bumps the tensor's version
        layer.adapters["b"].lora_A.normal_(std=0.5)
        after = model(idx)[0]
    set_adapter(model, "b")
    torch.testing.assert_close(after[1:], model(idx[1:])[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[1:], before[1:])
    torch.testing.assert_close(after[:1], before[:1], rtol=0, atol=0)  # row "a" untouched
