"""Many adapters over one base: what switching, swapping, loading and serving cost, measured in turns.

    python -m experiments.bench.adapters [--presets tiny,small] [--n-adapters 1,4,16,64,256]
                                         [--requests-per-adapter 2] [--out results/bench_adapters]

The production story of LoRA (S-LoRA, Sheng et al. 2023; Punica, Chen et al. 2023): keep one base
model and many small adapters, and serve each request with its own adapter. For each preset, one
base GPT (random weights: timings do not depend on what was learned) gets N adapters (r=8 on
every linear layer of every block, random nonzero A and B), for each N in --n-adapters, and this
script measures:

  switching, in turns, one of each per round (the model unmerged before and after each):
    set_adapter   make another adapter the active one (forward then uses its A and B, unmerged)
    merge swap    set_adapter, merge_lora, unmerge_lora: what serving with merged weights pays per
                  adapter change (W0 <- W0 + s B A on every layer, and back)
    load          load_adapter from a file into a resident adapter (read, check, copy)
  serving: N * --requests-per-adapter requests, request j for adapter j // requests-per-adapter,
  each a random prompt of --prompt-len tokens plus --new-tokens generated greedily (argmax) with
  GPT.generate's KV cache, as:
    mixed         one batch of all the requests, each row its own adapter (mixed_adapters,
                  minilora/mixed_batch.py): unmerged, gathered per row
    one at a time one adapter after another: set_adapter and merge_lora, generate that adapter's
                  requests as one batch, unmerge_lora: merged weights, zero added latency per token,
                  a merge swap per adapter
    Both produce the same tokens up to float rounding (the share of equal tokens is recorded).
    Two controls, in the same rounds, with the adapters off (disable_lora): the base model on all
    the requests in one batch (the ceiling: the most tokens/s a mixed batch could reach), and on
    the same groups of requests one generate call per adapter. Their ratio is what batching alone
    gains on this machine: the ceiling of the mixed batch's speed-up.
  memory: the bytes of N resident adapters beside N merged copies of the model, read from the
  tensors; and the per-row factors a mixed batch gathers in its largest layer (transient).
Once per preset:
  from disk: --disk-adapters adapter files in a folder, through an AdapterStore
    (minilora/adapter_store.py): cold, an adapter not loaded (read its file, check it, add it to
    the model; the file sits in the OS's page cache after the first round, so this is not a cold
    disk read); warm, one already loaded (a hit: nothing to do)
  the KV cache: the base model generating --cache-tokens tokens for one prompt of --prompt-len
    tokens with use_cache=True against use_cache=False (GPT.generate), the same tokens both ways.
    Past block_size the window slides and the cached path runs the window in full too, so the
    speed-up shrinks with the share of steps beyond block_size (tiny: block_size 64).

A ratio is the median over rounds of the two things' ratio within one round, with the quartiles
of the per-round ratios as its spread: the machine's speed drifts over a run, and a ratio within
one round cancels the drift. Round 0 is a warm-up and not counted. Serving more than 16 adapters
takes long per round, so it gets --gen-rounds-large timed rounds (default 1) instead of --gen-rounds. Ratios and medians go to
stdout and to OUT/bench_adapters.json, whose "headline" holds the goal's number; the curve of
tokens/s against N goes to OUT/bench_adapters.png.

The goal: at 16 adapters with 2 requests each, the mixed batch generates at least 3x the tokens
per second of one adapter at a time with merge swaps, with the `tiny` and `small` presets on a
CPU. Timings are wall-clock: run it on an otherwise idle machine.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
from tqdm import tqdm

from experiments.lib.timing import paired_ratio
from minilora import (AdapterStore, add_adapter, apply_lora, disable_lora, load_adapter, lora_layers, merge_lora,
                      mixed_adapters, remove_adapter, save_adapter, set_adapter, unmerge_lora)
from nanogpt.flags import CommandError, choice, comma_list, positive_float, positive_int, run_main, seed
from nanogpt.model import GPT
from nanogpt.presets import PRESETS, config_from_preset
from nanogpt.train import write_json

GOAL_ADAPTERS, GOAL_RATIO = 16, 3.0  # the goal: >= 3x at 16 adapters with 2 requests each


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


@torch.no_grad()
def add_random_adapters(model, names, r, alpha, seed):
    """Adapters `names` on every block linear, each with random nonzero A and B (a fresh adapter
    has B = 0: merging it would cost the same, but generation could not tell adapters apart)."""
    for name in names:
        if not lora_layers(model):
            apply_lora(model, "all-linear", r=r, alpha=alpha, adapter_name=name)
        else:
            add_adapter(model, name, "all-linear", r=r, alpha=alpha)
    g = torch.Generator().manual_seed(seed)
    for _, layer in lora_layers(model):
        for name in names:
            adapter = layer.adapters[name]
            adapter.lora_A.copy_(torch.randn(adapter.lora_A.shape, generator=g) / adapter.lora_A.shape[1] ** 0.5)
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g) * 0.02)


def tensor_bytes(tensors):
    seen, total = set(), 0
    for t in tensors:
        if t.untyped_storage().data_ptr() not in seen:  # a tied weight once
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def memory(model, names, n_rows_names):
    """Bytes: the base model, N adapters, N merged model copies, and the largest per-row factors one
    layer of a mixed batch gathers (they live while that layer runs)."""
    base = tensor_bytes([p for n, p in model.named_parameters() if ".adapters." not in n])
    adapters = tensor_bytes([p for n, p in model.named_parameters()
                             if ".adapters." in n and n.split(".adapters.")[1].split(".")[0] in names])
    gathered = 0  # the per-row factors a mixed batch gathers: each layer's kept for the batch's generation
    with torch.no_grad(), mixed_adapters(model, n_rows_names):
        for _, layer in lora_layers(model):
            if layer.row_adapters is not None:
                A_rows, B_rows, _ = layer.row_adapters.gather()
                gathered = max(gathered, A_rows.nbytes + B_rows.nbytes)
    n = len(names)
    return {"base": base, "adapters": adapters, "base_plus_adapters": base + adapters,
            "merged_copies": n * base, "mixed_batch_gathered_largest_layer": gathered,
            "resident / merged_copies": (base + adapters) / (n * base)}


def switching(model, names, adapter_path, rounds, bar):
    """Per round, in an order rotated every round: set_adapter, a merge swap, a load from disk."""
    def switch(name):
        set_adapter(model, name)

    def merge_swap(name):
        set_adapter(model, name)
        merge_lora(model)
        unmerge_lora(model)

    def load(name):
        load_adapter(model, adapter_path, adapter_name=name)

    kinds = {"set_adapter": switch, "merge_swap": merge_swap, "load": load}
    times = {k: [] for k in kinds}
    order = list(kinds)
    for round_ in range(rounds + 1):
        name = names[round_ % len(names)]
        for kind in order[round_ % 3:] + order[:round_ % 3]:
            seconds, _ = timed(kinds[kind], name)
            if round_ > 0:
                times[kind].append(seconds)
        bar.update()
    set_adapter(model, names[0])
    return times


def generate(model, prompts, new_tokens):
    """Greedy generation with the KV cache (argmax: the two ways of serving then produce the same tokens)."""
    return model.generate(prompts, new_tokens, top_k=1)


def groups(request_names):
    """{adapter name: the rows of its requests}, adapters in order of first request."""
    rows = {}
    for i, name in enumerate(request_names):
        rows.setdefault(name, []).append(i)
    return rows


def serve_mixed(model, prompts, request_names, new_tokens):
    with mixed_adapters(model, request_names):
        return generate(model, prompts, new_tokens)


def serve_one_at_a_time(model, prompts, request_names, new_tokens):
    out = []
    for name, rows in groups(request_names).items():
        set_adapter(model, name)
        merge_lora(model)
        out.append((rows, generate(model, prompts[rows], new_tokens)))
        unmerge_lora(model)
    ordered = torch.empty(prompts.shape[0], out[0][1].shape[1], dtype=prompts.dtype)
    for rows, tokens in out:
        ordered[rows] = tokens
    return ordered


def base_batched(model, prompts, request_names, new_tokens):
    with disable_lora(model):
        return generate(model, prompts, new_tokens)


def base_grouped(model, prompts, request_names, new_tokens):
    with disable_lora(model):
        for rows in groups(request_names).values():
            generate(model, prompts[rows], new_tokens)


SERVING = {"mixed": serve_mixed, "one_at_a_time": serve_one_at_a_time,
           "base_batched": base_batched, "base_grouped": base_grouped}


def serving(model, prompts, request_names, new_tokens, rounds, bar):
    """Per round, in an order rotated every round: the mixed batch, one adapter at a time with merge
    swaps, and the two controls without adapters."""
    ways = list(SERVING)
    times = {way: [] for way in ways}
    outputs = {}
    for round_ in range(rounds + 1):
        for way in ways[round_ % len(ways):] + ways[:round_ % len(ways)]:
            seconds, outputs[way] = timed(SERVING[way], model, prompts, request_names, new_tokens)
            if round_ > 0:
                times[way].append(seconds)
        bar.update()
    new = slice(prompts.shape[1], None)
    same = (outputs["mixed"][:, new] == outputs["one_at_a_time"][:, new]).float().mean().item()
    return times, same


@torch.no_grad()
def from_disk(config, seed_, n_files, rounds, r, alpha):
    """Seconds per adapter through an AdapterStore: cold (not loaded: read, check, add) and warm (a hit)."""
    torch.manual_seed(seed_)
    model = GPT(config).eval()  # the bench's base again (same seed): the files' fingerprint matches
    names = [f"disk{i}" for i in range(n_files)]
    add_random_adapters(model, names, r, alpha, seed_)
    times = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            save_adapter(model, os.path.join(folder, f"{name}.pt"), adapter_name=name)
            remove_adapter(model, name)
        file_bytes = os.path.getsize(os.path.join(folder, f"{names[0]}.pt"))
        for round_ in range(rounds + 1):
            store = AdapterStore(model, folder, capacity=n_files)
            for kind in ("cold", "warm"):  # each adapter once: the first pass loads, the second hits
                seconds = [timed(store.use, [name])[0] for name in names]
                if round_ > 0:
                    times[kind].append(statistics.median(seconds))
            assert (store.loads, store.hits) == (n_files, n_files)
            for name in names:
                remove_adapter(model, name)
    return {"files": n_files, "bytes_per_file": file_bytes,
            "seconds_per_adapter_median": {k: statistics.median(v) for k, v in times.items()},
            "seconds_per_adapter_rounds": times}


@torch.no_grad()
def kv_cache(config, seed_, prompt_len, new_tokens, rounds, bar):
    """The base model generating new_tokens for one prompt, with the KV cache and without, in turns."""
    torch.manual_seed(seed_)
    model = GPT(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed_))
    times, outputs = {"cached": [], "uncached": []}, {}
    for round_ in range(rounds + 1):
        for way in (["cached", "uncached"] if round_ % 2 == 0 else ["uncached", "cached"]):
            seconds, outputs[way] = timed(model.generate, prompt, new_tokens, 1.0, 1, None, way == "cached")
            if round_ > 0:
                times[way].append(seconds)
        bar.update()
    ratio, q1, q3 = paired_ratio(times["uncached"], times["cached"])
    past = max(0, prompt_len + new_tokens - config.block_size)  # steps whose window slid: no cache to reuse
    return {"new_tokens": new_tokens, "prompt_len": prompt_len, "block_size": config.block_size,
            "steps_past_block_size": min(past, new_tokens), "seconds_median": {k: statistics.median(v) for k, v in
                                                                                times.items()},
            "seconds_all": times, "speedup": ratio, "speedup_quartiles": [q1, q3],
            "same_tokens": bool(torch.equal(outputs["cached"], outputs["uncached"]))}


GEN = "mixed tokens/s / one_at_a_time tokens/s"
GEN_CEILING = "base batched tokens/s / base grouped tokens/s (the ceiling)"
OF_BASE = "mixed tokens/s / base batched tokens/s"


def bench_preset(preset, args):
    overrides = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size)
    config = config_from_preset(preset, **overrides)
    if args.prompt_len + args.new_tokens > config.block_size:
        raise CommandError(f"--prompt-len + --new-tokens ({args.prompt_len + args.new_tokens}) exceeds the "
                           f"{preset} preset's block_size {config.block_size}: give fewer tokens")
    torch.manual_seed(args.seed)
    model = GPT(config).eval()
    model.requires_grad_(False)
    resident, rows = [], {}
    steps = (len(args.n_adapters) * (args.switch_rounds + 1) + args.gen_rounds + 1
             + sum(1 + (args.gen_rounds if n <= GOAL_ADAPTERS else args.gen_rounds_large) for n in args.n_adapters))
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=steps, desc=f"bench_adapters ({preset})") as bar:
        adapter_path = os.path.join(tmp, "adapter.pt")
        for n in sorted(args.n_adapters):
            new = [f"a{i}" for i in range(len(resident), n)]
            add_random_adapters(model, new, args.r, args.alpha, args.seed + len(resident))
            resident += new
            if not os.path.exists(adapter_path):
                save_adapter(model, adapter_path, adapter_name=resident[0])
            set_adapter(model, resident[0])
            switch_times = switching(model, resident, adapter_path, args.switch_rounds, bar)
            request_names = [name for name in resident for _ in range(args.requests_per_adapter)]
            g = torch.Generator().manual_seed(args.seed)
            prompts = torch.randint(0, config.vocab_size, (len(request_names), args.prompt_len), generator=g)
            rounds = args.gen_rounds if n <= GOAL_ADAPTERS else args.gen_rounds_large
            gen_times, same = serving(model, prompts, request_names, args.new_tokens, rounds, bar)
            tokens = len(request_names) * args.new_tokens
            spread = {
                "merge_swap / set_adapter": paired_ratio(switch_times["merge_swap"], switch_times["set_adapter"]),
                "load / set_adapter": paired_ratio(switch_times["load"], switch_times["set_adapter"]),
                GEN: paired_ratio(gen_times["one_at_a_time"], gen_times["mixed"]),
                GEN_CEILING: paired_ratio(gen_times["base_grouped"], gen_times["base_batched"]),
                OF_BASE: paired_ratio(gen_times["base_batched"], gen_times["mixed"]),
            }
            rows[n] = {
                "n_adapters": n, "requests": len(request_names), "new_tokens_per_request": args.new_tokens,
                "seconds_median": {k: statistics.median(v) for k, v in {**switch_times, **gen_times}.items()},
                "seconds_all": {**switch_times, **gen_times},
                "tokens_per_s_median": {way: tokens / statistics.median(t) for way, t in gen_times.items()},
                "ratios": {k: m for k, (m, _, _) in spread.items()},
                "ratio_quartiles": {k: [q1, q3] for k, (_, q1, q3) in spread.items()},
                "same_tokens_share": same,
                "bytes": memory(model, resident, request_names),
            }
        cache = kv_cache(config, args.seed, args.prompt_len, args.cache_tokens, args.gen_rounds, bar)
    disk = from_disk(config, args.seed, args.disk_adapters, args.gen_rounds, args.r, args.alpha)
    return {"config": vars(config), "by_n_adapters": rows, "from_disk": disk, "kv_cache": cache}


def print_preset(preset, result, args):
    rows = result["by_n_adapters"]
    print(f"\n{preset}: {result['config']['n_layer']} layers, width {result['config']['n_embd']}, r={args.r} on "
          f"every block linear; {args.requests_per_adapter} requests per adapter, prompt {args.prompt_len} + "
          f"{args.new_tokens} new tokens (greedy, KV cache)")
    print(f"{'N':>4} {'set_adapter':>12} {'merge swap':>11} {'load':>10} {'swap/set':>9} {'load/set':>9} "
          f"{'resident MiB':>13} {'N copies MiB':>13}")
    for n, row in rows.items():
        s, r, b = row["seconds_median"], row["ratios"], row["bytes"]
        print(f"{n:>4} {s['set_adapter'] * 1e3:>10.3f}ms {s['merge_swap'] * 1e3:>9.2f}ms {s['load'] * 1e3:>8.2f}ms "
              f"{r['merge_swap / set_adapter']:>9.1f} {r['load / set_adapter']:>9.1f} "
              f"{b['base_plus_adapters'] / 2**20:>13.2f} {b['merged_copies'] / 2**20:>13.2f}")
    print(f"{'N':>4} {'mixed tok/s':>12} {'1-at-a-time':>12} {'base tok/s':>11} {'mixed / 1-at-a-time':>25} "
          f"{'ceiling':>8} {'mixed / base':>13} {'same':>5}")
    for n, row in rows.items():
        r, q, tps = row["ratios"], row["ratio_quartiles"], row["tokens_per_s_median"]
        print(f"{n:>4} {tps['mixed']:>12,.0f} {tps['one_at_a_time']:>12,.0f} {tps['base_batched']:>11,.0f} "
              f"{r[GEN]:>12.2f} ({q[GEN][0]:.2f}-{q[GEN][1]:.2f}) {r[GEN_CEILING]:>8.2f} {r[OF_BASE]:>13.2f} "
              f"{row['same_tokens_share']:>5.3f}")
    disk, cache = result["from_disk"], result["kv_cache"]
    print(f"from disk ({disk['files']} files of {disk['bytes_per_file'] / 1024:.0f} KiB, AdapterStore): cold load "
          f"{disk['seconds_per_adapter_median']['cold'] * 1e3:.2f} ms, warm (resident) "
          f"{disk['seconds_per_adapter_median']['warm'] * 1e6:.1f} us per adapter")
    print(f"KV cache, {cache['new_tokens']} new tokens after {cache['prompt_len']} (block_size {cache['block_size']}, "
          f"{cache['steps_past_block_size']} steps past it): {cache['speedup']:.2f}x faster than without "
          f"({cache['speedup_quartiles'][0]:.2f}-{cache['speedup_quartiles'][1]:.2f}); same tokens: "
          f"{cache['same_tokens']}")


def headline(results, args):
    """The goal's number: mixed / one at a time at GOAL_ADAPTERS adapters, per preset, and the lowest."""
    by_preset = {p: r["by_n_adapters"][GOAL_ADAPTERS] for p, r in results.items() if GOAL_ADAPTERS in r["by_n_adapters"]}
    if not by_preset:
        return None
    ratios = {p: row["ratios"][GEN] for p, row in by_preset.items()}
    lowest = min(ratios.values())
    return {"n_adapters": GOAL_ADAPTERS, "requests_per_adapter": args.requests_per_adapter,
            "speedup_vs_one_at_a_time": lowest, "speedup_by_preset": ratios,
            "quartiles_by_preset": {p: row["ratio_quartiles"][GEN] for p, row in by_preset.items()},
            "ceiling_by_preset": {p: row["ratios"][GEN_CEILING] for p, row in by_preset.items()},
            "kv_cache_speedup_by_preset": {p: r["kv_cache"]["speedup"] for p, r in results.items()},
            "goal": f">= {GOAL_RATIO:g}x at {GOAL_ADAPTERS} adapters, 2 requests each",
            "met": args.requests_per_adapter == 2 and lowest >= GOAL_RATIO}


