"""The cost model against measurement, and experiments/scale.py end to end, at toy sizes."""
import argparse
import contextlib
import copy
import json

import pytest
import torch

from experiments import scale
from experiments.lib import cost_model, extrapolation, model_variants
from experiments.lib.memory import measure_training_memory
from nanogpt.model import GPT, GPTConfig
from nanogpt.presets import config_from_preset
from tests.test_experiments import is_png

TOY_SIZES = [GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32),
             GPTConfig(n_layer=3, n_head=3, n_embd=96, block_size=16, bias=False, tie_weights=False)]
VARIANTS = [name for name in model_variants.VARIANTS if name != "qlora" or model_variants.qlora_available()]


@pytest.mark.parametrize("config", TOY_SIZES, ids=["tied-bias", "untied-no-bias"])
@pytest.mark.parametrize("name", VARIANTS)
def test_cost_model_predicts_measured_memory_to_the_byte(config, name):
    """Weights, gradients, optimizer state and saved activations of one training step, read from
    the tensors (memory.py), equal the cost model's prediction exactly, at batch 1 and 3."""
    torch.manual_seed(0)
    base = GPT(config)
    for batch in (1, 3):
        model = model_variants.make_variant(copy.deepcopy(base), name)
        x, y = (torch.randint(0, 256, (batch, config.block_size)) for _ in range(2))  # (B, T) each, own storages
        measured = measure_training_memory(model, model_variants.make_optimizer(model, name), x, y, contextlib.nullcontext())
        predicted = scale.predict(config, name, batch, "cpu")
        assert predicted["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert {part: predicted["bytes"][part] for part in ("weights", "grads", "optimizer", "activations")} == {
            "weights": measured["params"], "grads": measured["grads"], "optimizer": measured["optimizer"],
            "activations": measured["activations"]}


@pytest.mark.parametrize("name", VARIANTS)
def test_cost_model_predicts_autocast_activations(name):
    """Under bf16 autocast (CUDA's path, run here on the CPU), each linear saves its own bf16 copy of
    an fp32 input and of its weight: the prediction still matches to the byte."""
    config = TOY_SIZES[0]
    torch.manual_seed(0)
    model = model_variants.make_variant(GPT(config), name)
    x, y = (torch.randint(0, 256, (2, config.block_size)) for _ in range(2))  # (B, T) each
    measured = measure_training_memory(model, model_variants.make_optimizer(model, name), x, y,
                                       torch.autocast("cpu", dtype=torch.bfloat16))
    spec = model_variants.VARIANTS[name]
    predicted = cost_model.predict(cost_model.shape_of(config), spec["method"], spec["r"] or 8,
                                   spec["targets"] or "all-linear", 2, config.block_size, autocast=True)
    assert predicted["bytes"]["activations"] == measured["activations"]


@pytest.mark.parametrize("preset", ["tiny", "small", "gpt2-small", "gpt2-medium", "gpt2-large"])
def test_parameter_counts_of_the_presets(preset):
    config = config_from_preset(preset)
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(config)
    predicted = cost_model.predict(cost_model.shape_of(config), "full", seq_len=8)
    assert predicted["total_params"] == model.num_parameters()
    assert predicted["files"]["checkpoint"] == 4 * model.num_parameters()


def test_quantized_bytes_are_the_papers_4_127_bits():
    n = 64 * 256 * 10  # ten second-level blocks exactly
    assert cost_model.quantized_bytes(n) == n // 2 + n // 64 + 4 * 10 + 4
    assert cost_model.quantized_bytes(n, double_quant=False) == n // 2 + 4 * (n // 64)
    assert 8 * cost_model.quantized_bytes(n) / n == pytest.approx(4 + 8 / 64 + 32 / (64 * 256) + 32 / n)  # + the mean
    assert cost_model.quantized_bytes(65) == 64 + 2 + 4 + 4  # two blocks, the second padded


def test_flops_split_as_the_derivations_say():
    config = TOY_SIZES[0]
    shape, N, T = cost_model.shape_of(config), 2 * 32, 32
    full = cost_model.predict(shape, "full", batch_size=2, seq_len=T)["flops"]
    lora = cost_model.predict(shape, "lora", r=4, batch_size=2, seq_len=T)["flops"]
    linear = 2 * N * sum(i * o for i, o in [(64, 64)] * 4 + [(64, 256), (256, 64)]) * config.n_layer
    head, attention = 2 * N * 64 * 256, 2 * N * T * 64 * config.n_layer
    assert full["forward"] == linear + head + attention
    assert full["weight_grads"] == linear + head  # attention has no weights
    assert full["input_grads"] == linear + head + 2 * attention
    assert lora["weight_grads"] == 0 and full["adapter"] == 0
    per_layer = sum(i + o for i, o in [(64, 64)] * 4 + [(64, 256), (256, 64)])
    # 6 N r (in + out) per adapted linear, less (g B) A for q, k, v of the first block, whose input needs no grad
    assert lora["adapter"] == 6 * N * 4 * per_layer * config.n_layer - 3 * 2 * N * 4 * 64
    assert lora["input_grads"] == full["input_grads"] - 3 * 2 * N * 64 * 64


