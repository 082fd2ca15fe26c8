"""LoRAConfig: validated once with errors that name the field and the value; one object carried from
the call to the layers, the adapters and the adapter file; both call forms give the same model; old
(version 1) adapter files still load; and the active adapter's config decides which biases train."""
import copy
import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from minilora import (AdaLoRAConfig, AdaLoRALinear, LoRAConfig, LoRAEmbedding, LoRALinear, QLoRALinear, add_adapter,
                      apply_adalora, apply_lora, load_adapter, lora_layers, read_adapter_file, save_adapter,
                      set_adapter, set_trainable)
from minilora.adapter_file import file_config
from minilora.base_fingerprint import base_fingerprint
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

TARGETS = ["q_proj", "v_proj", "up_proj"]


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=2, n_embd=64, n_head=2, block_size=16)).eval()


def tokens(seed=1):
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(seed))


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def trainable_biases(model):
    return {n for n in trainable(model) if n.endswith("bias")}


def randomized(model, biases=True):
    """B (and AdaLoRA's lambda, and the adapted layers' biases) away from init, as after training;
    in eval mode (new LoRA layers start in training mode, with dropout)."""
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for adapter in layer.adapters.values():
                adapter.lora_B.normal_(std=0.05)
                if hasattr(adapter, "lora_E"):
                    adapter.lora_E.normal_()
            if biases and layer.base.bias is not None:
                layer.base.bias.normal_(std=0.05)
    return model.eval()


# -- validation, once, in __post_init__ ---------------------------------------------------------

@pytest.mark.parametrize("fields, error, match", [
    (dict(r=0), ValueError, r"r=0 is not a valid rank"),
    (dict(r=-3), ValueError, r"r=-3 is not a valid rank"),
    (dict(r=2.5), TypeError, r"r must be an integer, got 2.5 \(float\)"),
    (dict(alpha=math.nan), ValueError, r"alpha must be a finite number > 0, got nan"),
    (dict(alpha=0), ValueError, r"alpha must be a finite number > 0, got 0"),
    (dict(alpha="16"), TypeError, r"alpha must be a number > 0, got '16'"),
    (dict(dropout=1.5), ValueError, r"dropout must be in \[0, 1\), got 1.5"),
    (dict(targets=[]), ValueError, r"targets must be a non-empty list of layer names .*got \[\]"),
    (dict(targets=["q_proj", 3]), TypeError, r"targets must be .* got \['q_proj', 3\]"),
    (dict(targets="q_proj["), ValueError, r"targets 'q_proj\[' is not a valid regular expression"),
    (dict(bias="some"), ValueError, r"bias must be one of \['none', 'lora_only', 'all'\], got 'some'"),
    (dict(rslora=1), TypeError, r"rslora must be True or False, got 1"),
    (dict(quantize="nf3"), ValueError, r"quantize must be one of \[None, 'nf4', 'fp4', 'int4'\], got 'nf3'"),
    (dict(quant_block_size=63), ValueError, r"block_size must be a positive even integer.*got 63"),
    (dict(double_quant="yes"), TypeError, r"double_quant must be True or False, got 'yes'"),
    (dict(quantize="nf4", dora=True), ValueError, r"dora=True cannot be combined with a 'nf4' base"),
    (dict(quantize="int4", pissa=True), ValueError, r"pissa=True cannot be combined with a 'int4' base"),
])
def test_each_bad_field_is_named_with_its_value(fields, error, match):
    with pytest.raises(error, match=match):
        LoRAConfig(**fields)


@pytest.mark.parametrize("fields, error, match", [
    (dict(init_r=0), ValueError, r"init_r=0 is not a valid rank"),
    (dict(init_r=6.0), TypeError, r"init_r must be an integer, got 6.0"),
    (dict(init_r=6, target_r=9), ValueError, r"target_r=9 must be in 1..init_r=6"),
    (dict(dora=True), ValueError, r"AdaLoRA takes no dora=True"),
    (dict(quantize="nf4"), ValueError, r"AdaLoRA takes no quantize='nf4'"),
    (dict(alpha=-1), ValueError, r"alpha must be a finite number > 0, got -1"),
])
def test_adalora_config_checks_its_ranks_and_refuses_lora_variants(fields, error, match):
    with pytest.raises(error, match=match):
        AdaLoRAConfig(**fields)


def test_adalora_config_r_is_init_r_and_is_not_given():
    config = AdaLoRAConfig(targets=["q_proj"], init_r=6, target_r=3)
    assert config.r == 6 and "r" not in config.to_dict()
    with pytest.raises(TypeError):
        AdaLoRAConfig(r=6)