def plot(results, path):
    """Tokens/s against the number of distinct adapters: mixed, one at a time, the base alone."""
    import matplotlib.pyplot as plt  # only for the plot: the measurement needs no matplotlib

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    styles = {"base_batched": ("base model alone, one batch (the ceiling)", "k", "--"),
              "mixed": ("mixed batch: each row its own adapter", "tab:blue", "-"),
              "one_at_a_time": ("one adapter at a time, merge swaps", "tab:red", "-")}
    for ax, (preset, result) in zip(axes[0], results.items()):
        rows = result["by_n_adapters"]
        keys = sorted(rows, key=int)  # ints here, strings when read back from the JSON
        ns = [int(k) for k in keys]
        for way, (label, color, line) in styles.items():
            ax.plot(ns, [rows[k]["tokens_per_s_median"][way] for k in keys], line, color=color, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_yscale("log")
        ax.set_xlabel("distinct adapters N (2 requests each; log scale)")
        ax.set_ylabel("generated tokens per second (log scale)")
        c = result["config"]
        ax.set_title(f"{preset}: {c['n_layer']} layers x {c['n_embd']}, KV cache")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Serving many adapters over one base (greedy generation, CPU)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Timings are wall-clock: run on an otherwise idle machine.")
    p.add_argument("--presets", type=comma_list(choice(PRESETS), "tiny,small"), default=["tiny", "small"],
                   help=f"comma-separated model sizes from {sorted(PRESETS)} (default tiny,small)")
    p.add_argument("--n-adapters", type=comma_list(positive_int, "1,4,16,64"), default=[1, 4, 16, 64, 256],
                   help="comma-separated numbers of resident adapters (default 1,4,16,64,256)")
    p.add_argument("--requests-per-adapter", type=positive_int, default=2, help="requests served per adapter (default 2)")
    p.add_argument("--prompt-len", type=positive_int, default=8, help="tokens per prompt (default 8)")
    p.add_argument("--new-tokens", type=positive_int, default=24, help="tokens generated per request (default 24)")
    p.add_argument("--cache-tokens", type=positive_int, default=200,
                   help="tokens generated with and without the KV cache (default 200)")
    p.add_argument("--disk-adapters", type=positive_int, default=16,
                   help="adapter files loaded through an AdapterStore, cold and warm (default 16)")
    p.add_argument("--r", type=positive_int, default=8, help="each adapter's rank (default 8)")
    p.add_argument("--alpha", type=positive_float, default=16.0, help="each adapter's alpha (default 16)")
    p.add_argument("--switch-rounds", type=positive_int, default=30,
                   help="timed rounds of set_adapter / merge swap / load (default 30; plus a warm-up round)")
    p.add_argument("--gen-rounds", type=positive_int, default=3,
                   help="timed rounds of serving (up to 16 adapters), of the KV cache and of loads from disk "
                        "(default 3; plus a warm-up round)")
    p.add_argument("--gen-rounds-large", type=positive_int, default=1,
                   help="timed rounds of serving above 16 adapters, whose rounds take long (default 1; plus a "
                        "warm-up round)")
    p.add_argument("--seed", type=seed, default=0, help="base weights, adapters and prompts (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default="results/bench_adapters", help="folder for bench_adapters.json and .png")
    for flag in ("n-layer", "n-head", "n-embd", "block-size"):
        p.add_argument(f"--{flag}", type=positive_int, default=None, help="override every preset's value (for tests)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results = {preset: bench_preset(preset, args) for preset in args.presets}
    for preset, result in results.items():
        print_preset(preset, result, args)
    top = headline(results, args)
    if top is not None:
        print(f"\ngoal ({top['goal']}): {top['speedup_vs_one_at_a_time']:.2f}x at the lowest preset "
              f"({', '.join(f'{p} {x:.2f}x' for p, x in top['speedup_by_preset'].items())}): "
              f"{'met' if top['met'] else 'NOT met'}")
    out = {"args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "headline": top, "presets": results}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench_adapters.json")
    write_json(out, path)
    plot(results, os.path.join(args.out, "bench_adapters.png"))
    print(f"wrote {path} and bench_adapters.png")
    return out


if __name__ == "__main__":
    run_main(main)
