"""The peak memory of a few training steps of one variant, measured in a process of its own.

    python -m experiments.bench.peak_memory --preset gpt2-small --variant lora [--block-size 128]
                                      [--batch-size 4] [--steps 2] [--device cpu]

Prints one JSON line (experiments/scale.py runs this once per size and variant). Why a fresh
process: the operating system's record of a process's peak only ever grows, so a process that
has held full fine-tuning's state can say nothing about LoRA's peak afterwards.

    CPU, Linux   the peak resident set (VmHWM), reset once the model is built (writing 5 to
                 /proc/self/clear_refs), so the peak is that of the training steps, not of
                 building the model (QLoRA builds in fp32 before it quantizes)
    CPU, other   ru_maxrss, which includes building the model ("kind" says which)
    CUDA         torch.cuda.max_memory_allocated, reset once the model is built
"baseline" is the memory held before the model exists (Python, torch, the batch, and what a
thrown-away warm-up step of a toy model leaves: the code of the kernels, first buffers): the peak
less the baseline is what the model and its training steps added, what the cost model predicts.
The resident set also holds what the allocator keeps from freed tensors; scale.py sets glibc's
MALLOC_MMAP_THRESHOLD_ so that big tensors are given back to the system when freed.
"""
import argparse
import gc
import json
import resource
import sys

import torch

from experiments.lib.model_variants import VARIANTS, make_optimizer, make_variant
from experiments.lib.timing import train_step
from nanogpt.device import autocast
from nanogpt.flags import choice, positive_int, run_main, seed
from nanogpt.flags import device as device_flag
from nanogpt.model import GPT, GPTConfig
from nanogpt.presets import PRESETS, config_from_preset

STATUS = "/proc/self/status"


def status_kib(field):
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss():
    """Set the peak resident set back to the current one (Linux 4.0 and later); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def ru_maxrss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def warm_up(variant, block_size, batch_size, device):
    """Two steps of a toy model of the same variant, thrown away: the first use of each kernel maps
    its code and makes the allocator's and the thread pool's first buffers, which are resident
    too; afterwards the resident set grows with the tensors alone."""
    model = make_variant(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=block_size)).to(device), variant)
    optimizer = make_optimizer(model, variant)
    x = torch.randint(0, 256, (batch_size, block_size), device=device)
    for _ in range(2):
        with autocast(device):
            train_step(model, optimizer, x, x)


def measure(preset, variant, block_size, batch_size, steps, device, seed):
    cuda = str(device).startswith("cuda")
    config = config_from_preset(preset, block_size=block_size)
    warm_up(variant, block_size, batch_size, device)
    gc.collect()
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, config.vocab_size, (batch_size, block_size), generator=g).to(device) for _ in range(2))
    if cuda:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = 1024 * status_kib("VmRSS") if status_kib("VmRSS") is not None else ru_maxrss_bytes()
    torch.manual_seed(seed)
    model = make_variant(GPT(config).to(device), variant)
    optimizer = make_optimizer(model, variant)
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        kind = "cuda max_memory_allocated"
    elif reset_peak_rss() and status_kib("VmHWM") is not None:
        before, kind = 1024 * status_kib("VmRSS"), "peak RSS (VmHWM, reset after building)"
    else:
        before, kind = None, "ru_maxrss (includes building the model)"
    for _ in range(steps):
        with autocast(device):
            train_step(model, optimizer, x, y)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    elif before is not None:
        peak = 1024 * status_kib("VmHWM")
    else:
        peak = ru_maxrss_bytes()
    return {"kind": kind, "baseline": baseline, "before_steps": before, "peak": peak,
            "measured": peak - baseline, "steps": steps}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, type=choice(PRESETS))
    p.add_argument("--variant", required=True, type=choice(VARIANTS))
    p.add_argument("--block-size", type=positive_int, default=128)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--steps", type=positive_int, default=2,
                   help="training steps (the second is the first with optimizer state and gradients at once)")
    p.add_argument("--device", type=device_flag, default="cpu")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    record = measure(args.preset, args.variant, args.block_size, args.batch_size, args.steps, args.device, args.seed)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    run_main(main)
