"""Loading and saving GPT-2 checkpoints in the Hugging Face layout (nanogpt/pretrained.py), on small
checkpoints written here with GPT-2's key names: no network, no transformers."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from minilora import apply_lora, lora_layers
from nanogpt.model import GPT, GPTConfig
from nanogpt.pretrained import load_gpt2, save_gpt2

C, L, NH, V, T = 16, 2, 2, 50, 12  # a GPT-2 of 2 layers, 2 heads, 16 dims, 50 tokens, 12 positions


def hf_config(**overrides):
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": T,
              "n_ctx": T, "n_embd": C, "n_layer": L, "n_head": NH, "n_inner": None, "activation_function": "gelu_new",
              "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}
    config.update(overrides)
    return config


def gpt2_weights(seed=0):
    """Random weights under GPT-2's names and shapes (Conv1D weights stored (in, out))."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    w = {"wte.weight": r(V, C), "wpe.weight": r(T, C), "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for i in range(L):
        w.update({f"h.{i}.ln_1.weight": 1 + r(C), f"h.{i}.ln_1.bias": r(C), f"h.{i}.ln_2.weight": 1 + r(C),
                  f"h.{i}.ln_2.bias": r(C), f"h.{i}.attn.c_attn.weight": r(C, 3 * C), f"h.{i}.attn.c_attn.bias": r(3 * C),
                  f"h.{i}.attn.c_proj.weight": r(C, C), f"h.{i}.attn.c_proj.bias": r(C),
                  f"h.{i}.mlp.c_fc.weight": r(C, 4 * C), f"h.{i}.mlp.c_fc.bias": r(4 * C),
                  f"h.{i}.mlp.c_proj.weight": r(4 * C, C), f"h.{i}.mlp.c_proj.bias": r(C)})
    return w