def test_a_config_is_normalised_frozen_and_replaced_with_validation():
    config = LoRAConfig(targets=["q_proj", "v_proj"], r=4, alpha=8)
    assert config == LoRAConfig(targets=("q_proj", "v_proj"), r=4, alpha=8.0)
    assert isinstance(config.alpha, float) and config.targets == ("q_proj", "v_proj")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.r = 16
    assert dataclasses.replace(config, r=16).r == 16
    with pytest.raises(ValueError, match="r=0"):
        dataclasses.replace(config, r=0)


def test_shorthand_errors_name_unknown_settings_and_refuse_a_config_with_keywords():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['rank'\]; LoRAConfig's fields are \['targets', 'r'"):
        apply_lora(tiny_gpt(), TARGETS, rank=4)
    config = LoRAConfig(targets=TARGETS, r=4)
    with pytest.raises(TypeError, match=r"not both \(got a config and \['alpha'\]\)"):
        apply_lora(tiny_gpt(), config, alpha=8)
    with pytest.raises(TypeError, match="targets given twice"):
        apply_lora(tiny_gpt(), TARGETS, targets=["q_proj"], r=4)
    with pytest.raises(TypeError, match=r"config must be an instance of LoRAConfig, got 4 \(int\)"):
        LoRALinear(nn.Linear(8, 12), 4)  # the old positional rank
    with pytest.raises(TypeError, match="an AdaLoRAConfig is for apply_adalora"):
        apply_lora(tiny_gpt(), AdaLoRAConfig(targets=TARGETS))
    with pytest.raises(TypeError, match="config must be an instance of AdaLoRAConfig, got LoRAConfig"):
        AdaLoRALinear(nn.Linear(8, 12), LoRAConfig())
    with pytest.raises(TypeError, match="config must be an instance of AdaLoRAConfig, got LoRAConfig"):
        apply_adalora(tiny_gpt(), LoRAConfig(targets=TARGETS))


def test_a_bad_config_changes_nothing():
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="dropout"):
        apply_lora(model, TARGETS, r=4, alpha=8, dropout=1.5)
    assert not lora_layers(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- one object, both call forms ----------------------------------------------------------------

def test_one_config_object_reaches_every_layer_and_adapter():
    config = LoRAConfig(targets=TARGETS, r=4, alpha=8, dropout=0.1, rslora=True)
    model = apply_lora(tiny_gpt(), config)
    layers = lora_layers(model)
    assert len(layers) == 6 and all(layer.adapters["default"].config is config for _, layer in layers)
    adapter = layers[0][1].adapters["default"]
    assert (adapter.r, adapter.alpha, adapter.dropout.p, adapter.scaling) == (4, 8.0, 0.1, 8 / math.sqrt(4))


@pytest.mark.parametrize("fields", [dict(), dict(rslora=True, dropout=0.1), dict(dora=True), dict(pissa=True),
                                    dict(bias="all"), dict(quantize="nf4", quant_block_size=32),
                                    dict(targets="all-linear")])
def test_config_and_keyword_shorthand_give_the_same_model(fields):
    settings = dict(targets=TARGETS, r=4, alpha=8) | fields
    torch.manual_seed(3)
    by_config = apply_lora(tiny_gpt(), LoRAConfig(**settings))
    torch.manual_seed(3)
    targets = settings.pop("targets")
    by_keywords = apply_lora(tiny_gpt(), targets, **settings)
    a, b = by_config.state_dict(), by_keywords.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert trainable(by_config) == trainable(by_keywords) and trainable(by_config)
    assert torch.equal(by_config(tokens())[0], by_keywords(tokens())[0])
    configs = {layer.adapters["default"].config for _, layer in lora_layers(by_keywords)}
    assert len(configs) == 1 and configs.pop() == LoRAConfig(targets=targets, **settings)


def test_add_adapter_and_apply_adalora_take_both_forms():
    one = add_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), "b", LoRAConfig(targets=["q_proj"], r=2))
    two = add_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), "b", ["q_proj"], r=2)
    assert one.state_dict().keys() == two.state_dict().keys() and trainable(one) == trainable(two)
    torch.manual_seed(5)
    ada_one = apply_adalora(tiny_gpt(), AdaLoRAConfig(targets=TARGETS, init_r=6, target_r=3, alpha=8))
    torch.manual_seed(5)
    ada_two = apply_adalora(tiny_gpt(), TARGETS, init_r=6, target_r=3, alpha=8)
    a, b = ada_one.state_dict(), ada_two.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))


