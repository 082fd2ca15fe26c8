"""Where LoRA pays: its costs measured from the tiny GPT up to GPT-2 medium's shape, each beside
the cost model's prediction (experiments/cost_model.py).

    python -m experiments.scale [--sizes tiny,small,gpt2-small,gpt2-medium] [--block-size 128]
                                [--batch-size 4] [--rounds 5] [--memory-batches 1,8] [--device cpu]
    python -m experiments.scale --report      # plots and docs/scale.md again, from OUT/scale.json

Every model is at random initialisation: costs depend on shapes and dtypes, not on the values,
so no pretrained GPT-2 is needed (and none is loaded; the vocabulary is our 256 bytes). For each
size, five variants of one model:
    full      full fine-tuning
    lora      LoRA r=8 on q, k, v, o, up and down of every block
    lora-qv   LoRA r=4 on q_proj and v_proj: the LoRA paper's GPT-3 setting
    floor     every weight frozen, no adapter, only the LayerNorms train (bench_lora.py): the least
              any adapter method can cost
    qlora     lora on a base stored in 4-bit NF4, when minilora.apply_lora accepts quantize=
Measured, each beside its prediction:
    memory by part   weights, gradients and optimizer state read from the tensors after a step;
                     saved activations counted by SavedActivations (memory.py), at the run's batch
                     and at each of --memory-batches
    peak memory      a few steps in a fresh process per variant (peak_memory.py): the peak resident
                     set on CPU, the CUDA allocator's peak on a GPU
    step time        forward, backward and optimizer step of each variant in turn, the order rotated
                     every round, after a warm-up round; a ratio is the median of same-round ratios
                     with its quartiles (bench_lora.py), beside the FLOP model's ratio
    file size        the full checkpoint (torch.save of the state_dict) and each adapter (save_adapter)
Records: OUT/scale.json. Plots (OUT/*.png) and the write-up (--docs, docs/scale.md): scale_report.py.
Timings are wall-clock: run on an otherwise idle machine. The frozen variants of a size share one
copy of the frozen weights (a speed and memory trick for this process only: the peaks are measured
in processes of their own).
"""
import argparse
import copy
import ctypes
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import torch
import torch.nn as nn
from tqdm import tqdm

import minilora
from experiments import cost_model, scale_report
from experiments.bench_lora import make_floor, paired_ratio, saved_activation_bytes
from experiments.common import ALL_BLOCK_LINEARS, DEFAULT_LR, parse_batch_sizes
from experiments.finetune import saved_bytes
from experiments.memory import measure_training_memory
from nanogpt.device import autocast
from nanogpt.flags import DEVICE_HELP, CommandError, choice, comma_list, positive_int, run_main, seed
from nanogpt.flags import device as device_flag
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset
from nanogpt.run_folder import check_writable_folder
from nanogpt.train import configure_optimizer, write_json

SIZES = ("tiny", "small", "gpt2-small", "gpt2-medium", "gpt2-large")
DEFAULT_SIZES = "tiny,small,gpt2-small,gpt2-medium"  # gpt2-large (710M; ~12 GB for full fine-tuning) when named
VARIANTS = {  # name -> what the cost model calls it: method, rank, targets
    "full": dict(method="full", r=None, targets=None),
    "lora": dict(method="lora", r=8, targets=ALL_BLOCK_LINEARS),
    "lora-qv": dict(method="lora", r=4, targets=["q_proj", "v_proj"]),
    "floor": dict(method="floor", r=None, targets=None),
    "qlora": dict(method="qlora", r=8, targets=ALL_BLOCK_LINEARS),
}
ALPHA = 16.0
PARTS = ("weights", "grads", "optimizer", "activations")


def qlora_available():
    """Does this minilora's apply_lora take quantize= (QLoRA)? Checked once, at startup."""
    return "quantize" in inspect.signature(minilora.apply_lora).parameters


def make_variant(model, name):
    """Turn model into variant `name`, in place, and return it."""
    spec = VARIANTS[name]
    if spec["method"] == "full":
        return model.requires_grad_(True)
    if spec["method"] == "floor":
        return make_floor(model)
    quantize = {"quantize": "nf4"} if spec["method"] == "qlora" else {}
    return minilora.apply_lora(model, spec["targets"], r=spec["r"], alpha=ALPHA, **quantize)


