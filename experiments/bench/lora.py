"""Is a LoRA training step actually cheaper than full fine-tuning? Measured side by side.

    python -m experiments.bench.lora [--preset small] [--batch-size 16] [--r 8] [--steps 15] [--out DIR]
                                     [--threads N]

One process times, on copies of one base GPT with the same random batch and the same AdamW:
    full   full fine-tuning: every parameter trains
    floor  the best any adapter method can do: every weight frozen and no adapter. Only the
           LayerNorm parameters train, so that backward still flows through every layer (as it
           must for LoRA, whose adapters sit in every block) and the optimizer has something to do
    lora   minilora: r on q, k, v, o, up, down of every block, the fused fast path (fast_path.py)
    ref    the same LoRA computed the straightforward way, base(x) + (x @ A.T @ B.T) * s
    qlora  minilora's QLoRA: the same adapters on a base stored in 4-bit NF4 with double
           quantization, dequantized in forward and again in backward (qlora.py)
Each round times one optimizer step of each variant, in an order rotated every round, after a
warm-up round. A ratio is the median over rounds of the two variants' ratio within a round:
the machine's speed drifts over a run (other tenants, memory state), and a ratio taken within
one round cancels that drift where a ratio of two medians would not. The quartiles of the
per-round ratios go with it, as its spread. It also times eval forwards
(no_grad): unmerged LoRA and merged LoRA against the base model; it compares the adapter
file's size with a full checkpoint's; and it sums the bytes autograd saves for backward in
one training forward (activation memory). A profile of two QLoRA steps (torch.profiler) gives
the share of the step spent dequantizing W0. Ratios go to stdout and to DIR/bench_lora.json.

Timings are wall-clock: run it on an otherwise idle machine (other processes competing for
the cores hurt the many small adapter products more than the big ones).
"""
import argparse
import copy
import os
import statistics
import tempfile

import torch
from tqdm import tqdm

from experiments.lib.memory import parameter_bytes, saved_activation_bytes
from experiments.lib.model_variants import make_floor
from experiments.lib.timing import paired_ratio, timed, train_step
from minilora import apply_lora, count_parameters, lora_layers, merge_lora, save_adapter
from nanogpt.model import GPT
from nanogpt.flags import CommandError, choice, positive_float, positive_int, seed
from nanogpt.presets import PRESETS, config_from_preset
from nanogpt.run_folder import check_writable_folder
from nanogpt.train import write_json

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def make_variants(base, r, alpha):
    """name -> model, each a deepcopy of base so that no state is shared."""
    full = copy.deepcopy(base)
    floor = make_floor(copy.deepcopy(base))
    lora = apply_lora(copy.deepcopy(base), TARGETS, r=r, alpha=alpha)
    ref = apply_lora(copy.deepcopy(base), TARGETS, r=r, alpha=alpha)
    for _, layer in lora_layers(ref):
        layer.fused = False  # the straightforward formula, plain autograd
    qlora = apply_lora(copy.deepcopy(base), TARGETS, r=r, alpha=alpha, quantize="nf4")
    return {"full": full, "floor": floor, "lora": lora, "ref": ref, "qlora": qlora}


@torch.no_grad()
def forward_only(model, x):
    model(x)