# -- the adapter file ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    LoRAConfig(targets=TARGETS, r=4, alpha=8, dropout=0.1, rslora=True, bias="lora_only"),
    LoRAConfig(targets=TARGETS, r=4, alpha=8, quantize="fp4", quant_block_size=32, double_quant=False),
    AdaLoRAConfig(targets=TARGETS, init_r=6, target_r=3, alpha=8, bias="all"),
])
def test_the_file_stores_the_config_and_loading_rebuilds_it(tmp_path, config):
    apply = apply_adalora if isinstance(config, AdaLoRAConfig) else apply_lora
    model = randomized(apply(tiny_gpt(), config), biases=config.bias != "none")
    save_adapter(model, tmp_path / "a.pt")
    obj = read_adapter_file(tmp_path / "a.pt")
    names = tuple(n for n, _ in lora_layers(model))
    assert obj["config"] == dataclasses.replace(config, targets=names).to_dict()
    assert file_config(obj) == dataclasses.replace(config, targets=names)
    fresh = load_adapter(tiny_gpt(), tmp_path / "a.pt", quantize_as_trained=True).eval()
    loaded = lora_layers(fresh)[0][1].adapters["default"].config
    assert dataclasses.replace(loaded, targets=None) == dataclasses.replace(config, targets=None)
    assert torch.equal(fresh(tokens())[0], model(tokens())[0])
    assert trainable(fresh) == trainable(model)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(rank=4), r"unknown keys \['rank'\], missing keys \[\]"),
    (lambda c: c.pop("dropout"), r"unknown keys \[\], missing keys \['dropout'\]"),
    (lambda c: c.update(r=0), "r=0 is not a valid rank"),
])
def test_a_file_config_with_an_unknown_missing_or_bad_key_is_named(tmp_path, change, match):
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    change(obj["config"])
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=match):
        load_adapter(tiny_gpt(), tmp_path / "bad.pt")


def test_a_file_from_a_newer_version_says_so(tmp_path):
    save_adapter(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8), tmp_path / "a.pt")
    obj = torch.load(tmp_path / "a.pt", weights_only=True)
    torch.save(dict(obj, version=3), tmp_path / "new.pt")
    with pytest.raises(ValueError, match="has version 3; this code reads versions 1 and 2"):
        read_adapter_file(tmp_path / "new.pt")


def version_1_file(model, name, config, tensors, biases):
    """An adapter file's dict as the code before LoRAConfig wrote it (version 1): adapter_name, base
    and the AdaLoRA entries inside "config", and "quantize" a dict or None."""
    return {"format": "minilora-adapter", "version": 1,
            "config": dict(adapter_name=name, **config, base=base_fingerprint(model, skip=set(biases))),
            "tensors": tensors, "biases": biases}


def test_a_version_1_file_still_loads(tmp_path):
    base = tiny_gpt()
    model = randomized(apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, bias="lora_only", rslora=True))
    names = [n for n, _ in lora_layers(model)]
    tensors = {f"{n}.{k}": getattr(layer, k).detach().clone() for n, layer in lora_layers(model)
               for k in ("lora_A", "lora_B")}
    biases = {f"{n}.bias": layer.base.bias.detach().clone() for n, layer in lora_layers(model)}
    config = dict(targets=names, r=4, alpha=8.0, dropout=0.0, rslora=True, dora=False, pissa=False,
                  bias="lora_only", quantize=None)
    torch.save(version_1_file(base, "old", config, tensors, biases), tmp_path / "v1.pt")
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "v1.pt")
    assert torch.equal(fresh(tokens())[0], model(tokens())[0])
    assert lora_layers(fresh)[0][1].adapters["old"].config == LoRAConfig(
        targets="|".join(n.replace(".", r"\.") for n in names), r=4, alpha=8, rslora=True, bias="lora_only")
    assert trainable_biases(fresh) == {f"{n}.base.bias" for n in names}