def sharing_copy(frozen):
    """A deepcopy of a frozen model that shares its weights and biases but not its LayerNorms:
    the frozen variants of one size then hold the big tensors once (the floor trains its own
    LayerNorms, so those must be its own)."""
    own = {id(p) for m in frozen.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    memo = {id(p): p for p in frozen.parameters() if id(p) not in own}
    return copy.deepcopy(frozen, memo)


def make_optimizer(model, name):
    """AdamW over the trainable parameters at the method's default rate (the rate changes no cost)."""
    lr = DEFAULT_LR["full"] if name == "full" else DEFAULT_LR["lora"]
    return configure_optimizer(model, lr, weight_decay=0.0)


def predict(config, name, batch_size, device):
    """The cost model's prediction for variant `name` of this config (bf16 autocast on CUDA, as
    nanogpt.device.autocast runs it)."""
    spec = VARIANTS[name]
    return cost_model.predict(cost_model.shape_of(config), spec["method"], spec["r"] or 8,
                              spec["targets"] or "all-linear", batch_size, config.block_size,
                              autocast=str(device).startswith("cuda"))


def timed_phases(model, optimizer, x, y, device):
    """One training step, timed by phase: (forward with the loss, backward, optimizer step) seconds."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    with autocast(device):
        _, loss = model(x, y)
    sync()
    forward = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sync()
    backward = time.perf_counter()
    optimizer.step()
    sync()
    return forward - start, backward - forward, time.perf_counter() - backward


def peak_in_fresh_process(preset, name, args):
    """Run experiments.peak_memory for one variant in a new Python and return its JSON record.
    MALLOC_MMAP_THRESHOLD_ (glibc) makes every allocation of 64 KiB or more a mapping of its
    own, given back to the system when freed, so that the resident set follows the live tensors."""
    command = [sys.executable, "-m", "experiments.peak_memory", "--preset", preset, "--variant", name,
               "--block-size", str(args.block_size), "--batch-size", str(args.batch_size),
               "--device", args.device, "--seed", str(args.seed), "--threads", str(torch.get_num_threads())]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory process for {preset}/{name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def work(preset, names, args):
    """The progress bar's units for one size: a training step of its full model counts its millions
    of parameters (the cost of a step grows about so); counting memory (a step and a forward per
    --memory-batches) twice that, a peak (a fresh process, a model, two steps) three times."""
    step = params_millions(preset, args.block_size)
    return step * len(names) * ((args.rounds + 1) + 2 + (0 if args.no_peak else 3))


def params_millions(preset, block_size):
    return sum(cost_model.parameter_counts(cost_model.shape_of(config_from_preset(preset, block_size=block_size)))[0]
               .values()) / 1e6


def release_freed_memory():
    """Give the memory of freed tensors back to the system (glibc's malloc_trim; nothing elsewhere),
    so that what this process no longer uses is not counted against the peak-memory processes."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_size(preset, names, args, device, bar):
    """Every measurement of one size: a dict for OUT/scale.json."""
    config = config_from_preset(preset, block_size=args.block_size)
    unit = params_millions(preset, args.block_size)  # progress per training step
    torch.manual_seed(args.seed)
    base = GPT(config).to(device)
    frozen = copy.deepcopy(base).requires_grad_(False)
    models = {name: make_variant(base if name == "full" else sharing_copy(frozen), name) for name in names}
    del base
    optimizers = {name: make_optimizer(model, name) for name, model in models.items()}
    g = torch.Generator().manual_seed(args.seed)
    x, y = (torch.randint(0, config.vocab_size, (args.batch_size, config.block_size), generator=g).to(device)
            for _ in range(2))  # (B, T) each: random tokens cost what real ones cost

    times = {name: {"forward": [], "backward": [], "optimizer": [], "step": []} for name in names}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            bar.set_description(f"{preset}: timing {name}")
            phases = timed_phases(models[name], optimizers[name], x, y, device)
            if round_ > 0:
                for key, seconds in zip(("forward", "backward", "optimizer"), phases):
                    times[name][key].append(seconds)
                times[name]["step"].append(sum(phases))
            bar.update(unit)

    record = {"preset": preset, "config": asdict(config), "variants": {}}
    for name in names:
        bar.set_description(f"{preset}: memory of {name}")
        model, spec = models[name], VARIANTS[name]
        measured = measure_training_memory(model, optimizers[name], x, y, autocast(device))
        predicted = predict(config, name, args.batch_size, device)
        activations = {}
        for batch in args.memory_batches:
            xb, yb = (torch.randint(0, config.vocab_size, (batch, config.block_size), generator=g).to(device)
                      for _ in range(2))  # (B, T) each
            with autocast(device):
                activations[str(batch)] = {"measured": saved_activation_bytes(model, xb, yb),
                                           "predicted": predict(config, name, batch, device)["bytes"]["activations"]}
        file = None
        if spec["method"] != "floor":
            kind = "checkpoint" if spec["method"] == "full" else "adapter"
            file = {"kind": kind, "measured": saved_bytes(model, {"method": spec["method"]}),
                    "predicted_payload": predicted["files"][kind]}
        record["variants"][name] = {
            **spec, "trainable_params": predicted["trainable_params"], "total_params": predicted["total_params"],
            "memory": {"measured": {"weights": measured["params"], "grads": measured["grads"],
                                    "optimizer": measured["optimizer"], "activations": measured["activations"]},
                       "predicted": {part: predicted["bytes"][part] for part in PARTS}},
            "activations_by_batch": activations, "file": file, "flops": predicted["flops"],
            "step_seconds": times[name],
        }
        bar.update(2 * unit)
    del models, optimizers, frozen
    gc.collect()
    release_freed_memory()

    for name in names:
        bar.set_description(f"{preset}: peak memory of {name} (own process)")
        if args.no_peak:
            peak = None
        else:
            peak = peak_in_fresh_process(preset, name, args)
            peak["predicted"] = predict(config, name, args.batch_size, device)["bytes"]["total"]
            bar.update(3 * unit)
        record["variants"][name]["peak"] = peak
    record["ratios"] = step_ratios(record["variants"])
    return record


def step_ratios(variants):
    """Each variant's step time over full fine-tuning's (and LoRA's over the floor's): the median
    and quartiles of same-round ratios, per phase, beside the FLOP model's ratio of matmul FLOPs."""
    pairs = [(name, "full") for name in variants if name != "full"]
    if "lora" in variants and "floor" in variants:
        pairs.append(("lora", "floor"))
    ratios = {}
    for a, b in pairs:
        entry = {}
        for phase in ("step", "forward", "backward", "optimizer"):
            median, q1, q3 = paired_ratio(variants[a]["step_seconds"][phase], variants[b]["step_seconds"][phase])
            entry[phase] = {"median": median, "q1": q1, "q3": q3}
        entry["flop_model"] = variants[a]["flops"]["matmul"] / variants[b]["flops"]["matmul"]
        ratios[f"{a}/{b}"] = entry
    return ratios


# -- flags ----------------------------------------------------------------------------------

sizes_flag = comma_list(choice(SIZES), "tiny,gpt2-small")


def variants_flag(text):
    names = comma_list(choice(VARIANTS), "full,lora,floor")(text)
    if "full" not in names or "lora" not in names:
        raise argparse.ArgumentTypeError(f"must name full and lora (the ratios are LoRA's to full fine-tuning) "
                                         f"among {list(VARIANTS)}; got {text!r}")
    return names


def make_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=sizes_flag, default=sizes_flag(DEFAULT_SIZES),
                   help=f"presets from small to large (default {DEFAULT_SIZES}; gpt2-large only when named)")
    p.add_argument("--variants", type=variants_flag, default=None,
                   help=f"which of {list(VARIANTS)} (default: all; qlora only when minilora has it)")
    p.add_argument("--block-size", type=positive_int, default=128, help="sequence length of every step")
    p.add_argument("--batch-size", type=positive_int, default=4, help="sequences per timed step")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="timed rounds, one step of each variant per round, after a warm-up round")
    p.add_argument("--memory-batches", type=parse_batch_sizes, default=[1, 8],
                   help="batch sizes at which the saved activations are also counted")
    p.add_argument("--device", type=device_flag, default="cpu", help=DEVICE_HELP)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--out", default="results/scale")
    p.add_argument("--docs", default="docs/scale.md", help="where the write-up goes")
    p.add_argument("--force", action="store_true", help="overwrite OUT/scale.json if it exists")
    p.add_argument("--report", action="store_true",
                   help="only redraw the plots and rewrite --docs from OUT/scale.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    path = os.path.join(args.out, "scale.json")
    if args.report:
        if not os.path.isfile(path):
            parser.error(f"--report reads {path}, which does not exist; run python -m experiments.scale first")
        return scale_report.write_report(path, args.out, args.docs)
    if os.path.exists(path) and not args.force:
        parser.error(f"{path} exists (a finished run); pass --force to overwrite it, or --out another folder")
    try:
        for folder, flag in ((args.out, "--out"), (os.path.dirname(os.path.abspath(args.docs)), "--docs")):
            check_writable_folder(folder, flag)
    except CommandError as e:
        parser.error(str(e))
    device = args.device  # resolved by the flag's type
    names = args.variants or list(VARIANTS)
    note = None
    if not qlora_available():
        note = ("QLoRA not measured: this minilora's apply_lora has no quantize= argument yet; "
                "the cost model's QLoRA predictions are in the extrapolation only")
        print(note)
        names = [n for n in names if n != "qlora"]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine skews timings
    records = []
    total = sum(work(preset, names, args) for preset in args.sizes)
    with tqdm(total=total, disable=args.no_progress, bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:
        for preset in args.sizes:
            records.append(measure_size(preset, names, args, device, bar))
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("report", "force", "no_progress")},
        "variants": {name: VARIANTS[name] for name in names},
        "qlora_note": note,
        "random_init": True,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load, "end": os.getloadavg()[0] if load is not None else None},
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "wall_time_s": time.time() - started,
        "sizes": records,
    }
    os.makedirs(args.out, exist_ok=True)
    write_json(result, path)
    print(f"wrote {path} in {result['wall_time_s']:.0f} s")
    return scale_report.write_report(path, args.out, args.docs)


if __name__ == "__main__":
    run_main(main)
