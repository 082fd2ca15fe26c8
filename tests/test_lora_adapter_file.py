"""Adapters as tiny files: round trips, and a clear error for every kind of mismatch."""
import copy
import os

import pytest
import torch

from minilora import add_adapter, apply_lora, load_adapter, lora_layers, merge_lora, save_adapter
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

TARGETS = ["q_proj", "v_proj", "up_proj"]




def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_embd=32, n_head=2, block_size=16)
    settings.update(overrides)
    return GPT(config_from_preset("tiny", **settings))


def tokens(seed=1):
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(seed))


def trained(model, steps=3):
    """A few AdamW steps, so that B (and biases or magnitudes, if trainable) move away from init."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        _, loss = model(tokens(5), tokens(6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("variant", [dict(), dict(rslora=True), dict(dora=True), dict(pissa=True),
                                     dict(bias="lora_only"), dict(bias="all")])
def test_round_trip_into_a_fresh_base(tmp_path, variant):
    base = tiny_gpt()
    model = trained(apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, **variant))
    path = tmp_path / "adapter.pt"
    save_adapter(model, path)
    fresh = load_adapter(copy.deepcopy(base), path)
    idx = tokens()
    assert torch.equal(fresh(idx)[0], model(idx)[0])
    assert [n for n, _ in lora_layers(fresh)] == [n for n, _ in lora_layers(model)]


def test_round_trip_into_a_model_with_the_same_adapter(tmp_path):
    model = trained(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8))
    save_adapter(model, tmp_path / "a.pt")
    other = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8)
    load_adapter(other, tmp_path / "a.pt")
    assert torch.equal(other(tokens())[0], model(tokens())[0])


def test_file_holds_only_tensors_and_plain_types_and_is_small(tmp_path):
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, dropout=0.1)
    path = tmp_path / "adapter.pt"
    save_adapter(model, path)
    obj = torch.load(path, weights_only=True)
    base = obj.pop("base")  # the base's fingerprint: tests/test_adapter_base.py
    assert (obj["format"], obj["version"], obj["kind"], obj["adapter_name"]) == ("minilora-adapter", 2, "lora", "default")
    assert obj["config"] == dict(targets=[n for n, _ in lora_layers(model)], r=4, alpha=8.0, dropout=0.1, bias="none",
                                 rslora=False, dora=False, pissa=False, quantize=None, quant_block_size=64,
                                 double_quant=True)
    assert set(base) == {"tensors", "config"} and all(isinstance(d, str) for d in base["tensors"].values())
    assert set(obj["tensors"]) == {f"{n}.{k}" for n, _ in lora_layers(model) for k in ("lora_A", "lora_B")}
    torch.save(tiny_gpt().state_dict(), tmp_path / "full.pt")
    assert os.path.getsize(path) < os.path.getsize(tmp_path / "full.pt") / 4
    assert sorted(os.listdir(tmp_path)) == ["adapter.pt", "full.pt"]  # no temporary files left


def test_other_rank_is_named(tmp_path):
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="r: file 4, model 2"):
        load_adapter(apply_lora(tiny_gpt(), TARGETS, r=2, alpha=8), tmp_path / "a.pt")


def test_other_alpha_and_variant_are_named(tmp_path):
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"alpha: file 8.0, model 16.0(.|\n)*rslora: file False, model True"):
        load_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=16, rslora=True), tmp_path / "a.pt")


def test_other_targets_are_named(tmp_path):
    save_adapter(apply_lora(tiny_gpt(), ["q_proj", "v_proj"], r=4, alpha=8), tmp_path / "a.pt")
    model = apply_lora(tiny_gpt(), ["q_proj", "k_proj"], r=4, alpha=8)
    with pytest.raises(ValueError, match=r"other targets: only in the file \['blocks.0.attn.v_proj'"):
        load_adapter(model, tmp_path / "a.pt")


def test_other_shapes_are_named_and_nothing_changes(tmp_path):
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    wider = tiny_gpt(n_embd=48)
    with pytest.raises(ValueError, match=r"blocks.0.attn.q_proj.lora_A: shape \(4, 32\) in the file, "
                                         r"the model needs \(4, 48\)"):
        load_adapter(wider, tmp_path / "a.pt")
    assert not lora_layers(wider)


def test_targets_missing_from_the_model_are_named(tmp_path):
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"targets the model does not have: \['blocks.0.attn.q_proj'"):
        load_adapter(torch.nn.Sequential(torch.nn.Linear(4, 4)), tmp_path / "a.pt")


def test_missing_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    model = tiny_gpt()
    with pytest.raises(FileNotFoundError, match="adapter file not found: .*nope.pt"):
        load_adapter(model, tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_adapter(model, tmp_path / "garbage.pt")
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_adapter(model, tmp_path / "truncated.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a minilora adapter file"):
        load_adapter(model, tmp_path / "foreign.pt")
    assert not lora_layers(model)


def test_loading_into_a_merged_model_is_an_error(tmp_path):
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8)
    save_adapter(model, tmp_path / "a.pt")
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        load_adapter(model, tmp_path / "a.pt")


def test_save_and_load_a_named_adapter(tmp_path):
    base = tiny_gpt()
    model = apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8)
    add_adapter(model, "second", ["q_proj"], r=2, alpha=4)
    save_adapter(model, tmp_path / "second.pt", adapter_name="second")
    assert torch.load(tmp_path / "second.pt", weights_only=True)["config"]["targets"] == [
        "blocks.0.attn.q_proj", "blocks.1.attn.q_proj"]
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "second.pt")
    assert [layer.active_adapter for _, layer in lora_layers(fresh)] == ["second", "second"]
    with pytest.raises(ValueError, match="no adapter named 'third'"):
        save_adapter(model, tmp_path / "x.pt", adapter_name="third")
