"""AdapterStore: a folder of adapter files, at most N loaded, least recently used evicted first."""
import pytest
import torch

from minilora import AdapterStore, adapter_names, apply_lora, read_adapter_file, remove_adapter, save_adapter, unload_lora
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset


def one_layer_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=1, n_head=1, n_embd=8, block_size=8)).eval()


def write_adapters(folder, names, seed=0):
    """One r=1 adapter file per name over one_layer_gpt(seed), each with its own random A and B:
    a template from save_adapter, its tensors replaced (quicker than save_adapter per file)."""
    model = one_layer_gpt(seed)
    apply_lora(model, ["q_proj"], r=1, alpha=1)
    template = folder / ".template"
    save_adapter(model, str(template))
    obj = read_adapter_file(str(template))
    template.unlink()
    g = torch.Generator().manual_seed(1)
    for name in names:
        obj["tensors"] = {k: torch.randn(v.shape, generator=g) for k, v in obj["tensors"].items()}
        torch.save(obj, folder / f"{name}.pt")


def a_of(model, name):
    return model.blocks[0].attn.q_proj.adapters[name].lora_A


def test_least_recently_used_leaves_first_and_the_counters_add_up(tmp_path):
    write_adapters(tmp_path, "abcde")
    model = one_layer_gpt()
    store = AdapterStore(model, str(tmp_path), capacity=3)
    assert list(store.files) == list("abcde")
    store.use(["a", "b", "c"])  # three loads
    assert store.stats()["resident"] == ["a", "b", "c"]
    store.use(["a"])  # a hit: a is now the most recently used
    assert list(store.resident) == ["b", "c", "a"]
    store.use(["d"])  # full: b, the least recently used, leaves
    assert list(store.resident) == ["c", "a", "d"]
    store.use(["e", None, "c"])  # c is a hit (touched first, so e's load evicts a, not c); None: the base
    assert list(store.resident) == ["d", "c", "e"]
    assert (store.hits, store.loads, store.evictions) == (2, 5, 2)
    assert adapter_names(model) == ["c", "d", "e"]  # the model holds exactly the resident ones
    store.use(["b"])
    assert list(store.resident) == ["c", "e", "b"] and store.evictions == 3
    torch.testing.assert_close(a_of(model, "b"), read_adapter_file(str(tmp_path / "b.pt"))["tensors"]
                               ["blocks.0.attn.q_proj.lora_A"], rtol=0, atol=0)


def test_a_thousand_adapter_files_with_64_resident(tmp_path):
    names = [f"user{i:04d}" for i in range(1000)]
    write_adapters(tmp_path, names)
    model = one_layer_gpt()
    store = AdapterStore(model, str(tmp_path), capacity=64)
    most = 0
    for name in names:
        store.use([name])
        most = max(most, len(adapter_names(model)))
    assert most == 64
    assert list(store.resident) == names[-64:]
    assert (store.hits, store.loads, store.evictions) == (0, 1000, 936)
    store.use(names[-64:])  # all resident: 64 hits, no load
    assert (store.hits, store.loads, store.evictions) == (64, 1000, 936)
    store.use([names[0], names[500]])  # long gone: loaded again, the two oldest leave
    assert list(store.resident)[-2:] == [names[0], names[500]]
    assert names[-64] not in store.resident and names[-63] not in store.resident
    assert (store.loads, store.evictions) == (1002, 938)
    expected = read_adapter_file(str(tmp_path / f"{names[500]}.pt"))["tensors"]["blocks.0.attn.q_proj.lora_A"]
    torch.testing.assert_close(a_of(model, names[500]), expected, rtol=0, atol=0)


def test_refusals_name_the_problem(tmp_path):
    write_adapters(tmp_path, ["a", "b", "c"])
    model = one_layer_gpt()
    store = AdapterStore(model, str(tmp_path), capacity=2)
    with pytest.raises(KeyError, match="unknown adapter 'zz': no file 'zz.pt'"):
        store.use(["a", "zz"])
    assert store.loads == 0  # nothing loaded before the unknown name was found
    with pytest.raises(ValueError, match="3 distinct adapters asked for at once, but the store keeps at most 2"):
        store.use(["a", "b", "c"])
    with pytest.raises(ValueError, match="capacity must be an integer >= 1"):
        AdapterStore(model, str(tmp_path), capacity=0)
    with pytest.raises(NotADirectoryError, match="adapter folder not found"):
        AdapterStore(model, str(tmp_path / "nope"), capacity=2)
    other_base = one_layer_gpt(seed=5)
    with pytest.raises(ValueError, match="made for another base model"):
        AdapterStore(other_base, str(tmp_path), capacity=2).use(["a"])


def test_remove_adapter_leaves_the_base_function(tmp_path):
    write_adapters(tmp_path, ["a"])
    model = one_layer_gpt()
    idx = torch.randint(0, 256, (1, 8))
    base = model(idx)[0]
    store = AdapterStore(model, str(tmp_path), capacity=1)
    store.use(["a"])
    remove_adapter(model, "a")
    assert adapter_names(model) == []
    torch.testing.assert_close(model(idx)[0], base, rtol=0, atol=0)
    unload_lora(model)
