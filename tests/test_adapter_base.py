"""An adapter file knows its base model: loaded onto another base it is refused, onto its own it loads
whatever was done to the base meanwhile (merged, quantized, PiSSA); QLoRA files record their 4 bits."""
import copy

import pytest
import torch

from minilora import (apply_adalora, apply_lora, load_adapter, lora_layers, merge_lora, read_adapter_file,
                      save_adapter)
from minilora.base_fingerprint import base_fingerprint, base_mismatch, short_id
from minilora.qlora import QLoRALinear
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset
from tests.test_lora_config import randomized as randomized_adapters

TARGETS = ["q_proj", "v_proj", "up_proj"]


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=2, n_embd=32, n_head=2, block_size=16)).eval()


def tokens():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def randomized(model):
    """B (and AdaLoRA's lambda) away from init, as after training; the biases as they were."""
    return randomized_adapters(model, biases=False)


def test_an_adapter_for_another_base_is_refused_naming_the_tensors(tmp_path):
    save_adapter(randomized(apply_lora(tiny_gpt(seed=0), TARGETS, r=4, alpha=8)), tmp_path / "a.pt")
    other = tiny_gpt(seed=1)  # same shapes, another "pretraining"
    with pytest.raises(ValueError, match=r"made for another base model: \d+ of the \d+ base tensors.*'wte.weight'"
                                         r".*check_base=False"):
        load_adapter(other, tmp_path / "a.pt")
    assert not lora_layers(other)  # refused before anything changed
    load_adapter(other, tmp_path / "a.pt", check_base=False)  # knowingly
    load_adapter(tiny_gpt(seed=0), tmp_path / "a.pt")  # its own base


@pytest.mark.parametrize("make", [
    lambda base: merge_lora(randomized(apply_lora(base, TARGETS, r=4, alpha=8))),
    lambda base: randomized(apply_lora(base, TARGETS, r=4, alpha=8, quantize="nf4")),
    lambda base: apply_lora(base, TARGETS, r=4, alpha=8, pissa=True),
    lambda base: randomized(apply_adalora(base, TARGETS, init_r=4, target_r=2, alpha=8)),
    lambda base: apply_lora(base, TARGETS, r=4, alpha=8, bias="all"),
])
def test_whatever_was_done_to_the_base_it_still_fits_its_own(tmp_path, make):
    model = make(tiny_gpt())
    with torch.no_grad():  # trained biases travel in the file and are left out of the fingerprint
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.requires_grad:
                p.add_(1.0)
    save_adapter(model, tmp_path / "a.pt")
    load_adapter(tiny_gpt(), tmp_path / "a.pt")
    with pytest.raises(ValueError, match="made for another base"):
        load_adapter(tiny_gpt(seed=3), tmp_path / "a.pt")


def test_fingerprint_skips_lora_layers_and_ties():
    plain = tiny_gpt()
    adapted = apply_lora(copy.deepcopy(plain), TARGETS, r=4, alpha=8)
    fp_plain, fp_adapted = base_fingerprint(plain), base_fingerprint(adapted)
    assert "blocks.0.attn.q_proj.weight" in fp_plain["tensors"]
    assert not any("q_proj" in name or "adapters" in name for name in fp_adapted["tensors"])
    assert "lm_head.weight" not in fp_plain["tensors"]  # tied to wte.weight: once
    assert set(fp_adapted["tensors"]) < set(fp_plain["tensors"])
    assert base_mismatch(plain, fp_adapted) is None and base_mismatch(adapted, fp_plain) is None
    assert fp_plain["config"]["n_embd"] == 32 and short_id(fp_plain) != short_id(fp_adapted)
    with torch.no_grad():
        plain.ln_f.weight[0] += 1e-6  # any change of value is another base
    assert "ln_f.weight" in base_mismatch(plain, fp_adapted)


def test_files_without_a_fingerprint_still_load(tmp_path):
    save_adapter(randomized(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8)), tmp_path / "a.pt")
    obj = read_adapter_file(tmp_path / "a.pt")
    obj["base"] = None  # as a file without a fingerprint holds (version 1 files: tests/test_lora_config.py)
    torch.save(obj, tmp_path / "old.pt")
    load_adapter(tiny_gpt(seed=5), tmp_path / "old.pt")  # nothing to check against


def test_a_qlora_file_records_its_4bit_base_and_can_rebuild_it(tmp_path):
    qlora = randomized(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, quantize="nf4", quant_block_size=32))
    save_adapter(qlora, tmp_path / "q.pt")
    config = read_adapter_file(tmp_path / "q.pt")["config"]
    assert (config["quantize"], config["quant_block_size"], config["double_quant"]) == ("nf4", 32, True)
    on_full = load_adapter(tiny_gpt(), tmp_path / "q.pt")  # as given: full precision
    as_trained = load_adapter(tiny_gpt(), tmp_path / "q.pt", quantize_as_trained=True)
    assert all(isinstance(layer, QLoRALinear) for _, layer in lora_layers(as_trained))
    assert not any(isinstance(layer, QLoRALinear) for _, layer in lora_layers(on_full))
    with torch.no_grad():
        expected = qlora(tokens())[0]
        assert torch.equal(as_trained(tokens())[0], expected)  # the same 4-bit codes, the same A and B
        assert not torch.allclose(on_full(tokens())[0], expected, atol=1e-4)
