"""The experiments end to end at toy size, and the memory accounting they rest on."""
import hashlib
import json
import os

import pytest
import torch

import minilora
from experiments import full_vs_lora, rank_sweep
from experiments.lib.common import parse_ranks
from experiments.lib.finetune import make_optimizer, prepare_model
from experiments.lib.memory import SavedActivations, analytic_bytes, measure_training_memory
from nanogpt import GPT, config_from_preset
from nanogpt.device import autocast

TOY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size", "4",
       "--pretrain-iters", "10", "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "2", "--no-progress",
       "--workers", "1"]
RECORD_KEYS = {
    "method", "variant", "r", "alpha", "targets", "lr", "steps", "batch_size", "block_size", "seed", "device",
    "quantize", "target_corpus", "source_corpus", "target_sha256", "source_sha256", "trainable_params", "total_params", "train_loss", "history",
    "base_target_loss", "base_source_loss", "final_target_loss", "final_source_loss", "wall_time_s",
    "median_step_s", "tokens_per_s", "saved_bytes", "memory",
    # full_vs_lora and rank_sweep hold out a test half: the base and final losses on it
    "base_target_test_loss", "base_source_test_loss", "final_target_test_loss", "final_source_test_loss",
}


def is_png(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_full_vs_lora_end_to_end(tmp_path, corpora):
    out = tmp_path / "fvl"
    full_vs_lora.main([*TOY, *corpora, "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    assert [r["method"] for r in records] == ["full", "lora"]
    info = json.loads((out / "run_info.json").read_text())
    assert (info["runs_planned"], info["runs_trained"]) == (2, 2)
    for record in records:
        assert set(record) == RECORD_KEYS
        assert len(record["train_loss"]) == 6
        assert [h["step"] for h in record["history"]] == [0, 3, 6]
        assert set(record["memory"]) >= {"params", "grads", "optimizer", "activations", "analytic"}
    full, lora = records
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert lora["saved_bytes"] < full["saved_bytes"]
    assert full["base_target_loss"] == lora["base_target_loss"]  # same base, same fixed eval batches
    for name in ("loss_curves.png", "costs.png", "memory_vs_batch.png"):
        assert is_png(out / name)
    by_batch = json.loads((out / "memory_vs_batch.json").read_text())
    assert [row["batch_size"] for row in by_batch] == [1, 4, 16, 64]
    # Activations grow with the batch; the weights do not.
    assert by_batch[-1]["lora"]["activations"] > 10 * by_batch[0]["lora"]["activations"]
    assert by_batch[-1]["full"]["params"] == by_batch[0]["full"]["params"]
    text = (out / "results.md").read_text()
    assert "| full fine-tuning |" in text and "Losses on test text" in text
    # The table reports the test half, which no choice read, not the validation half
    assert f"| {full['final_target_test_loss']:.3f} |" in text


def test_rank_sweep_end_to_end_and_runs_are_cached(tmp_path, corpora):
    out = tmp_path / "sweep"
    rank_sweep.main([*TOY, *corpora, "--ranks", "1,2", "--seeds", "1", "--rslora", "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    assert [(r["method"], r["variant"], r["r"]) for r in records] == [
        ("full", None, None), ("lora", "lora", 1), ("lora", "lora", 2), ("lora", "rslora", 2)]  # rsLoRA r=1 is LoRA r=1
    summary = json.loads((out / "rank_sweep.json").read_text())
    assert [g["name"] for g in summary["groups"]] == ["full fine-tuning", "LoRA r=1", "LoRA r=2", "rsLoRA r=1", "rsLoRA r=2"]
    assert summary["groups"][1]["target_loss"] == summary["groups"][3]["target_loss"]
    # Trainable parameters: r * (in + out) per adapted matrix; 1 block has q,k,v,o (32x32), up (32->128), down.
    per_rank = 4 * (32 + 32) + (32 + 128) + (128 + 32)
    assert records[1]["trainable_params"] == per_rank and records[2]["trainable_params"] == 2 * per_rank
    for name in ("final_loss_vs_rank.png", "params_memory_vs_rank.png", "loss_curves.png", "early_curves.png"):
        assert is_png(out / name)
    assert "| LoRA r=2 |" in (out / "results.md").read_text()
    cached = sorted(os.listdir(tmp_path / "cache" / "runs"))
    assert len([f for f in cached if f.endswith(".json")]) == 4
    assert len([f for f in cached if f.endswith(".adapter.pt")]) == 3  # each LoRA run keeps its adapter
    mtimes = [os.path.getmtime(tmp_path / "cache" / "runs" / f) for f in cached]
    rank_sweep.main([*TOY, *corpora, "--ranks", "1,2", "--seeds", "1", "--rslora", "--out", str(out)])  # not redone
    assert mtimes == [os.path.getmtime(tmp_path / "cache" / "runs" / f) for f in cached]
    assert len([d for d in os.listdir(tmp_path / "cache") if d.startswith("base-")]) == 1


def test_cache_is_keyed_by_corpus_content_not_name(tmp_path, corpora):
    """Editing a corpus file in place must not bring back the old results (issue: keyed by path)."""
    out = tmp_path / "fvl"
    args = [*TOY, *corpora, "--methods", "lora", "--memory-batches", "1", "--out", str(out)]
    full_vs_lora.main(args)
    first = json.loads((out / "records.json").read_text())[0]
    target = corpora[corpora.index("--target") + 1]
    assert first["target_sha256"] == hashlib.sha256(open(target, "rb").read()).hexdigest()
    with open(target, "a") as f:
        f.write("An edited corpus teaches something else entirely. " * 40)
    full_vs_lora.main(args)
    second = json.loads((out / "records.json").read_text())[0]
    assert second["target_sha256"] != first["target_sha256"]
    assert second["final_target_loss"] != first["final_target_loss"]  # trained again, on the new bytes
    runs = [f for f in os.listdir(tmp_path / "cache" / "runs") if f.endswith(".json")]
    assert len(runs) == 2
    source = corpora[corpora.index("--source") + 1]
    with open(source, "a") as f:
        f.write("x = 1\n" * 300)
    full_vs_lora.main(args)  # a new source corpus: a new base model too
    assert len([d for d in os.listdir(tmp_path / "cache") if d.startswith("base-")]) == 2


def toy_model():
    torch.manual_seed(0)
    return GPT(config_from_preset("tiny", n_layer=2, n_embd=32, n_head=2, block_size=16))


def toy_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 16), generator=g), torch.randint(0, 256, (4, 16), generator=g)


@pytest.mark.parametrize("spec", [
    {"method": "full", "lr": 1e-3},
    {"method": "lora", "variant": "lora", "r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"], "lr": 1e-3},
])
def test_measured_bytes_equal_the_analytic_formula(spec):
    model = prepare_model(toy_model(), spec)
    x, y = toy_batch()
    memory = measure_training_memory(model, make_optimizer(model, spec, 0.0), x, y, autocast("cpu"))
    for part in ("params", "grads", "optimizer"):
        assert memory[part] == memory["analytic"][part], part
    n_total = sum(p.numel() for p in model.parameters())
    assert memory["params"] == 4 * n_total
    assert memory["activations"] > 0


def test_lora_gradient_and_optimizer_bytes_are_the_adapters_alone():
    spec = {"method": "lora", "variant": "lora", "r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"], "lr": 1e-3}
    model = prepare_model(toy_model(), spec)
    x, y = toy_batch()
    memory = measure_training_memory(model, make_optimizer(model, spec, 0.0), x, y, autocast("cpu"))
    adapters = [p for n, p in model.named_parameters() if "lora_" in n]
    adapter_values = sum(p.numel() for p in adapters)
    assert adapter_values == 2 * 2 * 4 * (32 + 32)  # 2 blocks x (q, v) x r * (in + out)
    assert memory["grads"] == 4 * adapter_values
    assert memory["optimizer"] == 8 * adapter_values + 4 * len(adapters)
    assert analytic_bytes(model)["grads"] == 4 * minilora.count_parameters(model)[0]