def write_checkpoint(folder, weights, style="save_pretrained", fmt="safetensors", config=None):
    """save_pretrained style: `transformer.` prefix; hub style: no prefix, plus the old attention buffers."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or hf_config()))
    if style == "save_pretrained":
        sd = {f"transformer.{k}": v for k, v in weights.items()}
    else:
        sd = dict(weights)
        for i in range(L):
            sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "pytorch_model.bin")
    return folder


def reference_logits(w, idx):
    """GPT-2's forward written directly on the Hugging Face tensors: Conv1D is x @ W + b, the fused
    c_attn gives q, k, v side by side, the MLP's nonlinearity is the tanh GELU (gelu_new)."""
    def ln(x, name):
        return F.layer_norm(x, (C,), w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    def gelu_new(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    B, Tn = idx.shape
    x = w["wte.weight"][idx] + w["wpe.weight"][:Tn]
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for i in range(L):
        h = f"h.{i}."
        qkv = ln(x, h + "ln_1") @ w[h + "attn.c_attn.weight"] + w[h + "attn.c_attn.bias"]  # (B, T, 3C)
        q, k, v = (t.view(B, Tn, NH, C // NH).transpose(1, 2) for t in qkv.split(C, dim=-1))
        att = (q @ k.transpose(-1, -2) / math.sqrt(C // NH)).masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, Tn, C)
        x = x + y @ w[h + "attn.c_proj.weight"] + w[h + "attn.c_proj.bias"]
        m = gelu_new(ln(x, h + "ln_2") @ w[h + "mlp.c_fc.weight"] + w[h + "mlp.c_fc.bias"])
        x = x + m @ w[h + "mlp.c_proj.weight"] + w[h + "mlp.c_proj.bias"]
    return ln(x, "ln_f") @ w["wte.weight"].T  # the tied head


def tokens(seed=1):
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(seed))


def test_each_weight_lands_where_it_should_transposed(tmp_path):
    w = gpt2_weights()
    model = load_gpt2(str(write_checkpoint(tmp_path / "m", w)))
    sd = model.state_dict()
    for i in range(L):
        fused = w[f"h.{i}.attn.c_attn.weight"]  # (C, 3C): q, k, v side by side
        for j, p in enumerate(("q_proj", "k_proj", "v_proj")):
            assert torch.equal(sd[f"blocks.{i}.attn.{p}.weight"], fused[:, j * C:(j + 1) * C].T)
            assert torch.equal(sd[f"blocks.{i}.attn.{p}.bias"], w[f"h.{i}.attn.c_attn.bias"][j * C:(j + 1) * C])
        assert torch.equal(sd[f"blocks.{i}.attn.o_proj.weight"], w[f"h.{i}.attn.c_proj.weight"].T)
        assert torch.equal(sd[f"blocks.{i}.mlp.up_proj.weight"], w[f"h.{i}.mlp.c_fc.weight"].T)  # (4C, C)
        assert torch.equal(sd[f"blocks.{i}.mlp.down_proj.weight"], w[f"h.{i}.mlp.c_proj.weight"].T)  # (C, 4C)
        assert torch.equal(sd[f"blocks.{i}.mlp.down_proj.bias"], w[f"h.{i}.mlp.c_proj.bias"])
        assert torch.equal(sd[f"blocks.{i}.ln_2.weight"], w[f"h.{i}.ln_2.weight"])
    assert torch.equal(sd["wpe.weight"], w["wpe.weight"]) and torch.equal(sd["ln_f.bias"], w["ln_f.bias"])
    assert model.lm_head.weight is model.wte.weight and torch.equal(model.wte.weight, w["wte.weight"])
    assert model.config.activation == "gelu_new" and model.config.block_size == T and model.config.vocab_size == V
    assert not model.training


@pytest.mark.parametrize("style", ["save_pretrained", "hub"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_logits_equal_gpt2s_forward_in_both_key_styles_and_formats(tmp_path, style, fmt):
    w = gpt2_weights()
    model = load_gpt2(str(write_checkpoint(tmp_path / "m", w, style, fmt)))
    with torch.no_grad():
        got, _ = model(tokens())
    assert (got - reference_logits(w, tokens())).abs().max().item() < 1e-5


def test_the_exact_gelu_would_miss_the_parity(tmp_path):
    """Why activation is a config field: GPT-2's weights under the exact GELU give other logits."""
    w = gpt2_weights()
    folder = write_checkpoint(tmp_path / "m", w, config=hf_config(activation_function="gelu"))
    with torch.no_grad():
        got, _ = load_gpt2(str(folder))(tokens())
    assert (got - reference_logits(w, tokens())).abs().max().item() > 1e-4


def test_dtype_and_device_arguments(tmp_path):
    model = load_gpt2(str(write_checkpoint(tmp_path / "m", gpt2_weights())), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.wte.weight


def test_round_trip_load_save_load_keeps_weights_and_logits(tmp_path):
    w = gpt2_weights()
    first = load_gpt2(str(write_checkpoint(tmp_path / "m", w, style="hub", fmt="bin")))
    paths = save_gpt2(first, str(tmp_path / "out"))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["config.json", "model.safetensors"]
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(written) == {f"transformer.{k}" for k in w}  # save_pretrained's names, no buffers, no head
    assert all(torch.equal(written[f"transformer.{k}"], v) for k, v in w.items())  # c_attn fused back, transposed back
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new" and config["n_embd"] == C
    second = load_gpt2(str(tmp_path / "out"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(first(tokens())[0], second(tokens())[0])


def test_a_byte_level_gpt_round_trips_with_its_own_activation(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16)).eval()
    save_gpt2(model, str(tmp_path / "out"))
    back = load_gpt2(str(tmp_path / "out"))
    assert back.config == model.config and back.config.activation == "gelu"
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], back(idx)[0])


def test_a_lora_model_is_written_merged_and_stays_as_it_was(tmp_path):
    model = load_gpt2(str(write_checkpoint(tmp_path / "m", gpt2_weights())))
    apply_lora(model, "all-linear", r=2, alpha=4)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            for p in layer.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.2)  # B is zero at init: give the adapter a real update
        before = {k: v.clone() for k, v in model.named_parameters()}
        want = model(tokens())[0]
    save_gpt2(model, str(tmp_path / "merged"))
    assert lora_layers(model) and before.keys() == dict(model.named_parameters()).keys()
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # unchanged in memory
    merged = load_gpt2(str(tmp_path / "merged"))
    assert not lora_layers(merged)
    with torch.no_grad():
        assert (merged(tokens())[0] - want).abs().max().item() < 1e-5


def test_save_refuses_to_overwrite_and_models_gpt2_cannot_hold(tmp_path):
    model = load_gpt2(str(write_checkpoint(tmp_path / "m", gpt2_weights())))
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        save_gpt2(model, str(tmp_path / "m"))
    save_gpt2(model, str(tmp_path / "m"), overwrite=True)
    with pytest.raises(ValueError, match="bias=False, tie_weights=True, which it cannot hold"):
        save_gpt2(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, bias=False)), str(tmp_path / "x"))


def test_a_folder_without_the_files_says_which_and_where_they_come_from(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_gpt2(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no config.json .*hub's gpt2 repository"):
        load_gpt2(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text(json.dumps(hf_config()))
    with pytest.raises(FileNotFoundError, match=r"has no model.safetensors \(the weights; or pytorch_model.bin\)"):
        load_gpt2(str(tmp_path / "empty"))


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama", "hidden_size": 16}, "describes a model of type 'llama', not GPT-2"),
    (hf_config(n_inner=100), r"sets \{'n_inner': 100\}"),
    (hf_config(scale_attn_by_inverse_layer_idx=True), "sets {'scale_attn_by_inverse_layer_idx': True}"),
    (hf_config(activation_function="relu"), r"activation_function 'relu' is not one this GPT has; valid: \['gelu', 'gelu_new'\]"),
    ({"model_type": "gpt2", "n_embd": 16}, r"has no \['vocab_size', 'n_positions', 'n_layer', 'n_head'\]"),
])
def test_a_config_of_another_architecture_is_refused(tmp_path, config, message):
    folder = write_checkpoint(tmp_path / "m", gpt2_weights(), config=config)
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}") if "\\" not in message else message):
        load_gpt2(str(folder))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    w = gpt2_weights()
    del w["h.1.mlp.c_fc.bias"]
    w["h.0.attn.rotary.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"missing keys \['h.1.mlp.c_fc.bias'\] \(1\); unexpected keys "
                                         r"\['transformer.h.0.attn.rotary.weight'\] \(1\)"):
        load_gpt2(str(write_checkpoint(tmp_path / "m", w)))
    with pytest.raises(ValueError, match=r"missing keys \['h.2.ln_1.weight'"):  # config says 3 layers, file has 2
        load_gpt2(str(write_checkpoint(tmp_path / "n", gpt2_weights(), config=hf_config(n_layer=3))))


def test_a_shape_that_does_not_match_the_config_is_named(tmp_path):
    w = gpt2_weights()
    w["h.0.attn.c_attn.weight"] = w["h.0.attn.c_attn.weight"].T.contiguous()  # stored as a Linear would be
    with pytest.raises(ValueError, match=r"transformer.h.0.attn.c_attn.weight \(48, 16\) \(config.json says \(16, 48\)\)"):
        load_gpt2(str(write_checkpoint(tmp_path / "m", w)))
    with pytest.raises(ValueError, match=r"wte.weight \(50, 16\) \(config.json says \(60, 16\)\)"):
        load_gpt2(str(write_checkpoint(tmp_path / "n", gpt2_weights(), config=hf_config(vocab_size=60))))


def test_truncated_or_corrupt_weights_are_clear_errors(tmp_path):
    folder = write_checkpoint(tmp_path / "m", gpt2_weights())
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable safetensors file \\(truncated or corrupt"):
        load_gpt2(str(folder))
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_gpt2(str(folder))
    folder = write_checkpoint(tmp_path / "b", gpt2_weights(), fmt="bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a readable torch file"):
        load_gpt2(str(folder))


def test_non_finite_weights_are_refused(tmp_path):
    w = gpt2_weights()
    w["ln_f.weight"][3] = float("nan")
    with pytest.raises(ValueError, match="transformer.ln_f.weight is not finite"):
        load_gpt2(str(write_checkpoint(tmp_path / "m", w)))


def test_gptconfig_checks_its_new_fields():
    assert GPTConfig().activation == "gelu" and GPTConfig().layer_norm_eps == 1e-5  # every preset keeps these
    with pytest.raises(ValueError, match=r"activation must be one of \['gelu', 'gelu_new'\], got 'relu'"):
        GPTConfig(activation="relu")
    with pytest.raises(ValueError, match=r"layer_norm_eps must be a number in \(0, 1\), e.g. 1e-5, got -1"):
        GPTConfig(layer_norm_eps=-1)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, layer_norm_eps=1e-3, activation="gelu_new"))
    assert model.blocks[0].ln_1.eps == 1e-3 and model.ln_f.eps == 1e-3
    x = torch.randn(5, 8)
    mlp = model.blocks[0].mlp
    assert torch.allclose(mlp(x), mlp.down_proj(F.gelu(mlp.up_proj(x), approximate="tanh")))
