"""What LoRA saves in communication when training on several processes, and the step time on 1 and 2.

    python -m experiments.bench.ddp                                   # tiny and small, full and LoRA r=8
    python -m experiments.bench.ddp --presets tiny --steps 6 --rounds 1   # a quick check

Data-parallel training (DistributedDataParallel, nanogpt/distributed.py) all-reduces every
trainable parameter's gradient at every step. Full fine-tuning sends the whole model's gradient;
LoRA sends only the adapters' (the frozen base has no gradient), so its traffic is its trainable
fraction of full fine-tuning's. This measures it, for full fine-tuning and LoRA (r=8 on q, k, v, o,
up, down of every block) on each preset:

  bytes    the bytes DDP all-reduces per step, counted by its communication hook in a 2-process
           launch (train()'s "communication"), beside 4 bytes per trainable fp32 parameter; and
           that count for every preset, GPT-2's sizes too, made on the meta device (no training)
  time     the median training step of three set-ups, at the same global batch:
             1 process, 1 thread   (python -m ...)
             1 process, 2 threads  (python -m ...)
             2 processes, 1 thread each (torchrun --standalone --nproc_per_node 2 -m ...)
           each a fresh process (or launch) that trains --steps steps after --warmup untimed ones.
           A round runs every set-up once, in turn; a ratio is the median over rounds of the two
           set-ups' ratio within a round (with its quartiles), which cancels the machine's drift.

What 2 processes on 2 CPU cores can show: that DDP gives the same run (the test suite checks it),
the bytes it sends, and what its synchronisation costs next to one process using both cores
with threads. What they cannot show: the speed-up of more devices. Both set-ups share the same
two cores and the same memory, and the all-reduce goes through shared memory, not a network.
Results to OUT/bench_ddp.json and stdout. Timings are wall-clock: run it on an idle machine.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

import torch
from tqdm import tqdm

from experiments.lib.common import ALL_BLOCK_LINEARS
from experiments.lib.timing import paired_ratio
from minilora import apply_lora, count_parameters
from nanogpt import distributed
from nanogpt.data import load_corpus
from nanogpt.flags import CommandError, comma_list, choice, positive_int, run_main
from nanogpt.model import GPT
from nanogpt.presets import PRESETS, config_from_preset
from nanogpt.run_folder import check_writable_folder
from nanogpt.train import train, write_json
from nanogpt.train_config import TrainConfig

METHODS = ("full", "lora")
SETUPS = {  # name: (processes, threads per process)
    "1 process, 1 thread": (1, 1),
    "1 process, 2 threads": (1, 2),
    "2 processes, 1 thread each": (2, 1),
}
BATCH = {"tiny": 12, "small": 16}  # the experiments' batch on tiny, bench_lora's on small
LAUNCH_LIMIT_S = 1800  # one launch that runs longer than this is killed: something hangs


def worker(preset, method, batch_size, steps, warmup, r, seed=0, corpus="python-code"):
    """Train a randomly initialised GPT of preset (full or LoRA) for warmup + steps steps with
    train(), on one process or, under torchrun, all of them; returns what rank 0 measured."""
    config = config_from_preset(preset)
    torch.manual_seed(seed)
    model = GPT(config)
    base_params = sum(p.numel() for p in model.parameters())
    if method == "lora":
        apply_lora(model, ALL_BLOCK_LINEARS, r=r, alpha=2 * r)
    data = load_corpus(corpus, config.block_size)
    total = warmup + steps
    result = train(model, data.train, {"val": data.val},
                   TrainConfig(max_iters=total, batch_size=batch_size, lr=1e-3, warmup_iters=1, eval_interval=total,
                               eval_iters=1, seed=seed, progress=False))
    counts = count_parameters(model)
    return {"step_s": result["step_times"][warmup:], "trainable_params": counts.trainable,
            "total_params": counts.total, "base_params": base_params, "communication": result.get("communication"),
            "threads": torch.get_num_threads()}


def launch(setup, preset, method, args):
    """Run one worker set-up in fresh processes and return its measurement."""
    processes, threads = SETUPS[setup]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = ["-m", "experiments.bench.ddp", "--worker", out, "--presets", preset, "--methods", method,
                   "--batch-size", str(args.batch_size or BATCH.get(preset, 16)), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--r", str(args.r)]
        if processes > 1:
            # "--" ends torchrun's own flags: without it, torchrun takes --r for a prefix of its --rdzv-* flags
            command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), command[0],
                       command[1], "--", *command[2:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        p = subprocess.Popen([sys.executable, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        try:
            output, _ = p.communicate(timeout=LAUNCH_LIMIT_S)
        except BaseException as e:  # a hang, or Ctrl-C: no process is left behind
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                raise CommandError(f"{setup}, {preset} {method}: no result after {LAUNCH_LIMIT_S} s (killed)") from None
            raise
        if p.returncode != 0 or not os.path.exists(out):
            raise CommandError(f"{setup}, {preset} {method} failed (exit code {p.returncode}):\n{output[-3000:]}")
        with open(out) as f:
            return json.load(f)


def run_worker(args):
    device = distributed.setup("cpu", "gloo")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    measured = worker(args.presets[0], args.methods[0], args.batch_size, args.steps, args.warmup, args.r)
    if distributed.is_main():
        write_json({**measured, "device": device}, args.worker)


def quartiles(values):
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q2, q1, q3


def counted_bytes(r):
    """{preset: (full, LoRA) bytes all-reduced per step} for every preset, counted on the meta device
    (no memory, no training): 4 bytes per trainable fp32 parameter, which is what the launches
    measure (the test suite checks that DDP's buckets hold exactly those)."""
    counted = {}
    for preset in PRESETS:
        if r > config_from_preset(preset).n_embd:
            continue
        with torch.device("meta"):
            model = GPT(config_from_preset(preset))
            full = sum(p.numel() for p in model.parameters())
            apply_lora(model, ALL_BLOCK_LINEARS, r=r, alpha=2 * r)
        counted[preset] = {"full": 4 * full, "lora": 4 * count_parameters(model).trainable}
    return counted


def summarise(times, counts):
    """times[(preset, method, setup)] = [median step s of each round]; counts[(preset, method)] =
    a 2-process measurement. Returns the JSON-able summary."""
    communication = []
    for (preset, method), m in counts.items():
        full = counts.get((preset, "full"))
        communication.append({
            "preset": preset, "method": method, "trainable_params": m["trainable_params"],
            "total_params": m["total_params"], "base_params": m["base_params"],
            "trainable_fraction_of_base": m["trainable_params"] / m["base_params"],
            "allreduce_bytes_per_step": m["communication"]["allreduce_bytes_per_step"],
            "fp32_bytes_of_trainable_params": 4 * m["trainable_params"],
            "buckets_per_step": m["communication"]["buckets_per_step"],
            "bytes_over_full_finetuning": (m["communication"]["allreduce_bytes_per_step"]
                                           / full["communication"]["allreduce_bytes_per_step"] if full else None),
        })
    steps = []
    for (preset, method, setup), per_round in times.items():
        median, q1, q3 = quartiles(per_round)
        steps.append({"preset": preset, "method": method, "setup": setup, "median_step_s": median,
                      "quartiles_s": [q1, q3], "per_round_s": per_round})
    ratios = []
    one_1, one_2, two = SETUPS  # 2 processes against 1 process with 2 threads, and each against 1 thread
    pairs = [(two, one_2), (two, one_1), (one_2, one_1)]
    for preset, method in {(p, m) for p, m, _ in times}:
        for a, b in pairs:
            if (preset, method, a) in times and (preset, method, b) in times:
                median, q1, q3 = paired_ratio(times[(preset, method, a)], times[(preset, method, b)])
                ratios.append({"preset": preset, "method": method, "ratio": f"{a} / {b}", "median": median,
                               "quartiles": [q1, q3]})
    order = {p: i for i, p in enumerate(PRESETS)}
    ratios.sort(key=lambda r: (order[r["preset"]], r["method"], r["ratio"]))
    steps.sort(key=lambda s: (order[s["preset"]], s["method"], list(SETUPS).index(s["setup"])))
    return {"communication": communication, "step_time": steps, "step_time_ratios": ratios}


def table(summary):
    lines = ["| preset | method | trainable params (of the base's) | bytes all-reduced per step "
             "| of full fine-tuning's |",
             "| --- | --- | ---: | ---: | ---: |"]
    for c in summary["communication"]:
        share = "" if c["bytes_over_full_finetuning"] is None else f"{c['bytes_over_full_finetuning']:.4f}"
        lines.append(f"| {c['preset']} | {c['method']} | {c['trainable_params']:,} "
                     f"({100 * c['trainable_fraction_of_base']:.2f}%) | {c['allreduce_bytes_per_step']:,} "
                     f"({c['allreduce_bytes_per_step'] / 2**20:.2f} MiB) | {share} |")
    if "counted_bytes_per_step" in summary:
        lines += ["", "| preset | full fine-tuning, bytes per step (counted) | LoRA | LoRA / full |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {p} | {c['full']:,} ({c['full'] / 2**20:.2f} MiB) | {c['lora']:,} "
                  f"({c['lora'] / 2**20:.2f} MiB) | {c['lora'] / c['full']:.4f} |"
                  for p, c in summary["counted_bytes_per_step"].items()]
    lines += ["", "| preset | method | set-up | median step (ms) |", "| --- | --- | --- | ---: |"]
    lines += [f"| {s['preset']} | {s['method']} | {s['setup']} | {1000 * s['median_step_s']:.1f} |"
              for s in summary["step_time"]]
    lines += ["", "| preset | method | ratio of step times | median | quartiles |", "| --- | --- | --- | ---: | ---: |"]
    lines += [f"| {r['preset']} | {r['method']} | {r['ratio']} | {r['median']:.3f} | "
              f"{r['quartiles'][0]:.3f}-{r['quartiles'][1]:.3f} |" for r in summary["step_time_ratios"]]
    return "\n".join(lines)


def make_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", type=comma_list(choice(PRESETS), "tiny,small"), default=["tiny", "small"],
                   help=f"presets to launch, comma-separated, of {', '.join(PRESETS)} (default tiny,small; the "
                        f"bytes of every preset are also counted without training)")
    p.add_argument("--methods", type=comma_list(choice(METHODS), "full,lora"), default=list(METHODS),
                   help="comma-separated, of full, lora (default both)")
    p.add_argument("--batch-size", type=positive_int,
                   help="the global batch, split over the processes (default 12 on tiny, 16 on small)")
    p.add_argument("--r", type=positive_int, default=8, help="LoRA rank, on all six linears of every block")
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps per launch")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed steps first (DDP builds its buckets)")
    p.add_argument("--rounds", type=positive_int, default=3, help="launches of each set-up, taken in turns")
    p.add_argument("--out", default="results/bench_ddp")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)  # one measurement, by launch()
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    for preset in args.presets:
        width = config_from_preset(preset).n_embd
        if args.r > width:
            raise CommandError(f"--r {args.r} is above the width of the {preset} model's layers ({width}); "
                               f"valid ranks are 1..{width}")
        batch = args.batch_size or BATCH.get(preset, 16)
        try:
            distributed.batch_share(batch, world=2, what="--batch-size")
        except ValueError as e:
            raise CommandError(str(e)) from None
    check_writable_folder(args.out, "--out")
    jobs = [(preset, method, setup) for preset in args.presets for method in args.methods for setup in SETUPS]
    times, counts = {}, {}
    bar = tqdm(total=len(jobs) * args.rounds, desc="launches", disable=args.no_progress, dynamic_ncols=True)
    for _ in range(args.rounds):
        for preset, method, setup in jobs:
            bar.set_postfix_str(f"{preset} {method}, {setup}")
            m = launch(setup, preset, method, args)
            times.setdefault((preset, method, setup), []).append(statistics.median(m["step_s"]))
            if m["communication"] is not None:
                counts[(preset, method)] = m
            bar.update()
    bar.close()
    summary = summarise(times, counts)
    summary["counted_bytes_per_step"] = counted_bytes(args.r)
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "no_progress")},
              "batch_sizes": {p: args.batch_size or BATCH.get(p, 16) for p in args.presets},
              "cpu_count": os.cpu_count(), "torch": torch.__version__, **summary}
    path = os.path.join(args.out, "bench_ddp.json")
    write_json(result, path)
    print(table(summary))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    run_main(main)