def test_version_1_qlora_and_adalora_files_still_load(tmp_path):
    base = tiny_gpt()
    qlora = randomized(apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, quantize="nf4", quant_block_size=32),
                       biases=False)
    tensors = {f"{n}.{k}": getattr(layer, k).detach().clone() for n, layer in lora_layers(qlora)
               for k in ("lora_A", "lora_B")}
    config = dict(targets=[n for n, _ in lora_layers(qlora)], r=4, alpha=8.0, dropout=0.0, rslora=False, dora=False,
                  pissa=False, bias="none",
                  quantize={"quantize": "nf4", "quant_block_size": 32, "double_quant": True})
    torch.save(version_1_file(base, "default", config, tensors, {}), tmp_path / "q1.pt")
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "q1.pt", quantize_as_trained=True)
    assert all(isinstance(layer, QLoRALinear) for _, layer in lora_layers(fresh))
    assert torch.equal(fresh(tokens())[0], qlora(tokens())[0])

    ada = randomized(apply_adalora(copy.deepcopy(base), TARGETS, init_r=6, target_r=3, alpha=8), biases=False)
    kept = {n: layer.adapters["default"].surviving_triplets() for n, layer in lora_layers(ada)}
    tensors = {f"{n}.{k}": t.detach().clone() for n, parts in kept.items() for k, t in parts.items()}
    config = dict(targets=list(kept), r=6, alpha=8.0, dropout=0.0, rslora=False, dora=False, pissa=False,
                  bias="none", quantize=None, adalora=True, target_r=3,
                  ranks={n: layer.adapters["default"].rank for n, layer in lora_layers(ada)})
    torch.save(version_1_file(base, "default", config, tensors, {}), tmp_path / "a1.pt")
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "a1.pt")
    assert lora_layers(fresh)[0][1].adapters["default"].config.init_r == 6
    torch.testing.assert_close(fresh(tokens())[0], ada(tokens())[0])


def test_an_incomplete_version_1_file_names_the_missing_keys(tmp_path):
    config = dict(targets=["blocks.0.attn.q_proj"], r=4, alpha=8.0)
    torch.save(version_1_file(tiny_gpt(), "default", config, {}, {}), tmp_path / "v1.pt")
    with pytest.raises(ValueError, match=r"\(version 1\) is incomplete \(config keys missing: \['dropout', 'rslora'"):
        read_adapter_file(tmp_path / "v1.pt")


# -- the bias setting: the active adapter's config decides --------------------------------------

def test_adding_an_inactive_adapter_keeps_the_active_adapters_biases_training():
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, bias="all")
    before = trainable_biases(model)
    assert "blocks.0.ln_1.bias" in before
    add_adapter(model, "b", ["q_proj"], r=2, alpha=4)  # bias="none", but not active
    assert trainable_biases(model) == before
    assert trainable_biases(apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, bias="all")) == before  # as if alone


def test_set_adapter_applies_the_new_adapters_bias_setting():
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8)  # bias="none"
    add_adapter(model, "b", ["q_proj"], r=2, alpha=4, bias="lora_only")
    assert trainable_biases(model) == set()
    model.ln_f.weight.requires_grad_(True)  # unfrozen by hand: set_adapter leaves it so
    set_adapter(model, "b")
    assert trainable_biases(model) == {"blocks.0.attn.q_proj.base.bias", "blocks.1.attn.q_proj.base.bias"}
    others = trainable(model) - {"ln_f.weight"}
    assert "ln_f.weight" in trainable(model) and all(n.endswith(("b.lora_A", "b.lora_B", "bias")) for n in others)
    set_adapter(model, "default")
    assert trainable_biases(model) == set()
    _, loss = model(tokens(), tokens(2))
    loss.backward()
    assert model.blocks[0].attn.q_proj.base.bias.grad is None


@pytest.mark.parametrize("make", [
    lambda bias: LoRALinear(nn.Linear(8, 12), r=2, alpha=4, bias=bias),
    lambda bias: QLoRALinear(nn.Linear(64, 12), r=2, alpha=4, bias=bias),
    lambda bias: AdaLoRALinear(nn.Linear(8, 12), init_r=4, target_r=2, alpha=4, bias=bias),
])
@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_a_layer_built_on_its_own_trains_its_bias_as_its_config_says(make, bias):
    layer = make(bias)
    assert layer.base.bias.requires_grad
    layer(torch.randn(3, layer.in_features)).sum().backward()
    assert layer.base.bias.grad is not None and trainable(layer) == {"base.bias", "adapters.default.lora_A",
                                                                     "adapters.default.lora_B"} | (
        {"adapters.default.lora_E"} if isinstance(layer, AdaLoRALinear) else set())
    assert not make("none").base.bias.requires_grad


def test_set_trainable_follows_the_active_adapter_and_nothing_trains_without_one():
    layer = LoRAEmbedding(nn.Embedding(20, 8), r=2, alpha=4, bias="all")
    assert trainable(layer) == {"adapters.default.lora_A", "adapters.default.lora_B"}  # an embedding has no bias
    model = apply_lora(tiny_gpt(), TARGETS, r=4, alpha=8, bias="lora_only")
    for _, layer in lora_layers(model):
        layer.active_adapter = None
    assert trainable(set_trainable(model)) == set()
