"""The prose of REPRODUCTIONS.md that belongs to no single experiment: the opening, the summary
table, the run times. Numbers in it come from the records, like everything in the document.

Each experiment module's `report(results)` returns its section as a dict:
    title           the section's heading, e.g. "The best learning rate for LoRA"
    claim, source   one line each for the summary table
    verdict         one of verdicts.VERDICTS, drawn by verdicts.combine from the section's parts
    comparisons     the beats()/matches() results (experiments/lib/verdicts.py) the verdict rests on
    detail          one line for the summary table: the numbers the verdict rests on
    body            the section's Markdown below its heading: claim, command, plots, tables, verdict
    folder, command optional: the results folder and the command, where they are not results/<name>/
                    and `python -m experiments.<name>` (rank_sweep's section is its --reproduce run)
    measured        optional: what the comparisons give by the rules alone, where the verdict is "not
                    tested in the claim's regime" (the README's list shows both)
"""
from experiments.lib.bench_write_up import adapters, ddp
from experiments.lib.finetune import reported_loss, reported_on
from experiments.lib.rank_curve_text import held_out_text, rank_curve_text
from experiments.lib.sections import MAIN_SWEEP_FOLDER, numbers_text, section_number, section_ref
from experiments.lib.seeds import show
from experiments.lib.verdicts import VERDICTS, method
from nanogpt.finetune import DEFAULT_LR


def held_out_sections(sections, on_split=True):
    """'sections 13 to 17': the sections whose runs were scored on the held-out test split (on_split),
    or those that were not (on_split=False), as report.sections marks them."""
    return numbers_text(sorted(section_number(name) for name, s in sections if bool(s.get("test_split")) == on_split))


def off_split_text(sections):
    """What the validation-and-test paragraph says of the sections not on the test split."""
    off = [name for name, s in sections if not s.get("test_split")]
    text = ""
    if "capacity" in off:  # it scores memorised facts: there is no unseen text whose score a choice could fit
        text = (f"Section {section_number('capacity')} scores what a run memorized of the very facts it trained on, "
                "so it has no held-out text to split; its code loss (forgetting) is on validation, at rates set "
                "beforehand, and it chooses nothing. ")
    rest = [name for name in off if name != "capacity"]
    if rest:
        one = len(rest) == 1
        text += (f"{numbers_text(sorted(section_number(n) for n in rest)).capitalize()} still "
                 f"{'reports' if one else 'report'} on the validation batches where any rate "
                 f"{'it chooses' if one else 'they choose'} is chosen, on the first seed, which is in every mean: "
                 "a choice can fit the noise of those batches, which flatters the chosen setting by an amount not "
                 "measured (the run-time table at the end gives what a re-run costs).")
    return text.rstrip()


def base_losses(results):
    """(target, source, text) for the base model before fine-tuning, from the learning-rate sweep: its
    losses on the text that sweep reports ("test" or "validation")."""
    first = results.json("lr_sweep", "records.json")[0]
    return reported_loss(first, "target", "base"), reported_loss(first, "source", "base"), reported_on(first)


