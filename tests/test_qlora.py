"""QLoRA: the 4-bit data types, block-wise quantization and its bytes, double quantization,
the QLoRA layer against "dequantize, then LoRA", memory, merging, adapter files, bad input."""
import copy
import math

import pytest
import torch
import torch.nn as nn

import minilora
from experiments.lib.finetune import make_optimizer, prepare_model
from experiments.lib.memory import SavedActivations, measure_training_memory, parameter_bytes
from minilora import (LoRALinear, QLoRALinear, QuantizedWeight, apply_lora, quantize_fp4, quantize_int4,
                      quantize_nf4, unload_lora)
from minilora.qlora import Linear4bit, merge_into_4bit_, requantization_error
from minilora.quantize import (DYNAMIC_8BIT, LEVELS, dynamic_8bit_levels, normal_float_levels, pack_4bit,
                               packed_nbytes, unpack_4bit)
from nanogpt import GPT, config_from_preset
from nanogpt.device import autocast

# The NF4 table as published (QLoRA paper, Appendix E; bitsandbytes' NF4 code), float32 values.
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
QUANTIZERS = {"nf4": quantize_nf4, "fp4": quantize_fp4, "int4": quantize_int4}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def gaussian(*shape, seed=0, std=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


# -- the data types ------------------------------------------------------------------------

def test_nf4_levels_are_normal_quantiles_and_match_the_published_table():
    levels = LEVELS["nf4"]
    assert torch.equal(levels, torch.tensor(PUBLISHED_NF4))  # bit for bit, with the reference's rounded delta
    # The unrounded delta = 1/2 (1 - 1/30 + 1 - 1/32) gives the same table to 1e-6.
    exact = normal_float_levels(offset=1 - 0.5 * (1 / 30 + 1 / 32))
    assert (exact - torch.tensor(PUBLISHED_NF4)).abs().max() < 1e-6
    # Asymmetric: 7 negative levels, an exact zero, 8 positive; normalised to [-1, 1].
    assert (levels < 0).sum() == 7 and (levels == 0).sum() == 1 and (levels > 0).sum() == 8
    assert levels[0] == -1 and levels[-1] == 1 and torch.all(levels[1:] > levels[:-1])
    # Each positive level is a quantile of N(0, 1), scaled by the outermost one.
    top = torch.special.ndtri(torch.tensor(0.9677083, dtype=torch.float64))
    p = torch.special.ndtr(levels[8:].double() * top)  # probabilities of the positive levels
    assert torch.allclose(p[1:] - p[:-1], (p[-1] - 0.5) / 8 * torch.ones(7, dtype=torch.float64), atol=1e-6)


def test_fp4_int4_and_dynamic_8bit_levels():
    assert LEVELS["fp4"].tolist() == pytest.approx([v / 6 for v in (-6, -4, -3, -2, -1.5, -1, -0.5, 0,
                                                                    0.5, 1, 1.5, 2, 3, 4, 6)])
    assert LEVELS["int4"].tolist() == pytest.approx([k / 7 for k in range(-7, 8)])
    levels = dynamic_8bit_levels()
    assert len(levels) == 256 and len(set(levels.tolist())) == 256 and torch.all(levels[1:] > levels[:-1])
    assert levels.max() == 1 and levels.min() > -1 and (levels == 0).sum() == 1
    # 2^e levels in the decade of 10^(e - 6), e = 0..6, the smallest 0.55e-6.
    positive = levels[levels > 0][:-1]  # without 1.0
    decades = torch.floor(torch.log10(positive.double()) + 1e-9)
    assert [(decades == e - 7).sum().item() for e in range(7)] == [2 ** e for e in range(7)]
    assert positive.min().item() == pytest.approx(0.55e-6)


def test_packing_puts_two_codes_in_each_byte():
    codes = torch.tensor([1, 2, 15, 0, 7, 9])
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.tolist() == [0x12, 0xF0, 0x79]
    assert torch.equal(unpack_4bit(packed), codes.to(torch.uint8))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int4"])
def test_each_value_goes_to_its_nearest_level_in_its_block(quant_type):
    weight = gaussian(32, 96, seed=1)
    q = QUANTIZERS[quant_type](weight, double_quant=False)
    blocks = weight.view(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    levels = LEVELS[quant_type]
    nearest = levels[((blocks / absmax).unsqueeze(-1) - levels).abs().argmin(-1)]  # brute force
    assert torch.equal(q.dequantize(), (nearest * absmax).view(32, 96))
    assert torch.equal(q.absmax, absmax.view(-1))
    # Round trip error: at most half the widest gap between two levels, times the block's absmax.
    half_gap = (levels[1:] - levels[:-1]).max() / 2
    assert torch.all((q.dequantize() - weight).abs().view(-1, 64) <= half_gap * absmax + 1e-7)


def test_nf4_has_the_lowest_error_on_normal_data():
    weight = gaussian(256, 256, seed=2)
    errors = {t: (f(weight).dequantize() - weight).norm() / weight.norm() for t, f in QUANTIZERS.items()}
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"]
    assert 0.05 < errors["nf4"] < 0.12  # about 9% on N(0, 1) at block 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(16, 24), (7, 9), (1000,), (3, 5, 64)])
def test_dequantize_gives_the_shape_and_dtype_back(dtype, shape):
    weight = gaussian(*shape, seed=3).to(dtype)
    for double_quant in (False, True):
        q = quantize_nf4(weight, double_quant=double_quant)
        restored = q.dequantize()
        assert restored.shape == weight.shape and restored.dtype == dtype
        assert ((restored.float() - weight.float()).norm() / weight.float().norm()) < 0.15
        assert q.dequantize(torch.float64).dtype == torch.float64


def test_sizes_that_are_not_a_multiple_of_the_block_are_padded_with_zeros():
    weight = gaussian(7, 9, seed=4)  # 63 values: one block of 64 with one zero of padding
    q = quantize_nf4(weight, double_quant=False)
    assert q.codes.numel() == 32 and q.absmax.numel() == 1 and q.nbytes == 32 + 4 == packed_nbytes(63, 64, False)
    padded = torch.cat([weight.view(-1), torch.zeros(1)])
    assert torch.equal(q.dequantize().view(-1), quantize_nf4(padded, double_quant=False).dequantize()[:63])
    q = quantize_nf4(gaussian(1000, seed=4), block_size=64)  # 16 blocks: 15 full, one of 40 values
    assert q.nbytes == 16 * 32 + 16 + 4 + 4 == packed_nbytes(1000, 64, True)


def test_an_all_zero_block_stays_zero():
    weight = torch.cat([torch.zeros(64), gaussian(64, seed=5)]).view(2, 64)
    for double_quant in (False, True):
        restored = quantize_nf4(weight, double_quant=double_quant).dequantize()
        assert torch.all(restored[0] == 0) and torch.all(torch.isfinite(restored))


# -- bytes, and double quantization ----------------------------------------------------------

@pytest.mark.parametrize("numel", [16384, 65536, 3 * 16384])
def test_bits_per_value_are_the_papers_arithmetic_read_from_the_tensors(numel):
    weight = gaussian(numel // 128, 128, seed=6, std=0.02)
    plain = quantize_nf4(weight, double_quant=False)
    assert plain.codes.dtype == torch.uint8 and plain.codes.numel() == numel // 2
    assert plain.nbytes == sum(b.untyped_storage().nbytes() for b in plain.buffers())
    assert 8 * plain.nbytes / numel == 4 + 32 / 64 == 4.5
    dq = quantize_nf4(weight, double_quant=True)
    assert dq.absmax_codes.dtype == torch.uint8 and dq.absmax_codes.numel() == numel // 64
    assert dq.absmax_scales.dtype == torch.float32 and dq.absmax_scales.numel() == numel // (64 * 256)
    assert dq.absmax_mean.numel() == 1  # the one fp32 mean per tensor, beyond the paper's arithmetic
    assert 8 * (dq.nbytes - 4) / numel == 4 + 8 / 64 + 32 / (64 * 256) == 4.126953125
    assert dq.nbytes == packed_nbytes(numel, 64, True) and plain.nbytes == packed_nbytes(numel, 64, False)
    assert 8 * (plain.nbytes - dq.nbytes + 4) / numel == pytest.approx(0.373, abs=5e-4)  # what it saves


def test_double_quantization_subtracts_the_mean_and_keeps_the_constants_close():
    weight = gaussian(512, 128, seed=7, std=0.02)  # 1024 blocks: 4 groups of 256 constants
    plain = quantize_nf4(weight, double_quant=False)
    dq = quantize_nf4(weight, double_quant=True)
    assert torch.equal(dq.absmax_mean, plain.absmax.mean())
    centred = (plain.absmax - plain.absmax.mean()).view(4, 256)
    assert torch.equal(dq.absmax_scales, centred.abs().amax(1))
    # Each constant is the level of DYNAMIC_8BIT nearest to it (relative to its group's scale), plus the mean.
    scaled = centred / dq.absmax_scales.unsqueeze(1)
    nearest = DYNAMIC_8BIT[(scaled.reshape(-1, 1) - DYNAMIC_8BIT).abs().argmin(1)]
    assert torch.allclose(dq.block_absmax(), nearest * dq.absmax_scales.repeat_interleave(256) + dq.absmax_mean)
    assert ((dq.block_absmax() - plain.absmax).abs() / plain.absmax).max() < 0.01
    assert (dq.dequantize() - plain.dequantize()).norm() / plain.dequantize().norm() < 0.01


# -- bad input to the quantizers ------------------------------------------------------------

@pytest.mark.parametrize("block_size", [63, 0, -64, True, 64.0, "64"])
def test_a_block_size_that_is_not_a_positive_even_integer_is_refused(block_size):
    with pytest.raises(ValueError, match=f"block_size must be a positive even integer.*got {block_size!r}"):
        quantize_nf4(gaussian(4, 64), block_size=block_size)


def test_quantizer_input_errors_name_the_value():
    with pytest.raises(ValueError, match=r"quant_type must be one of \['nf4', 'fp4', 'int4'\], got 'nf3'"):
        QuantizedWeight(gaussian(4, 64), "nf3")
    with pytest.raises(TypeError, match="floating-point weight tensor, got a tensor of dtype torch.int64"):
        quantize_nf4(torch.ones(4, 64, dtype=torch.long))
    with pytest.raises(TypeError, match="got list"):
        quantize_nf4([1.0, 2.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_nf4(torch.tensor([1.0, float("nan")] * 32))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.zeros(0, 64))
    with pytest.raises(TypeError, match="double_quant must be True or False, got 'yes'"):
        quantize_nf4(gaussian(4, 64), double_quant="yes")


# -- the QLoRA layer --------------------------------------------------------------------------

def qlora_and_reference(in_features, out_features, bias=True, dropout=0.0, seed=0):
    """A QLoRALinear with a trained-like adapter, and a LoRALinear whose W0 is the QLoRA layer's
    dequantized W0 with the same A and B: "dequantize, then LoRA"."""
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    qlora = QLoRALinear(copy.deepcopy(linear), r=4, alpha=8, dropout=dropout)
    with torch.no_grad():
        qlora.lora_B.normal_()
    reference = LoRALinear(copy.deepcopy(linear), r=4, alpha=8, dropout=dropout)
    with torch.no_grad():
        reference.base.weight.copy_(qlora.base.weight.dequantize())
        reference.lora_A.copy_(qlora.lora_A)
        reference.lora_B.copy_(qlora.lora_B)
    return qlora, reference


def forward_backward(layer, x, grad_y, seed=123):
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout mask for both layers
    y = layer(x)
    (y * grad_y).sum().backward()
    params = [layer.lora_A, layer.lora_B] + ([layer.base.bias] if layer.base.bias is not None else [])
    return [y.detach(), x.grad] + [p.grad for p in params if p.grad is not None]


# The fast path's routes: output narrower, as wide, wider than the input; too few tokens to fold (15), enough (128).
@pytest.mark.parametrize("in_features,out_features", [(64, 32), (64, 64), (32, 96)])
@pytest.mark.parametrize("tokens", [(3, 5), (4, 32)])
@pytest.mark.parametrize("bias,dropout", [(True, 0.0), (False, 0.0), (True, 0.25)])
def test_qlora_equals_lora_on_the_dequantized_weight(in_features, out_features, tokens, bias, dropout):
    qlora, reference = qlora_and_reference(in_features, out_features, bias, dropout)
    x = gaussian(*tokens, in_features, seed=8)
    grad_y = gaussian(*tokens, out_features, seed=9)
    got, expected = forward_backward(qlora, x, grad_y), forward_backward(reference, x, grad_y)
    assert len(got) == len(expected) == 4  # y, dL/dx, dL/dA, dL/dB (no bias gradient: it is frozen)
    for a, b in zip(got, expected):  # the fast path, on the same W0 values: the same numbers exactly
        assert torch.equal(a, b)
    qlora.fused = False  # the formula as written, on Linear4bit's forward: equal up to fp32 rounding
    for a, b in zip(forward_backward(qlora, x, grad_y), expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_w0_is_dequantized_in_forward_and_again_in_backward_and_never_saved(monkeypatch):
    qlora, _ = qlora_and_reference(48, 80)
    calls = []
    dequantize = QuantizedWeight.dequantize
    monkeypatch.setattr(QuantizedWeight, "dequantize", lambda self, dtype=None: calls.append(dtype) or
                        dequantize(self, dtype))
    x = gaussian(4, 32, 48, seed=10).requires_grad_(True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        y = qlora(x)
    assert calls == [torch.float32]  # forward: once, into the compute dtype
    assert (80, 48) not in shapes  # no full-precision W0 is kept for backward
    y.sum().backward()
    assert calls == [torch.float32, torch.float32]  # backward: once more, for dL/dx
    calls.clear()
    qlora(gaussian(4, 32, 48, seed=10)).sum().backward()  # an input that needs no gradient
    assert len(calls) == 1  # backward needs no W0 at all


def test_only_the_adapters_and_the_input_get_gradients():
    torch.manual_seed(0)
    model = GPT(config_from_preset("tiny", n_layer=2, n_embd=64, n_head=2, block_size=16))
    apply_lora(model, TARGETS, r=4, alpha=8, quantize="nf4")
    x = torch.randint(0, 256, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert len(with_grad) == 2 * 6 * 2
    for _, layer in minilora.lora_layers(model):
        assert isinstance(layer.base.weight, QuantizedWeight)
        assert not any(isinstance(t, nn.Parameter) for t in layer.base.weight.buffers())
    hidden = torch.randn(2, 16, 64, requires_grad=True)
    model.blocks[0].attn.q_proj(hidden).sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def toy_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=2, n_embd=64, n_head=2, block_size=16))


def test_qlora_starts_as_the_quantized_base_and_unloads_to_full_precision():
    base = toy_gpt()
    model = apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, quantize="nf4")
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with minilora.disable_lora(model):
        quantized_base = model(x)[0]
    torch.testing.assert_close(model(x)[0], quantized_base, rtol=1e-5, atol=1e-5)  # B = 0
    assert (quantized_base - base(x)[0]).abs().max() > 1e-4  # 4 bits change the function
    for _, layer in minilora.lora_layers(model):
        with torch.no_grad():
            layer.lora_B.normal_(std=0.05)
    trained = model(x)[0]
    unloaded = unload_lora(copy.deepcopy(model))
    assert not minilora.lora_layers(unloaded) and not minilora.quantize.quantized_weights(unloaded)
    linears = [m for n, m in unloaded.named_modules() if n.split(".")[-1] in TARGETS]
    assert len(linears) == 12 and all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in linears)
    assert not any(p.requires_grad for m in linears for p in m.parameters())
    torch.testing.assert_close(unloaded(x)[0], trained, rtol=1e-4, atol=1e-4)


def test_merging_into_4_bits_is_refused_and_what_it_would_lose_is_measured():
    model = apply_lora(toy_gpt(), TARGETS, r=4, alpha=8, quantize="nf4")
    with pytest.raises(RuntimeError, match="4-bit base.*unload_lora"):
        minilora.merge_lora(model)
    assert not any(layer.merged for _, layer in minilora.lora_layers(model))  # nothing half-merged
    layer = model.blocks[0].mlp.up_proj
    with pytest.raises(RuntimeError, match="cannot merge into a 'nf4' base"):
        layer.merge()
    with pytest.raises(ValueError, match="delta W is zero"):
        requantization_error(layer)
    with torch.no_grad():  # a small update, as fine-tuning makes: most of it rounds away
        layer.lora_B.normal_(std=1e-3)
    small = requantization_error(layer)
    assert small["unchanged"] > 0.9 and small["lost"] > 0.5 and small["kept"] < 0.5
    with torch.no_grad():  # an update as large as W0 itself survives, up to the 4-bit error
        layer.lora_B.normal_(std=1.0)
    large = requantization_error(layer)
    assert large["lost"] < 0.2 and large["kept"] > 0.9
    x = torch.randn(3, 64)
    before = layer(x)
    merge_into_4bit_(layer)
    assert layer.active_adapter is None and isinstance(layer.base.weight, QuantizedWeight)
    assert (layer(x) - before).norm() / before.norm() < 0.2


def test_a_qlora_adapter_loads_onto_the_full_precision_base_and_onto_a_4bit_one(tmp_path):
    base = toy_gpt()
    model = apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, quantize="nf4")
    for _, layer in minilora.lora_layers(model):
        with torch.no_grad():
            layer.lora_B.normal_(std=0.05)
    path = tmp_path / "adapter.pt"
    minilora.save_adapter(model, path)
    on_full = minilora.load_adapter(copy.deepcopy(base), path)
    layers = minilora.lora_layers(on_full)
    assert len(layers) == 12 and all(type(layer) is LoRALinear for _, layer in layers)
    for (_, a), (_, b) in zip(layers, minilora.lora_layers(model)):
        assert torch.equal(a.lora_A, b.lora_A) and torch.equal(a.lora_B, b.lora_B)
    on_4bit = minilora.load_adapter(apply_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, quantize="nf4"), path)
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(on_4bit(x)[0], model(x)[0])  # quantization is deterministic
    # A second adapter on the 4-bit layers: load_adapter adds it with quantize=None, the base stays 4-bit.
    minilora.save_adapter(model, tmp_path / "other.pt")
    minilora.load_adapter(on_4bit, tmp_path / "other.pt", adapter_name="other")
    assert all(isinstance(layer, QLoRALinear) and set(layer.adapters) == {"default", "other"}
               for _, layer in minilora.lora_layers(on_4bit))


def test_state_dict_and_deepcopy_carry_the_4bit_weights():
    model = apply_lora(toy_gpt(), TARGETS, r=4, alpha=8, quantize="nf4")
    state = model.state_dict()
    assert state["blocks.0.attn.q_proj.base.weight.codes"].dtype == torch.uint8
    other = apply_lora(toy_gpt(seed=1), TARGETS, r=4, alpha=8, quantize="nf4")
    other.load_state_dict(state)
    x = torch.randint(0, 256, (2, 16))
    assert torch.equal(other(x)[0], model(x)[0]) and torch.equal(copy.deepcopy(model)(x)[0], model(x)[0])


def test_bf16_autocast_dequantizes_into_bf16_and_the_adapters_get_fp32_gradients():
    qlora, _ = qlora_and_reference(64, 32)
    x = gaussian(4, 32, 64, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = qlora(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert qlora.lora_A.grad.dtype == torch.float32 and qlora.lora_B.grad.dtype == torch.float32


# -- memory ------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantize", ["nf4", "fp4", "int4"])
def test_measured_bytes_equal_the_analytic_count_for_a_4bit_base(quantize):
    spec = {"method": "lora", "variant": "lora", "r": 4, "alpha": 8, "targets": TARGETS, "lr": 1e-3,
            "quantize": quantize}
    model = prepare_model(toy_gpt(), spec)
    x = torch.randint(0, 256, (4, 16))
    memory = measure_training_memory(model, make_optimizer(model, spec, 0.0), x, x, autocast("cpu"))
    for part in ("params", "grads", "optimizer"):
        assert memory[part] == memory["analytic"][part], part
    # 2 blocks x (4 x 64 x 64 + 2 x 64 x 256) = 98,304 quantized values, 1536 blocks of 64, 6 groups of 256.
    quantized = 2 * (4 * 64 * 64 + 2 * 64 * 256)
    n_params = sum(p.numel() for p in model.parameters())
    four_bit = quantized // 2 + quantized // 64 + 4 * 2 * 6 * 1 + 4 * 12  # codes, 8-bit constants, scales, means
    assert memory["params"] == 4 * n_params + four_bit
    lora = prepare_model(toy_gpt(), {**spec, "quantize": None})
    assert parameter_bytes(lora) - memory["params"] == 4 * quantized - four_bit
    assert minilora.count_parameters(model) == minilora.count_parameters(lora)  # the same values, fewer bits


def test_saved_activations_of_qlora_equal_lora():
    x = torch.randint(0, 256, (4, 16))
    spec = {"method": "lora", "variant": "lora", "r": 4, "alpha": 8, "targets": TARGETS, "lr": 1e-3}
    saved = {}
    for q in (None, "nf4"):
        model = prepare_model(toy_gpt(), {**spec, "quantize": q} if q else spec)
        with SavedActivations(model) as counter:
            model(x, x)
        saved[q] = counter.bytes
    assert saved["nf4"] == saved[None]


# -- bad input to apply_lora --------------------------------------------------------------------

def test_apply_lora_quantize_errors_are_clear_and_leave_the_model_unchanged():
    model = toy_gpt()
    before = copy.deepcopy(model.state_dict())
    cases = [
        (dict(quantize="nf3"), ValueError, r"quantize must be one of \[None, 'nf4', 'fp4', 'int4'\], got 'nf3'"),
        (dict(quantize="nf4", quant_block_size=63), ValueError, "block_size must be a positive even integer.*63"),
        (dict(quantize="nf4", double_quant=1), TypeError, "double_quant must be True or False"),
        (dict(quantize="nf4", dora=True), ValueError, "dora=True cannot be combined with a 'nf4' base"),
        (dict(quantize="int4", pissa=True), ValueError, "pissa=True cannot be combined with a 'int4' base"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            apply_lora(model, TARGETS, r=4, alpha=8, **kwargs)
    with pytest.raises(ValueError, match="quantize='nf4' applies to nn.Linear layers only; 'wpe' is a Embedding"):
        apply_lora(model, ["q_proj", "wpe"], r=4, alpha=8, quantize="nf4")
    assert not minilora.lora_layers(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(TypeError, match="Linear4bit quantizes an nn.Linear, got Embedding"):
        Linear4bit(nn.Embedding(4, 4))
    with pytest.raises(TypeError, match="QLoRALinear wraps an nn.Linear or a Linear4bit, got Conv1d"):
        QLoRALinear(nn.Conv1d(2, 2, 1))


def test_existing_adapters_and_quantize():
    plain = apply_lora(toy_gpt(), ["q_proj"], r=4, alpha=8)
    with pytest.raises(ValueError, match="already holds adapters on a full-precision base"):
        apply_lora(plain, ["q_proj"], r=4, alpha=8, quantize="nf4", adapter_name="b")
    model = apply_lora(toy_gpt(), ["q_proj"], r=4, alpha=8, quantize="nf4")
    with pytest.raises(ValueError, match="already has a 'nf4' base; quantize='fp4' cannot change it"):
        apply_lora(model, ["q_proj"], r=4, alpha=8, quantize="fp4", adapter_name="b")
    with pytest.raises(ValueError, match="'blocks.0.attn.q_proj': dora=True cannot be combined with a 'nf4' base"):
        apply_lora(model, ["q_proj"], r=4, alpha=8, dora=True, adapter_name="b")
    assert all(list(layer.adapters) == ["default"] for _, layer in minilora.lora_layers(model))
    apply_lora(model, ["q_proj"], r=2, alpha=4, quantize="nf4", adapter_name="b")  # same type: fine
    minilora.set_adapter(model, "b")
    assert model.blocks[0].attn.q_proj.lora_A.shape == (2, 64)
    assert math.isclose(model.blocks[1].attn.q_proj.scaling, 2.0)