def dequantize_share(model, optimizer, x, y, steps=2):
    """(share, calls per step): the time inside QuantizedWeight.dequantize, which records itself as
    "minilora.dequantize", over the time of whole training steps, both from one torch.profiler run."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with torch.profiler.record_function("train_step"):
                train_step(model, optimizer, x, y)
    events = {e.key: e for e in prof.key_averages()}
    dequantize = events["minilora.dequantize"]
    return dequantize.cpu_time_total / events["train_step"].cpu_time_total, dequantize.count / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=choice(PRESETS), default="small")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--r", type=positive_int, default=8)
    parser.add_argument("--alpha", type=positive_float, default=16.0)
    parser.add_argument("--steps", type=positive_int, default=15, help="timed rounds (one step of each variant per round)")
    parser.add_argument("--forward-rounds", type=positive_int, default=10)
    parser.add_argument("--out", default="results/bench_lora")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    config = config_from_preset(args.preset)
    widest_rank = min(config.n_embd, 4 * config.n_embd)  # every target maps n_embd to n_embd or 4 n_embd
    if args.r > widest_rank:
        parser.error(f"argument --r: r={args.r} is above the rank of the {args.preset} model's layers; "
                     f"valid ranks are 1..{widest_rank}")
    try:
        check_writable_folder(args.out, "--out")
    except CommandError as e:
        parser.error(str(e))

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = GPT(config)
    x = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size))  # (B, T)
    y = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size))  # (B, T)
    models = make_variants(base, args.r, args.alpha)
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad],
                                          lr=3e-4, weight_decay=0.01)
                  for name, m in models.items()}
    names = list(models)

    times = {name: [] for name in names}
    total = (args.steps + 1) * len(names)
    with tqdm(total=total, desc=f"train steps ({args.preset}, B={args.batch_size}, r={args.r})") as bar:
        for round_ in range(args.steps + 1):  # round 0 is the warm-up
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                seconds = timed(train_step, models[name], optimizers[name], x, y)
                if round_ > 0:
                    times[name].append(seconds)
                bar.update()
    step = {name: statistics.median(t) for name, t in times.items()}

    eval_models = {"base": base.eval(), "unmerged": models["lora"].eval(),
                   "merged": merge_lora(copy.deepcopy(models["lora"])).eval()}
    fwd_times = {name: [] for name in eval_models}
    for round_ in tqdm(range(args.forward_rounds + 1), desc="eval forwards"):
        for name, model in eval_models.items():
            seconds = timed(forward_only, model, x)
            if round_ > 0:
                fwd_times[name].append(seconds)
    fwd = {name: statistics.median(t) for name, t in fwd_times.items()}
    models["lora"].train()

    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(models["lora"], os.path.join(tmp, "adapter.pt"))
        torch.save(base.state_dict(), os.path.join(tmp, "full.pt"))
        adapter_bytes = os.path.getsize(os.path.join(tmp, "adapter.pt"))
        full_bytes = os.path.getsize(os.path.join(tmp, "full.pt"))

    saved = {name: saved_activation_bytes(models[name], x, y) for name in ("full", "floor", "lora", "ref", "qlora")}
    share, dequantize_calls = dequantize_share(models["qlora"], optimizers["qlora"], x, y)

    timed_pairs = {
        "lora_step / full_step": (times["lora"], times["full"]),
        "lora_step / floor_step": (times["lora"], times["floor"]),
        "straightforward_lora_step / full_step": (times["ref"], times["full"]),
        "floor_step / full_step": (times["floor"], times["full"]),
        "qlora_step / lora_step": (times["qlora"], times["lora"]),
        "lora_forward_unmerged / base_forward": (fwd_times["unmerged"], fwd_times["base"]),
        "lora_forward_merged / base_forward": (fwd_times["merged"], fwd_times["base"]),
    }
    spread = {key: paired_ratio(a, b) for key, (a, b) in timed_pairs.items()}
    ratios = {key: median for key, (median, _, _) in spread.items()}
    ratios["adapter_file / full_checkpoint"] = adapter_bytes / full_bytes
    ratios["lora_saved_activations / straightforward"] = saved["lora"] / saved["ref"]
    ratios["qlora_saved_activations / lora"] = saved["qlora"] / saved["lora"]
    ratios["qlora_dequantize_time / qlora_step (profile)"] = share
    counts = count_parameters(models["lora"])
    result = {
        "args": vars(args),
        "variants": {
            "full": "every parameter trains",
            "floor": "every weight frozen, no adapter; only LayerNorm parameters train, so backward "
                     "still flows through every layer",
            "lora": f"minilora fast path, r={args.r}, alpha={args.alpha:g}, on {TARGETS} of every block",
            "ref": "the same LoRA as base(x) + (x @ A.T @ B.T) * scaling with plain autograd",
            "qlora": "the lora variant on a base in 4-bit NF4 with double quantization (apply_lora quantize='nf4')",
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "trainable_parameters": {"lora": counts.trainable, "total": counts.total, "percent": counts.percent},
        "ratios": ratios,
        "ratio_quartiles": {key: [q1, q3] for key, (_, q1, q3) in spread.items()},
        "step_seconds_median": step,
        "step_seconds_all": times,
        "forward_seconds_median": fwd,
        "bytes": {"adapter_file": adapter_bytes, "full_checkpoint": full_bytes},
        "saved_activation_bytes": saved,
        "qlora_dequantize_calls_per_step": dequantize_calls,
        "qlora_weight_bytes": {"qlora": parameter_bytes(models["qlora"]), "lora": parameter_bytes(models["lora"])},
    }
    path = os.path.join(args.out, "bench_lora.json")
    os.makedirs(args.out, exist_ok=True)
    write_json(result, path)

    print(f"\npreset {args.preset}, batch {args.batch_size}, r {args.r}, {args.steps} rounds, "
          f"{torch.get_num_threads()} threads; LoRA trains {counts.trainable:,} of {counts.total:,} "
          f"parameters ({counts.percent:.2f}%)")
    print("median step: " + ", ".join(f"{n} {s:.3f}s" for n, s in step.items()))
    for key, value in ratios.items():
        extra = f"  quartiles {spread[key][1]:.3f}-{spread[key][2]:.3f}" if key in spread else ""
        extra += f"   ({1 / value:.2f}x faster)" if key.endswith("/ full_step") else ""
        print(f"  {key:46s} {value:7.3f}{extra}")
    print("saved activations (MB): " + ", ".join(f"{n} {b / 2**20:.0f}" for n, b in saved.items()))
    print(f"QLoRA: {dequantize_calls:.0f} dequantizations per step (forward, and backward where the input "
          f"needs a gradient), {share:.1%} of the step by the profile; the target is qlora_step / lora_step <= 1.3")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