def opening(results, sections):
    target, source, text = base_losses(results)
    return f"""# Reproductions: the LoRA papers' headline claims, tested at small scale

Each section puts one published claim to the test on a model a laptop can train: the claim and
its source, the command, the plot from a real run of that command, our numbers, and a verdict:
**reproduced**, **partly**, **not reproduced**, **not tested in the claim's regime** (the
claim is about a setting this scale cannot reach), or **not settled** (too few seeds to decide),
by the rules below, with the likely reason.

This file is generated: `python -m experiments.report` writes it from the records each command
leaves in `results/`, and `tests/test_report.py` fails if the committed text is not what the
committed records give. No number below is typed by hand.

**Setup.** The experiments share one base model and one cache of runs: the `tiny` GPT (4 layers,
4 heads, 128 dims, block 64, 0.83M parameters, byte-level) pretrained for 2000 steps on the
Python standard library's code, then fine-tuned for 600 steps at batch 12 on the prose of the
Python docs. Losses are held-out cross-entropy (validation; test in {held_out_sections(sections)}) in nats per byte (ln 256 = 5.55 is a uniform
guess over the 256 byte values; divide by ln 2 = 0.693 for bits) on the docs (the target: what
is learned) and on the code (the source: what is forgotten). The base model starts at
{target:.3f} on the docs and {source:.3f} on the code (on the {text} text). LoRA adapts all six linear layers of each
block (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `up_proj`, `down_proj`) with alpha 16 unless a
section says otherwise.

**Learning rates.** Every method in a comparison runs at its own tuned rate. The defaults,
full fine-tuning at {DEFAULT_LR['full']:g} and LoRA at {DEFAULT_LR['lora']:g}, are the best grid rates
for full fine-tuning and LoRA r=8 that section 1's sweep found when it ran at three seeds on the
whole held-out text (its section says what it finds now).
Other contenders (target sets, variants, ranks) get their rate from a small cached sweep on the
same quarter-decade grid (`experiments/lib/tuning.py`): the first seed at a few rates around the
default, widened while the best sits at an edge, then the other seeds at the chosen rate.

**Validation and test.** The sections run on the held-out test split ({held_out_sections(sections)}) cut the held-out
text in two: the rates and settings they choose are chosen on its first half (validation), and every
result they report is on its second half (test), which no choice of theirs read, except what is marked
validation (training curves, which are evaluated there only, and the scores a choice was made by). What they take as
given (the default rates, the grids' starting points, the settings they re-test) was chosen earlier,
on the whole held-out text, test half included. Section {section_number("settle")} runs the comparisons
three seeds left undecided again this way, and shows what the same runs say on validation beside
test. {off_split_text(sections)}

{method(sections)}
Every command runs offline on a CPU; `--device cuda --preset small` runs the same experiment at
the GPU scale. Finished runs are cached in `runs/cache` by a hash of everything that decides
them (the corpora by the SHA-256 of their bytes), so a command that needs a run another one
already made reuses it.
"""


def summary_table(sections):
    lines = ["| # | claim | source | verdict |", "| --- | --- | --- | --- |"]
    for name, s in sections:
        assert s["verdict"] in VERDICTS, s["verdict"]
        lines.append(f"| {section_number(name)} | {s['claim']} | {s['source']} | **{s['verdict']}**: {s['detail']} |")
    return "\n".join(lines) + "\n"


def command(name, section):
    return section.get("command", f"python -m experiments.{name}")


