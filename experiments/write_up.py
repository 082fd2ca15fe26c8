"""The prose of REPRODUCTIONS.md that belongs to no single experiment: the opening, the summary
table, the run times. Numbers in it come from the records, like everything in the document.

Each experiment module's `report(results)` returns its section as a dict:
    title           the section's heading, e.g. "The best learning rate for LoRA"
    claim, source   one line each for the summary table
    verdict         "reproduced", "partly", "not reproduced" or "not tested in the claim's regime"
    detail          one line for the summary table: the numbers the verdict rests on
    body            the section's Markdown below its heading: claim, command, plots, tables, verdict
"""
from experiments.seeds import show

VERDICTS = ("reproduced", "partly", "not reproduced", "not tested in the claim's regime")


def base_losses(results):
    """(target, source) loss of the base model before fine-tuning, from the learning-rate sweep."""
    first = results.json("lr_sweep", "records.json")[0]
    return first["base_target_loss"], first["base_source_loss"]


def opening(results):
    target, source = base_losses(results)
    info = results.json("lr_sweep", "lr_sweep.json")
    full = info["curves"][0]
    return f"""# Reproductions: the LoRA papers' headline claims, tested at small scale

Each section puts one published claim to the test on a model a laptop can train: the claim and
its source, the command, the plot from a real run of that command, our numbers, and a verdict:
**reproduced**, **partly**, **not reproduced**, or **not tested in the claim's regime** (the
claim is about a setting this scale cannot reach), with the likely reason.

This file is generated: `python -m experiments.report` writes it from the records each command
leaves in `results/`, and `tests/test_report.py` fails if the committed text is not what the
committed records give. No number below is typed by hand.

**Setup.** The experiments share one base model and one cache of runs: the `tiny` GPT (4 layers,
4 heads, 128 dims, block 64, 0.83M parameters, byte-level) pretrained for 2000 steps on the
Python standard library's code, then fine-tuned for 600 steps at batch 12 on the prose of the
Python docs. Losses are validation cross-entropy in nats per byte (ln 256 = 5.55 is a uniform
guess over the 256 byte values; divide by ln 2 = 0.693 for bits) on the docs (the target: what
is learned) and on the code (the source: what is forgotten). The base model starts at
{target:.3f} on the docs and {source:.3f} on the code. LoRA adapts all six linear layers of each
block (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `up_proj`, `down_proj`) with alpha 16 unless a
section says otherwise.

**Learning rates.** Every method in a comparison runs at its own tuned rate. The defaults come
from section 1's sweep over three seeds: full fine-tuning at {full['best_grid_lr']:g}, LoRA at
{info['curves'][2]['best_grid_lr']:g} (the best grid rates for full fine-tuning and LoRA r=8).
Other contenders (target sets, variants, ranks) get their rate from a small cached sweep on the
same quarter-decade grid (`experiments/tuning.py`): the first seed at a few rates around the
default, widened while the best sits at an edge, then the other seeds at the chosen rate.

**Statistics.** A fine-tuning seed changes the batches and the adapter's initialisation, never
the base model. Every comparison uses three seeds (1337, 1338, 1339) unless a section says
otherwise, and reports the mean with its 95% confidence interval (Student's t, 2 degrees of
freedom: the interval is wide). Two methods run with the same seeds see the same batches, so
differences are taken seed by seed, and a difference is **called** (marked `*`) only when the
95% interval of the paired difference excludes zero.

Every command runs offline on a CPU; `--device cuda --preset small` runs the same experiment at
the GPU scale. Finished runs are cached in `runs/cache` by a hash of everything that decides
them (the corpora by the SHA-256 of their bytes), so a command that needs a run another one
already made reuses it.
"""


def section_number(name):
    from experiments.report import SECTIONS

    return SECTIONS.index(name) + 1


def summary_table(sections):
    lines = ["| # | claim | source | verdict |", "| --- | --- | --- | --- |"]
    for name, s in sections:
        assert s["verdict"] in VERDICTS, s["verdict"]
        lines.append(f"| {section_number(name)} | {s['claim']} | {s['source']} | **{s['verdict']}**: {s['detail']} |")
    return "\n".join(lines) + "\n"