def test_activation_counter_counts_a_tensor_saved_twice_once():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(128, 64)
    x_bytes, h_bytes = x.numel() * 4, 128 * 64 * 4
    with SavedActivations() as once:
        torch.tanh(x @ w)  # saves x (for w's gradient) and tanh's output
    assert once.bytes == x_bytes + h_bytes
    with SavedActivations() as twice:
        torch.tanh(x @ w) + torch.sigmoid(x @ w)  # both matmuls save the same x: one storage
    assert twice.bytes == x_bytes + 2 * h_bytes
    # A model's parameters are weights, not activations.
    layer = torch.nn.Linear(64, 64, bias=False)
    x_in = torch.randn(128, 64, requires_grad=True)
    with SavedActivations() as counted:
        layer(x_in)
    with SavedActivations(layer) as excluded:
        layer(x_in)
    assert counted.bytes == excluded.bytes + layer.weight.numel() * 4


def planned_runs(argv):
    """{(spec as JSON, seed)} that rank_sweep plans for these flags (before any work)."""
    args = rank_sweep.parse_args(argv)
    groups = rank_sweep.plan_groups(args, ["q_proj"])
    return [(json.dumps(spec, sort_keys=True), args.seed + k) for *_, spec in groups for k in range(args.seeds)]


def test_rank_sweep_default_is_the_quickstart_and_reproduce_the_three_seed_sweep():
    quick = rank_sweep.parse_args([])
    assert (quick.ranks, quick.seeds, quick.rslora, quick.full) == ([1, 4, 8, 16, 64], 1, False, True)
    assert quick.out == "results/rank_sweep"
    assert [name for name, *_ in rank_sweep.plan_groups(quick, ["q_proj"])] == [
        "full fine-tuning", "LoRA r=1", "LoRA r=4", "LoRA r=8", "LoRA r=16", "LoRA r=64"]
    assert len(planned_runs([])) == 6  # six runs: two at a time on two cores
    repro = rank_sweep.parse_args(["--reproduce"])
    assert (repro.ranks, repro.seeds, repro.rslora, repro.full) == ([1, 2, 4, 8, 16, 32, 64], 3, True, True)
    assert repro.out == os.path.join("results", "rank_sweep_reproduction") != quick.out
    runs = planned_runs(["--reproduce"])
    assert len(runs) == (1 + 7 + 7) * 3 and len(set(runs)) == 42  # rsLoRA r=1 is LoRA r=1's run
    # The quickstart's runs are runs of the reproduction (same spec, same seed: same cache key, same losses).
    assert set(planned_runs([])) < set(runs)
    assert rank_sweep.parse_args(["--reproduce", "--out", "elsewhere"]).out == "elsewhere"
    assert rank_sweep.parse_args(["--ranks", "2", "--seeds", "3", "--rslora"]).out == "results/rank_sweep"
    assert rank_sweep.parse_args(["--no-rslora", "--no-full"]).rslora is False