def run_times(results, sections):
    lines = ["## Run times at the defaults", "",
             "Measured by each command itself (`run_info.json` in its results folder): the wall time of the last "
             "invocation that trained runs, how many of its runs it trained and how many it found in the "
             "cache (runs shared with an earlier section, or an earlier invocation, are not trained again), "
             "with the processes it ran side by side. Most runs were trained while other jobs shared the 2 "
             "cores, which stretched them up to several times: the wall times are upper bounds. The last column "
             "estimates the command on an idle 2-core machine from an empty cache: the sequences its distinct runs "
             "train (counted by run_info.json where it does; else their number times the mean length of the runs "
             "it reports) times the lower quartile of its runs' training times per sequence (the least disturbed "
             "of them), over its processes. "
             "Run in this document's order, each command finds its predecessors' runs in the cache and trains "
             "only its own.", "",
             "| command | runs | trained / from the cache | wall time | processes | one run (lower quartile, mean length) | "
             "from an empty cache, idle (estimate) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in sections:
        folder = s.get("folder", name)
        current = results.json(folder, "run_info.json")
        info = current.get("last_training_run") or current  # the last invocation that trained runs
        try:  # per sequence trained, so that runs of different lengths (data_size's early stopping) compare
            runs = [r for r in results.json(folder, "records.json") if r.get("wall_time_s")]
            per_sequence = sorted(r["wall_time_s"] / (r["steps"] * r["batch_size"]) for r in runs)
            sequences = sum(r["steps"] * r["batch_size"] for r in runs) / len(runs)
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            per_sequence = []
        one = per_sequence[len(per_sequence) // 4] * sequences if per_sequence else None  # a run of the mean length
        # The planned runs' own lengths where run_info counts them (tuning runs may be shorter than the reported)
        planned = (info["sequences_planned"] * per_sequence[len(per_sequence) // 4]
                   if per_sequence and info.get("sequences_planned") else info["runs_planned"] * (one or 0))
        recorded = info["runs_trained"] > 0  # else its runs were trained before run_info.json existed
        workers = max(1, info["workers"] or 1) if recorded else current["cpu_count"]  # then: the default
        wall = f"{info['wall_time_s'] / 60:.1f} min" if recorded else "not recorded"
        empty = f"{planned / workers / 60:.0f} min" if one else "-"
        lines.append(f"| `{command(name, s)}` | {info['runs_planned']} | {info['runs_trained']} / "
                     f"{info['runs_planned'] - info['runs_trained']} | "
                     f"{wall} | "
                     f"{workers} | {f'{one:.0f} s' if one else '-'} | {empty} |")
    return "\n".join(lines) + "\n"


def document(results, sections):
    parts = [opening(results, sections), "## The claims at a glance\n", summary_table(sections)]
    for name, s in sections:  # numbered by their place in SECTIONS, as section_ref names them
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
    folder = MAIN_SWEEP_FOLDER
    sweep = results.json(folder, "rank_sweep.json")
    groups = sweep["groups"]
    full = next(g for g in groups if g["kind"] == "full")
    lora = {g["r"]: g for g in groups if g["kind"] == "lora"}
    rs = {g["r"]: g for g in groups if g["kind"] == "rslora"}
    low, top = min(lora), max(lora)
    first = results.json(folder, "records.json")[0]
    base_t, base_s = reported_loss(first, "target", "base"), reported_loss(first, "source", "base")
    scored_on = reported_on(first)
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
    return f"""Made by `python -m experiments.rank_sweep --reproduce` (three seeds; the quickstart's rank sweep
runs the first seed at five of the ranks) and `python -m experiments.full_vs_lora`: the `tiny` GPT ({full['trainable_params'] / 1e6:.2f}M parameters)
pretrained for 2000 steps on `python-code`, then {sweep['steps']} fine-tuning steps at batch
{first['batch_size']} on `python-docs`, {n} seeds per run. Full fine-tuning trains at lr
{sweep['full_lr']:g}, LoRA at {sweep['lr']:g}, each the best grid rate of the learning-rate sweep's
earlier three-seed run ([REPRODUCTIONS](experiments/REPRODUCTIONS.md), section 1), alpha 16 at every rank, on all six
linear layers of every block. A loss is the cross-entropy of the next byte in nats (a uniform
guess over 256 bytes scores ln 256 = 5.55; divide by ln 2 for bits per byte).
{held_out_text(scored_on, base_t, base_s)} Every number in this section is written from
`results/{folder}/` and `results/full_vs_lora/` by `python -m experiments.report`.

![final loss against rank](results/{folder}/final_loss_vs_rank.png)

{rank_curve_text(full, lora, rs, base_t, base_s)}

![loss curves](results/{folder}/loss_curves.png)

![parameters and memory against rank](results/{folder}/params_memory_vs_rank.png)

**What the rank costs.** Trainable parameters grow as r (in + out) per adapted matrix:
{lora[low]['trainable_params']:,} at r={low}, {r8['trainable_params']:,} at r=8 ({100 * share:.1f}% of the adapted
model's {r8['total_params']:,} parameters, adapters included, as `count_parameters` and PEFT
count them), {lora[top]['trainable_params']:,} at r={top}. On this model (width 128) r={top} is half the
width: low rank only pays while r is small next to the layer's width.

![full fine-tuning against LoRA: costs](results/full_vs_lora/costs.png)

| run | trainable params | docs loss | code loss | memory (MiB): weights / grads / optimizer / activations (total) | saved file |
| --- | ---: | ---: | ---: | ---: | ---: |
| full fine-tuning | {f['trainable_params']:,} | {reported_loss(f, 'target'):.3f} | {reported_loss(f, 'source'):.3f} | {parts(f['memory'])} | {f['saved_bytes'] / KIB:,.0f} KiB |
| LoRA r={l['r']} | {l['trainable_params']:,} | {reported_loss(l, 'target'):.3f} | {reported_loss(l, 'source'):.3f} | {parts(l['memory'])} | {l['saved_bytes'] / KIB:,.0f} KiB |

One seed each (`python -m experiments.full_vs_lora`, seed {f['seed']}). Step times are not
compared here: one run after another on a shared machine is noise. `experiments/bench/lora.py`
times the two in turns ([Is LoRA faster?](docs/results.md#is-lora-faster)).

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
    counts = bench["trainable_parameters"]
    base_params = counts["total"] - counts["lora"]  # the preset's own size, without the adapters

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
    return f"""Measured by `python -m experiments.bench.lora` (`results/bench_lora/`): the `{a['preset']}` GPT
({base_params / 1e6:.2f}M parameters), batch {a['batch_size']}, r={a['r']} on the six linear layers of every
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
    folder = MAIN_SWEEP_FOLDER
    sweep = results.json(folder, "rank_sweep.json")
    full = next(g for g in sweep["groups"] if g["kind"] == "full")
    lora = {g["r"]: g for g in sweep["groups"] if g["kind"] == "lora"}
    best = min(lora.values(), key=lambda g: g["target_loss"]["mean"])
    codes = [g["source_loss"]["mean"] for g in lora.values()]
    base_s = reported_loss(results.json(folder, "records.json")[0], "source", "base")
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
         (f"not here: at every rank LoRA ends above full fine-tuning on the docs, r={best['r']} at "
          if best["target_loss"]["mean"] > full["target_loss"]["mean"] else
          f"at its best rank LoRA reaches full fine-tuning on the docs, r={best['r']} at ")
         + f"{show(best['target_loss'])} against {show(full['target_loss'])}, at the two default rates "
         f"(`results/{folder}/`; every rank at its own rate: REPRODUCTIONS, {section_ref('learn_forget')})",
         "a short budget on a tiny model; full fine-tuning also changes embeddings, biases and norms"),
        ("no forgetting",
         f"LoRA forgets {'less, ' if max(codes) < full['source_loss']['mean'] else ''}not nothing: the code loss "
         f"{'rises' if min(codes) > base_s else 'moves'} from {base_s:.3f} at every rank (to {min(codes):.3f}-"
         f"{max(codes):.3f}), against {full['source_loss']['mean']:.3f} under full fine-tuning (`results/{folder}/`; "
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
    from experiments.lib import scale_report

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
    return f"""The tiny GPT of the main results is the first point on a curve. `python -m experiments.scale` measures
full fine-tuning, LoRA, QLoRA and the frozen floor at {sizes} (random
weights: costs depend on shapes, not values), each part of the memory beside a cost model
(`experiments/lib/cost_model.py`) that predicts it to the byte{caveat}:

{scale_report.summary(data)}

![where LoRA pays](results/scale/where_lora_pays.png)

The same cost model, applied to the papers' settings ([`docs/scale.md`](docs/scale.md) has the
tables, the plots, every prediction beside its measurement, and why ours and the papers' differ):

{chr(10).join(rows)}
"""


def reproductions_table(sections):
    """The README's one-line-per-claim table, from the same sections as REPRODUCTIONS.md."""
    lines = ["| command | claim (source) | verdict here |", "| --- | --- | --- |"]
    for name, s in sections:
        lines.append(f"| `{command(name, s)}` | {s['claim']} ({s['source']}) | **{s['verdict']}**: "
                     f"{s['detail']} |")
    return "\n".join(lines) + "\n"


def readme_blocks(results, sections=None):
    """{block name: Markdown}: the generated blocks of README.md and the docs/ pages."""
    blocks = {}
    if results.has(MAIN_SWEEP_FOLDER) and results.has("full_vs_lora", "records.json"):
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
        blocks["held-out"] = held_out_block(sections)
    return blocks


def held_out_block(sections):
    """The README's list of the papers' claims tested: each section's question and verdict, and which
    of them report the held-out test half (the numbers behind each verdict are in docs/results.md)."""
    if not sections:
        return "No claim has been tested yet.\n"
    on_test = [name for name, s in sections if s.get("test_split")]
    lines = [f"Each claim is tested by one command at this scale, with verdicts by one set of rules shared by "
             f"every section, in [REPRODUCTIONS](experiments/REPRODUCTIONS.md); the numbers behind each verdict are "
             f"in [docs/results.md](docs/results.md#reproductions-the-papers-claims-tested). "
             + (f"{held_out_sections(sections).capitalize()} make their own choices on validation and report the "
                f"held-out test half (the default rates they start from were tuned earlier on the whole held-out "
                f"text)" if len(on_test) > 1 else
                f"{held_out_sections(sections).capitalize()} makes its choices on validation and reports the "
                f"held-out test half" if on_test else "")
             + (f"; {held_out_sections(sections, False)} {'does' if len(sections) - len(on_test) == 1 else 'do'} "
                f"not (REPRODUCTIONS says why). " if on_test and len(on_test) < len(sections) else ". " if on_test else "")
             + "Written by `python -m experiments.report`:", ""]
    for name, s in sections:
        if name == "settle":  # a re-run of other sections' comparisons, not a claim of its own
            continue
        measured = f" (measured: {s['measured']})" if s.get("measured") and s["measured"] != s["verdict"] else ""
        lines.append(f"- §{section_number(name)} {s['title'].rstrip('?.')}: **{s['verdict']}**{measured}")
    return "\n".join(lines) + "\n"