def run_times(results, sections):
    lines = ["## Run times at the defaults", "",
             "Measured by each command itself (`results/<name>/run_info.json`): the wall time of the last "
             "invocation that trained runs, how many of its runs it trained and how many it found in the "
             "cache (runs shared with an earlier section, or an earlier invocation, are not trained again), "
             "with the processes it ran side by side. Most runs were trained while other jobs shared the 2 "
             "cores, which stretched them up to several times: the wall times are upper bounds. The last column "
             "estimates the command on an idle 2-core machine from an empty cache: its distinct runs times the "
             "lower quartile of its runs' training times (the least disturbed of them), over its processes. "
             "Run in this document's order, each command finds its predecessors' runs in the cache and trains "
             "only its own.", "",
             "| command | runs | trained / from the cache | wall time | processes | one run (lower quartile) | "
             "from an empty cache, idle (estimate) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, _ in sections:
        current = results.json(name, "run_info.json")
        info = current.get("last_training_run") or current  # the last invocation that trained runs
        try:
            times = sorted(r["wall_time_s"] for r in results.json(name, "records.json") if r.get("wall_time_s"))
        except (OSError, ValueError, KeyError, TypeError):
            times = []
        one = times[len(times) // 4] if times else None
        recorded = info["runs_trained"] > 0  # else its runs were trained before run_info.json existed
        workers = max(1, info["workers"] or 1) if recorded else current["cpu_count"]  # then: the default
        wall = f"{info['wall_time_s'] / 60:.1f} min" if recorded else "not recorded"
        empty = f"{info['runs_planned'] * one / workers / 60:.0f} min" if one else "-"
        lines.append(f"| `python -m experiments.{name}` | {info['runs_planned']} | {info['runs_trained']} / "
                     f"{info['runs_planned'] - info['runs_trained']} | "
                     f"{wall} | "
                     f"{workers} | {f'{one:.0f} s' if one else '-'} | {empty} |")
    return "\n".join(lines) + "\n"


def document(results, sections):
    parts = [opening(results), "## The claims at a glance\n", summary_table(sections)]
    for name, s in sections:  # numbered by their place in report.SECTIONS, as section_ref names them
        parts.append(f"## {section_number(name)}. {s['title']}\n\n{s['body'].strip()}\n")
    if results.has("bench_adapters", "bench_adapters.json"):  # a measurement, not a claim with a verdict
        parts.append("## Serving many adapters over one base\n\n" + adapters(results, root="../"))
    parts.append(run_times(results, sections))
    return "\n".join(parts)


MIB = 1024 ** 2
KIB = 1024
PARTS = ("params", "grads", "optimizer", "activations")


def main_results(results):
    """The README's "Results of the main job": the rank sweep (3 seeds) and full_vs_lora's costs."""
    sweep = results.json("rank_sweep", "rank_sweep.json")
    groups = sweep["groups"]
    full = next(g for g in groups if g["kind"] == "full")
    lora = {g["r"]: g for g in groups if g["kind"] == "lora"}
    rs = {g["r"]: g for g in groups if g["kind"] == "rslora"}
    low, top = min(lora), max(lora)
    first = results.json("rank_sweep", "records.json")[0]
    base_t, base_s = first["base_target_loss"], first["base_source_loss"]
    costs = {r["method"]: r for r in results.json("full_vs_lora", "records.json")}
    f, l = costs["full"], costs["lora"]

    def total(m):
        return sum(m[k] for k in PARTS)

    def parts(m):
        return " / ".join(f"{m[k] / MIB:.2f}" for k in PARTS) + f" ({total(m) / MIB:.1f})"

    batches = results.json("full_vs_lora", "memory_vs_batch.json")
    shares = ", ".join(f"{100 * total(row['lora']) / total(row['full']):.0f}% at batch {row['batch_size']}"
                       for row in batches)
    n = len(sweep["seeds"])
    r8 = lora[8]
    share = r8["trainable_params"] / r8["total_params"]
    return f"""Made by the quickstart command: the `tiny` GPT ({full['trainable_params'] / 1e6:.2f}M parameters)
pretrained for 2000 steps on `python-code`, then {sweep['steps']} fine-tuning steps at batch
{first['batch_size']} on `python-docs`, {n} seeds per run. Full fine-tuning trains at lr
{sweep['full_lr']:g}, LoRA at {sweep['lr']:g}, each the best of a three-seed sweep
([REPRODUCTIONS](experiments/REPRODUCTIONS.md), section 1), alpha 16 at every rank, on all six
linear layers of every block. A loss is the cross-entropy of the next byte in nats (a uniform
guess over 256 bytes scores ln 256 = 5.55; divide by ln 2 for bits per byte); the base model
starts at {base_t:.3f} on the docs and {base_s:.3f} on the code. Losses are means over the
seeds ± the 95% confidence interval. Every number in this section is written from
`results/rank_sweep/` and `results/full_vs_lora/` by `python -m experiments.report`.

![final loss against rank](results/rank_sweep/final_loss_vs_rank.png)

**What is learned and what is forgotten.** Full fine-tuning learns the prose best
({show(full['target_loss'])}) and forgets the most code ({base_s:.3f} to {full['source_loss']['mean']:.3f}).
LoRA lands in between at every rank: more rank learns more ({show(lora[low]['target_loss'])} at r={low},
{show(r8['target_loss'])} at r=8, {show(lora[top]['target_loss'])} at r={top}) and forgets more (code
loss {lora[low]['source_loss']['mean']:.3f} at r={low}, {r8['source_loss']['mean']:.3f} at r=8,
{lora[top]['source_loss']['mean']:.3f} at r={top}). Each doubling of the rank buys less than the one
before, and even r={top} stays {lora[top]['target_loss']['mean'] - full['target_loss']['mean']:.3f}
above full fine-tuning. With rsLoRA's alpha/sqrt(r) at the same rate, r={top} ends at
{show(rs[top]['target_loss'])}: the rate tuned for alpha/r is too high for it (a change of scaling
needs its own rate; REPRODUCTIONS, sections 2 and 10).

![loss curves](results/rank_sweep/loss_curves.png)

![parameters and memory against rank](results/rank_sweep/params_memory_vs_rank.png)

**What the rank costs.** Trainable parameters grow as r (in + out) per adapted matrix:
{lora[low]['trainable_params']:,} at r={low}, {r8['trainable_params']:,} at r=8 ({100 * share:.1f}% of the adapted
model's {r8['total_params']:,} parameters, adapters included, as `count_parameters` and PEFT
count them), {lora[top]['trainable_params']:,} at r={top}. On this model (width 128) r={top} is half the
width: low rank only pays while r is small next to the layer's width.

![full fine-tuning against LoRA: costs](results/full_vs_lora/costs.png)

| run | trainable params | docs loss | code loss | memory (MiB): weights / grads / optimizer / activations (total) | saved file |
| --- | ---: | ---: | ---: | ---: | ---: |
| full fine-tuning | {f['trainable_params']:,} | {f['final_target_loss']:.3f} | {f['final_source_loss']:.3f} | {parts(f['memory'])} | {f['saved_bytes'] / KIB:,.0f} KiB |
| LoRA r={l['r']} | {l['trainable_params']:,} | {l['final_target_loss']:.3f} | {l['final_source_loss']:.3f} | {parts(l['memory'])} | {l['saved_bytes'] / KIB:,.0f} KiB |

One seed each (`python -m experiments.full_vs_lora`, seed {f['seed']}). Step times are not
compared here: one run after another on a shared machine is noise. `experiments/bench_lora.py`
times the two in turns ("Is LoRA faster?" below).

**Where the memory goes.** Parameter, gradient and optimizer bytes are read from the tensors and
equal the analytic count exactly (tested): 16 bytes per trainable fp32 parameter for full
fine-tuning (weight, gradient, two AdamW moments), 4 per frozen one. LoRA removes almost all of
the gradient and optimizer state ({(f['memory']['grads'] + f['memory']['optimizer']) / MIB:.1f} MiB to
{(l['memory']['grads'] + l['memory']['optimizer']) / MIB:.1f} MiB), but the activations saved for the backward pass
(counted with `saved_tensors_hooks`, each storage once) do not shrink: LoRA freezes weights, it
does not shorten the forward pass. So the total only falls from {total(f['memory']) / MIB:.1f} to
{total(l['memory']) / MIB:.1f} MiB at batch {f['batch_size']}.

![memory against batch size](results/full_vs_lora/memory_vs_batch.png)

As the batch grows the activations dominate and LoRA's saving shrinks: LoRA needs {shares} of
full fine-tuning's memory. The 25% limit (4 of 16 bytes per parameter) is approached only where
the weights dwarf the activations, as in the GPT-3 setting of the LoRA paper (1.2 TB to 350 GB);
[`docs/scale.md`](docs/scale.md) measures how that happens as the model grows.

**File size.** The adapter file is {f['saved_bytes'] / l['saved_bytes']:.1f}x smaller than the full
checkpoint here ({l['saved_bytes'] / KIB:,.0f} KiB against {f['saved_bytes'] / KIB:,.0f} KiB); the adapter grows
with the width and the model with its square, so the ratio grows with the model.

![loss curves, full against LoRA](results/full_vs_lora/loss_curves.png)
"""


def speed(results):
    """The README's "Is LoRA faster?" paragraph, from results/bench_lora (one run, steps in turns)."""
    bench = results.json("bench_lora", "bench_lora.json")
    ratio, quart = bench["ratios"], bench["ratio_quartiles"]
    a = bench["args"]

    def faster(key):  # a step-time ratio as "N.NNx faster (quartiles a to b)"
        q = quart[key]
        return f"{1 / ratio[key]:.2f}x faster (quartiles {1 / q[1]:.2f}x to {1 / q[0]:.2f}x)"

    qlora = ""
    if "qlora_step / lora_step" in ratio:
        q = quart["qlora_step / lora_step"]
        qlora = (f" A QLoRA step (the same adapters on an NF4 base, dequantized just in time) took "
                 f"{ratio['qlora_step / lora_step']:.2f}x a LoRA step (quartiles {q[0]:.2f} to {q[1]:.2f}); "
                 f"dequantizing was {100 * ratio['qlora_dequantize_time / qlora_step (profile)']:.0f}% of its "
                 f"step in a profile.")
    return f"""Measured by `python -m experiments.bench_lora` (`results/bench_lora/`): the `{a['preset']}` GPT
({bench['trainable_parameters']['total'] / 1e6:.1f}M parameters), batch {a['batch_size']}, r={a['r']} on the six linear layers of every
block, {bench['threads']} threads, {bench['torch']}; each round times one step of every variant in turn,
and a ratio is the median over {a['steps']} rounds of the two steps' ratio within a round. A LoRA step was
{faster('lora_step / full_step')} than a full fine-tuning step; the floor, a step with every weight
frozen and no adapter at all, {faster('floor_step / full_step')}. The straightforward
`base(x) + (x @ A.T @ B.T) * scaling` took {ratio['straightforward_lora_step / full_step']:.2f}x a full step, minilora's
fused path {ratio['lora_step / full_step']:.2f}x: most of LoRA's gain in step time here comes from the fused path.{qlora} A merged LoRA model's forward took
{ratio['lora_forward_merged / base_forward']:.2f}x the base model's (the same computation), an unmerged one
{ratio['lora_forward_unmerged / base_forward']:.2f}x. On the tiny GPT the adapters' thin products and small ops cost
about what skipping the weight gradients saves ([`docs/performance.md`](docs/performance.md), with the
profile and the reasons); how the saving in time, memory and file size grows from the tiny GPT to
GPT-2-medium's shape is in [`docs/scale.md`](docs/scale.md).
"""


def claims(results):
    """The README's "Claims against our measurements" table: the measured cells from the records."""
    bench = results.json("bench_lora", "bench_lora.json")
    ratio, quart = bench["ratios"], bench["ratio_quartiles"]
    preset = bench["args"]["preset"]
    sweep = results.json("rank_sweep", "rank_sweep.json")
    full = next(g for g in sweep["groups"] if g["kind"] == "full")
    lora = {g["r"]: g for g in sweep["groups"] if g["kind"] == "lora"}
    best = min(lora.values(), key=lambda g: g["target_loss"]["mean"])
    base_s = results.json("rank_sweep", "records.json")[0]["base_source_loss"]
    costs = {r["method"]: r for r in results.json("full_vs_lora", "records.json")}
    batches = results.json("full_vs_lora", "memory_vs_batch.json")

    def total(m):
        return sum(m[k] for k in PARTS)

    def share(row):
        return f"{100 * total(row['lora']) / total(row['full']):.0f}% at batch {row['batch_size']}"

    q = quart["lora_step / full_step"]
    qm = quart["lora_forward_merged / base_forward"]
    f, l = costs["full"]["memory"], costs["lora"]["memory"]
    rows = [
        ("LoRA trains faster",
         f"`{preset}` GPT: a step {1 / ratio['lora_step / full_step']:.2f}x faster (quartiles {1 / q[1]:.2f}x to "
         f"{1 / q[0]:.2f}x), the floor {1 / ratio['floor_step / full_step']:.2f}x (`results/bench_lora/`; notebook 3 "
         f"times it in turns on the tiny one; by model size: [`docs/scale.md`](docs/scale.md))",
         "partly. A LoRA step saves the weight gradients, which grow with the width squared, and pays for its "
         "adapters, which grow with the width; on the tiny model (width 128) the two nearly cancel. The paper's 25% "
         "is on GPT-3 175B"),
        ("as good as full fine-tuning",
         f"not here: at every rank LoRA ends above full fine-tuning on the docs, r={best['r']} at "
         f"{show(best['target_loss'])} against {show(full['target_loss'])}, each at its tuned rate "
         f"(`results/rank_sweep/`)",
         "a short budget on a tiny model; full fine-tuning also changes embeddings, biases and norms"),
        ("no forgetting",
         f"LoRA forgets less, not nothing: the code loss rises from {base_s:.3f} at every rank (to "
         f"{min(g['source_loss']['mean'] for g in lora.values()):.3f}-{max(g['source_loss']['mean'] for g in lora.values()):.3f}), "
         f"less than under full fine-tuning ({full['source_loss']['mean']:.3f}) (`results/rank_sweep/`; "
         f"learning against forgetting: REPRODUCTIONS)",
         "the frozen W0 limits the change to a few directions, but those directions also serve the old task"),
        ("zero added latency",
         f"merged forward {ratio['lora_forward_merged / base_forward']:.2f}x the base model's (quartiles "
         f"{qm[0]:.2f} to {qm[1]:.2f}); unmerged {ratio['lora_forward_unmerged / base_forward']:.2f}x (`{preset}` GPT, "
         f"`results/bench_lora/`; notebook 2 on the tiny one)",
         "merging folds delta W into W0: the same computation. Unmerged, the adapter's thin products add a little"),
        ("tiny adapter files",
         f"at r=8, {costs['full']['saved_bytes'] / costs['lora']['saved_bytes']:.1f}x smaller than the full checkpoint "
         f"on the tiny GPT, {1 / ratio['adapter_file / full_checkpoint']:.0f}x on the `{preset}` one "
         f"(`results/full_vs_lora/`, `results/bench_lora/`)",
         "the adapter grows with the width, the model with its square, so the bigger the model the smaller the file "
         "by comparison (the paper: 350 GB to 35 MB)"),
        ("much less training memory (the paper: 1.2 TB to 350 GB)",
         f"{total(f) / MIB:.1f} to {total(l) / MIB:.1f} MiB at batch {costs['full']['batch_size']} on the tiny GPT; "
         f"LoRA needs {share(batches[0])} and {share(batches[-1])} of full fine-tuning's memory "
         f"(`results/full_vs_lora/`; by model size: [`docs/scale.md`](docs/scale.md))",
         "LoRA drops the frozen weights' gradients and optimizer state, not the activations, and in a small model "
         "the activations are most of the memory"),
    ]
    lines = ["| the claim | measured here (where) | why, at this scale |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def scale(results):
    """The README's "How LoRA's savings grow with the model", from results/scale (docs/scale.md has it all)."""
    from experiments import scale_report

    data = results.json("scale", "scale.json")
    extrapolation = results.json("scale", "extrapolation.json")
    cores = data["cpu_count"] or 1
    busy = (data.get("load_average") or {}).get("start", 0) / cores > scale_report.BUSY
    caveat = (" (the machine was busy during that run: its step-time ratios are a draft; memory, files and FLOPs "
              "do not depend on it)" if busy and data["device"] == "cpu" else "")
    rows = ["| claim | paper | cost model | what the cost model counts |", "| --- | ---: | ---: | --- |"]
    for row in extrapolation["rows"]:
        ours = f"{row['ours']:.2f}x" if row["unit"] == "x" else scale_report.fmt_bytes(row["ours"])
        rows.append(f"| {row['claim']} | {row['paper_text']} | {ours} | {row['what']} |")
    sizes = ", ".join(f"`{r['preset']}`" for r in data["sizes"])
    return f"""The tiny GPT below is the first point on a curve. `python -m experiments.scale` measures
full fine-tuning, LoRA, QLoRA and the frozen floor at {sizes} (random
weights: costs depend on shapes, not values), each part of the memory beside a cost model
(`experiments/cost_model.py`) that predicts it to the byte{caveat}:

{scale_report.summary(data)}

![where LoRA pays](results/scale/where_lora_pays.png)

The same cost model, applied to the papers' settings ([`docs/scale.md`](docs/scale.md) has the
tables, the plots, every prediction beside its measurement, and why ours and the papers' differ):

{chr(10).join(rows)}
"""


def adapters(results, root=""):
    """Many adapters over one base, from results/bench_adapters; root: from the Markdown file to the repository."""
    bench = results.json("bench_adapters", "bench_adapters.json")
    a, gen = bench["args"], "mixed tokens/s / one_at_a_time tokens/s"
    lines = [f"Measured by `python -m experiments.bench_adapters` ({bench['torch']}, {bench['threads']} thread(s); "
             f"medians over {a['switch_rounds']} rounds for switching and {a['gen_rounds']} for generation "
             f"({a.get('gen_rounds_large', a['gen_rounds'])} above 16 adapters), taken in turns; "
             f"{a['requests_per_adapter']} requests per adapter, a prompt of {a['prompt_len']} tokens and "
             f"{a['new_tokens']} new ones, greedy, with the KV cache):", "",
             "| model | N adapters | set_adapter | merge swap | memory: N resident / N merged copies (MiB) | tokens/s: "
             "mixed batch, one at a time, base alone | mixed / one at a time (quartiles) | ceiling |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for preset, data in bench["presets"].items():
        for n, row in data["by_n_adapters"].items():
            t, r, (q1, q3), b, tps = (row["seconds_median"], row["ratios"], row["ratio_quartiles"][gen], row["bytes"],
                                      row["tokens_per_s_median"])
            lines.append(
                f"| `{preset}` | {n} | {1000 * t['set_adapter']:.2f} ms | {1000 * t['merge_swap']:.2f} ms | "
                f"{b['base_plus_adapters'] / MIB:.1f} / {b['merged_copies'] / MIB:.1f} | {tps['mixed']:,.0f}, "
                f"{tps['one_at_a_time']:,.0f}, {tps['base_batched']:,.0f} | {r[gen]:.2f}x "
                f"({'one round' if q1 == q3 else f'{q1:.2f}-{q3:.2f}'}) | "
                f"{r['base batched tokens/s / base grouped tokens/s (the ceiling)']:.2f}x |")
    same = all(row["same_tokens_share"] == 1 for d in bench["presets"].values() for row in d["by_n_adapters"].values())
    lines += ["", "The ceiling is what batching gains for the base model alone (one batch of all requests against one "
              "batch per adapter)." + (" Every mixed batch produced the same tokens as each adapter alone." * same)]
    if head := bench.get("headline"):
        lines += ["", f"Goal ({head['goal']}): " + ", ".join(
            f"`{p}` {x:.2f}x (quartiles {head['quartiles_by_preset'][p][0]:.2f}-{head['quartiles_by_preset'][p][1]:.2f})"
            for p, x in head["speedup_by_preset"].items()) + f": **{'met' if head['met'] else 'not met'}**."]
    for preset, disk, cache in ((p, d["from_disk"], d["kv_cache"]) for p, d in bench["presets"].items()):
        load, (q1, q3) = disk["seconds_per_adapter_median"], cache["speedup_quartiles"]
        lines += ["", f"`{preset}`: an adapter file ({disk['bytes_per_file'] / 1024:.0f} KiB) loads through the "
                      f"`AdapterStore` in {1000 * load['cold']:.1f} ms (cold: read, checked, added; from the OS's page "
                      f"cache) and {1e6 * load['warm']:.0f} us when resident (warm). The KV cache generates "
                      f"{cache['new_tokens']} tokens {cache['speedup']:.2f}x faster than without (quartiles {q1:.2f}-"
                      f"{q3:.2f}); {cache['steps_past_block_size']} of those steps lie past block_size "
                      f"{cache['block_size']}, where the window slides and runs in full either way."]
    note = bench.get("machine_note", "")
    lines += ["", note[:1].upper() + note[1:] + ". " * bool(note) + "What the mixed batch still loses to the base alone, "
              f"and where the rest of the gap to S-LoRA's figures lies: [`docs/serving.md`]({root}docs/serving.md).", "",
              f"![tokens per second against the number of adapters]({root}results/bench_adapters/bench_adapters.png)\n"]
    return "\n".join(lines)


def ddp(results):
    """The README's communication table and step-time ratios, from results/bench_ddp."""
    bench = results.json("bench_ddp", "bench_ddp.json")
    measured = {(c["preset"], c["method"]): c for c in bench["communication"]}
    lines = ["| model | full fine-tuning, bytes per step | LoRA r=8, bytes per step | LoRA / full | how |",
             "| --- | ---: | ---: | ---: | --- |"]
    for preset in dict.fromkeys(p for p, _ in measured):
        f, l = measured.get((preset, "full")), measured.get((preset, "lora"))
        if f and l:
            lines.append(f"| `{preset}` ({f['base_params'] / 1e6:.2f}M parameters) | "
                         f"{f['allreduce_bytes_per_step']:,} ({f['allreduce_bytes_per_step'] / MIB:.2f} MiB) | "
                         f"{l['allreduce_bytes_per_step']:,} ({l['allreduce_bytes_per_step'] / MIB:.2f} MiB) | "
                         f"{l['allreduce_bytes_per_step'] / f['allreduce_bytes_per_step']:.3f} | measured, 2 processes |")
    for preset, c in bench.get("counted_bytes_per_step", {}).items():
        if (preset, "full") not in measured:
            lines.append(f"| `{preset}` shape | {c['full']:,} ({c['full'] / MIB:.1f} MiB) | {c['lora']:,} "
                         f"({c['lora'] / MIB:.2f} MiB) | {c['lora'] / c['full']:.3f} | counted, 4 bytes per trainable "
                         f"parameter |")
    lines += ["", f"Step time, {bench['cpu_count']} cores, {bench['torch']}, the global batch fixed, launches in "
              f"turns ({bench['settings']['rounds']} rounds of {bench['settings']['steps']} steps; median of the "
              f"rounds' ratios, quartiles in brackets):", "",
              "| model | method | step-time ratio | median (quartiles) |", "| --- | --- | --- | ---: |"]
    lines += [f"| `{r['preset']}` | {r['method']} | {r['ratio']} | {r['median']:.2f} "
              f"({r['quartiles'][0]:.2f}-{r['quartiles'][1]:.2f}) |" for r in bench["step_time_ratios"]]
    return "\n".join(lines) + "\n"


def reproductions_table(sections):
    """The README's one-line-per-claim table, from the same sections as REPRODUCTIONS.md."""
    lines = ["| command | claim (source) | verdict here |", "| --- | --- | --- |"]
    for name, s in sections:
        lines.append(f"| `python -m experiments.{name}` | {s['claim']} ({s['source']}) | **{s['verdict']}**: "
                     f"{s['detail']} |")
    return "\n".join(lines) + "\n"


def readme_blocks(results, sections=None):
    """{block name: Markdown} for the README's generated blocks."""
    blocks = {}
    if results.has("rank_sweep") and results.has("full_vs_lora", "records.json"):
        blocks["main-results"] = main_results(results)
    if results.has("bench_lora", "bench_lora.json"):
        blocks["speed"] = speed(results)
        if "main-results" in blocks:
            blocks["claims"] = claims(results)
    if results.has("scale", "scale.json") and results.has("scale", "extrapolation.json"):
        blocks["scale"] = scale(results)
    if results.has("bench_adapters", "bench_adapters.json"):
        blocks["adapters"] = adapters(results)
    if results.has("bench_ddp", "bench_ddp.json"):
        blocks["ddp"] = ddp(results)
    if sections:
        blocks["reproductions"] = reproductions_table(sections)
    return blocks