@pytest.mark.parametrize("flags", [["--ranks", "1,2"], ["--seeds", "1"], ["--rslora"], ["--no-rslora"], ["--no-full"]])
def test_reproduce_takes_no_sweep_shape_flags(flags, capsys):
    with pytest.raises(SystemExit) as e:
        rank_sweep.parse_args(["--reproduce", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--reproduce runs the reproduction's own ranks, seeds and scalings, so it takes no " in err
    assert flags[0] in err.split("takes no ")[1]


def test_full_vs_lora_after_rank_sweep_trains_nothing(tmp_path, corpora):
    """The quickstart's second command finds its runs in the cache the first one filled: same losses."""
    rank_sweep.main([*TOY, *corpora, "--ranks", "8", "--out", str(tmp_path / "sweep")])
    full_vs_lora.main([*TOY, *corpora, "--out", str(tmp_path / "fvl")])
    info = json.loads((tmp_path / "fvl" / "run_info.json").read_text())
    assert (info["runs_planned"], info["runs_trained"]) == (2, 0)
    sweep = json.loads((tmp_path / "sweep" / "records.json").read_text())
    fvl = json.loads((tmp_path / "fvl" / "records.json").read_text())
    assert [r["final_target_loss"] for r in fvl] == [r["final_target_loss"] for r in sweep]
    assert [(r["method"], r["r"]) for r in fvl] == [("full", None), ("lora", 8)]


def test_bad_flags_are_clear_errors(tmp_path, corpora, capsys):
    with pytest.raises(SystemExit):
        full_vs_lora.main([*TOY, *corpora, "--methods", "full,qlora", "--out", str(tmp_path / "x")])
    assert "unknown method 'qlora'; choose one of ['full', 'lora']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rank_sweep.main([*TOY, *corpora, "--ranks", "1,two", "--out", str(tmp_path / "x")])
    assert "--ranks must be comma-separated positive integers" in capsys.readouterr().err
    with pytest.raises(Exception, match="positive integers"):
        parse_ranks("0,4")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            rank_sweep.main([*TOY, *corpora, "--device", "cuda", "--out", str(tmp_path / "x")])
        assert "argument --device: device 'cuda' was requested but no CUDA GPU is available" in capsys.readouterr().err


def test_bench_ratio_is_taken_within_each_round():
    from experiments.lib.timing import paired_ratio

    # The machine slows down 3x over the run; within each round lora takes half of full's time.
    full = [1.0, 1.5, 2.0, 3.0, 3.0]
    lora = [0.5, 0.75, 1.0, 1.5, 1.5]
    assert paired_ratio(lora, full) == (0.5, 0.5, 0.5)
    # Spread: per-round ratios 1..5 have median 3 and quartiles 1.5 and 4.5.
    assert paired_ratio([1, 2, 3, 4, 5], [1, 1, 1, 1, 1]) == (3, 1.5, 4.5)
    assert paired_ratio([2.0], [4.0]) == (0.5, 0.5, 0.5)


def test_bench_lora_writes_its_ratios(tmp_path):
    from experiments.bench import lora as bench_lora

    bench_lora.main(["--preset", "tiny", "--batch-size", "2", "--steps", "1", "--forward-rounds", "1",
                     "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_lora.json").read_text())
    assert set(result["ratios"]) == {
        "lora_step / full_step", "lora_step / floor_step", "straightforward_lora_step / full_step",
        "floor_step / full_step", "lora_forward_unmerged / base_forward", "lora_forward_merged / base_forward",
        "adapter_file / full_checkpoint", "lora_saved_activations / straightforward", "qlora_step / lora_step",
        "qlora_saved_activations / lora", "qlora_dequantize_time / qlora_step (profile)"}
    for key, (q1, q3) in result["ratio_quartiles"].items():
        assert q1 <= result["ratios"][key] <= q3
    assert 0 < result["ratios"]["adapter_file / full_checkpoint"] < 1
    # The fast path saves no more for backward than the straightforward formula.
    assert result["ratios"]["lora_saved_activations / straightforward"] <= 1.0
    # Freezing W0 means its input need not be saved: the floor keeps less than full fine-tuning.
    saved = result["saved_activation_bytes"]
    assert saved["floor"] < saved["full"]
    # QLoRA keeps no dequantized W0 for backward: it saves exactly what LoRA saves.
    assert result["ratios"]["qlora_saved_activations / lora"] == 1.0
    assert 0 < result["ratios"]["qlora_dequantize_time / qlora_step (profile)"] < 1
    # Each of the 4 x 6 adapted layers dequantizes in forward, and again in backward unless its
    # input needs no gradient: block 0's q, k, v read the frozen embeddings through a frozen LayerNorm.
    assert result["qlora_dequantize_calls_per_step"] == 24 + 24 - 3
    assert result["qlora_weight_bytes"]["qlora"] < result["qlora_weight_bytes"]["lora"] / 3
