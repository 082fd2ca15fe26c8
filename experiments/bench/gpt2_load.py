"""How long loading a GPT-2 checkpoint takes, and how much memory it needs at its peak.

    python -m experiments.bench.gpt2_load [--shapes gpt2,gpt2-medium] [--formats safetensors,bin] [--out DIR]

For each shape, a GPT with random weights (GPT-2's shape, vocabulary 50257) is written in the
Hugging Face layout (save_gpt2: config.json + model.safetensors) to a temporary folder; then a fresh
Python process loads it with nanogpt.pretrained.load_gpt2 and reports the time and its peak
resident memory (VmHWM in /proc/self/status, which sees torch's allocations, unlike tracemalloc)
minus its resident memory before loading (torch and the imports). The ratio to the file's size is
what the loader promises to keep under 1.3 for model.safetensors: the model's own storage is 1.0 of
it, and loading may add one tensor at a time on top. With --formats bin the same weights are also
written as the hub's older pytorch_model.bin (no `transformer.` prefix), read through torch.load's
memory map. Linux only (/proc).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from experiments.lib.bench_record import finish_rows
from nanogpt.flags import comma_list, choice

SHAPES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768), "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024)}

CHILD = r"""
import json, sys, time
import torch
import nanogpt.pretrained
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB -> bytes
before = status("VmRSS")
start = time.perf_counter()
model = nanogpt.pretrained.load_gpt2(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before": before, "peak": status("VmHWM"),
                  "parameters": model.num_parameters()}))
"""


def write_random(shape, folder, fmt):
    import torch

    from nanogpt.model import GPT, GPTConfig
    from nanogpt.pretrained import save_gpt2

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=1024, activation="gelu_new", **SHAPES[shape])
    model = GPT(config)
    save_gpt2(model, folder)
    if fmt == "safetensors":
        return os.path.getsize(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    from nanogpt.pretrained import gpt2_state_dict

    path = os.path.join(folder, "pytorch_model.bin")
    torch.save({k.removeprefix("transformer."): v for k, v in gpt2_state_dict(model).items()}, path)
    return os.path.getsize(path)


def measure(shape, fmt):
    with tempfile.TemporaryDirectory() as folder:
        size = write_random(shape, folder, fmt)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        out = subprocess.run([sys.executable, "-c", CHILD, folder], capture_output=True, text=True, env=env, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    added = r["peak"] - r["rss_before"]
    return {"shape": shape, "format": fmt, "file_bytes": size, "parameters": r["parameters"], "load_seconds": round(r["seconds"], 3),
            "peak_added_bytes": added, "peak_over_file": round(added / size, 3)}


def main(argv=None):
    p = argparse.ArgumentParser(description="Time and peak memory of loading GPT-2-shaped checkpoints (random weights).")
    p.add_argument("--shapes", type=comma_list(choice(list(SHAPES)), "gpt2,gpt2-medium"), default=list(SHAPES),
                   help=f"which shapes, comma-separated, from {list(SHAPES)} (default both)")
    p.add_argument("--formats", type=comma_list(choice(["safetensors", "bin"]), "safetensors,bin"),
                   default=["safetensors"], help="weights files to measure: safetensors, bin (default safetensors)")
    p.add_argument("--out", help="folder for gpt2_load.json (default: print only)")
    args = p.parse_args(argv)
    rows = []
    for shape, fmt in [(s, f) for s in args.shapes for f in args.formats]:
        row = measure(shape, fmt)
        rows.append(row)
        print(f"{shape} ({fmt}): {row['parameters'] / 1e6:.0f}M parameters, file {row['file_bytes'] / 2**20:,.0f} MiB, "
              f"load {row['load_seconds']:.2f} s, peak added memory {row['peak_added_bytes'] / 2**20:,.0f} MiB "
              f"= {row['peak_over_file']:.2f}x the file")
    return finish_rows(rows, args.out, "gpt2_load.json")


if __name__ == "__main__":
    main()