def test_extrapolation_shapes_and_papers_arithmetic():
    gpt3 = cost_model.predict(extrapolation.GPT3, "lora", r=4, targets=["q_proj", "v_proj"], seq_len=2048, dtype="fp16")
    C = 12288
    assert gpt3["total_params"] - gpt3["trainable_params"] == 96 * (12 * C * C + 13 * C) + (50257 + 2048 + 2) * C
    assert gpt3["trainable_params"] == 96 * 2 * 4 * (C + C)  # 18.9M: the paper's 35 MB checkpoint in fp16
    assert gpt3["files"]["adapter"] == 2 * gpt3["trainable_params"]
    llama = cost_model.predict(extrapolation.LLAMA_65B, "full", seq_len=512, dtype="bf16", optimizer_dtype="fp32")
    assert llama["total_params"] == pytest.approx(65.2e9, rel=0.005)  # LLaMA's reported 65.2B
    assert llama["bytes"]["weights"] + llama["bytes"]["grads"] + llama["bytes"]["optimizer"] == pytest.approx(
        12 * llama["total_params"], rel=1e-6)  # 2 + 2 + 8 bytes per parameter: the paper's > 780 GB
    rows = {row["key"]: row for row in extrapolation.extrapolate()["rows"]}
    assert rows["llama_qlora"]["also"]["bits per quantized weight"] == pytest.approx(4.127, abs=1e-3)


def run_toy(tmp_path, *extra):
    out = tmp_path / "scale"
    argv = ["--sizes", "tiny", "--block-size", "16", "--batch-size", "2", "--rounds", "2", "--memory-batches", "1,2",
            "--no-progress", "--out", str(out), "--docs", str(tmp_path / "docs" / "scale.md"), *extra]
    return scale.main(argv), out


def test_scale_end_to_end_writes_records_plots_and_docs(tmp_path):
    data, out = run_toy(tmp_path, "--no-peak", "--variants", "full,lora,floor,qlora")
    names = list(data["sizes"][0]["variants"])
    assert names == ["full", "lora", "floor"] + (["qlora"] if model_variants.qlora_available() else [])
    assert (data["qlora_note"] is None) == model_variants.qlora_available()
    size = data["sizes"][0]
    for name, v in size["variants"].items():
        m, p = v["memory"]["measured"], v["memory"]["predicted"]
        assert m == p  # every part, to the byte
        assert len(v["step_seconds"]["step"]) == 2
        assert set(v["activations_by_batch"]) == {"1", "2"}
    assert size["variants"]["floor"]["file"] is None
    assert size["variants"]["lora"]["file"]["kind"] == "adapter"
    ratios = size["ratios"]["lora/full"]
    assert 0 < ratios["flop_model"] < 1 and ratios["step"]["q1"] <= ratios["step"]["median"] <= ratios["step"]["q3"]
    assert json.loads((out / "scale.json").read_text()) == data
    for name in ("memory_by_part", "memory_ratio", "speedup", "file_sizes", "where_lora_pays", "extrapolation"):
        assert is_png(out / f"{name}.png")
    docs = (tmp_path / "docs" / "scale.md").read_text()
    assert "predicted to the byte at every size and variant" in docs
    assert f"| `tiny` | {size['variants']['full']['total_params']:,} |" in docs
    assert "](../scale/memory_ratio.png)" in docs  # plots linked relative to the write-up
    # --report rewrites the write-up from the records alone; a finished run is not overwritten by accident
    (tmp_path / "docs" / "scale.md").unlink()
    scale.main(["--report", "--out", str(out), "--docs", str(tmp_path / "docs" / "scale.md")])
    assert (tmp_path / "docs" / "scale.md").read_text() == docs
    with pytest.raises(SystemExit):
        run_toy(tmp_path, "--no-peak")


def test_peak_memory_in_a_fresh_process(tmp_path):
    args = scale.make_parser().parse_args(["--block-size", "16", "--batch-size", "2"])
    record = scale.peak_in_fresh_process("tiny", "full", args)
    predicted = scale.predict(config_from_preset("tiny", block_size=16), "full", 2, "cpu")["bytes"]["total"]
    assert record["steps"] == 2 and record["peak"] >= record["before_steps"] > record["baseline"]
    assert 0.8 * predicted < record["measured"] < 2 * predicted  # weights, grads, moments, activations, buffers


@pytest.mark.parametrize("flags, message", [
    (["--sizes", "tiny,huge"], "must be one of ['tiny'"),
    (["--variants", "lora,floor"], "must name full and lora"),
    (["--memory-batches", "1,0"], "positive integers"),
    (["--block-size", "-4"], "must be an integer >= 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--seed", "-1"], "must be an integer in 0.."),
])
def test_bad_flags_are_rejected_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit):
        scale.make_parser().parse_args(flags)
    assert message in capsys.readouterr().err


def test_report_without_records_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        scale.main(["--report", "--out", str(tmp_path / "nothing")])
    assert "run python -m experiments.scale first" in capsys.readouterr().err


def test_unknown_targets_and_methods_are_clear_errors():
    shape = cost_model.shape_of(TOY_SIZES[0])
    with pytest.raises(ValueError, match="gate_proj"):
        cost_model.predict(shape, "lora", targets=["gate_proj"], seq_len=8)
    with pytest.raises(ValueError, match="method must be one of"):
        cost_model.predict(shape, "adalora", seq_len=8)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        scale.sizes_flag("")


def test_a_forward_only_activation_count_leaves_nothing_alive():
    """SavedActivations without a backward pass (scale.py counts activations at several batches so)
    must let the graph go: a saved output kept as it came would hold its own graph in a cycle."""
    import gc

    from experiments.lib.memory import saved_activation_bytes

    model = GPT(TOY_SIZES[0])
    x, y = (torch.randint(0, 256, (2, 32)) for _ in range(2))
    saved_activation_bytes(model, x, y)  # warm-up: lazily made objects
    gc.collect()
    before = sum(type(o) is torch.Tensor for o in gc.get_objects())
    assert saved_activation_bytes(model, x, y) > 0
    gc.collect()
    assert sum(type(o) is torch.Tensor for o in gc.get_objects()) == before
