"""The prose of REPRODUCTIONS.md that belongs to no single experiment: the opening, the summary
table, the run times. Numbers in it come from the records, like everything in the document.

Each experiment module's `report(results)` returns its section as a dict:
    title           the section's heading, e.g. "The best learning rate for LoRA"
    claim, source   one line each for the summary table
    verdict         "reproduced", "partly", "not reproduced" or "not tested in the claim's regime"
    detail          one line for the summary table: the numbers the verdict rests on
    body            the section's Markdown below its heading: claim, command, plots, tables, verdict
"""
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


def summary_table(sections):
    lines = ["| # | claim | source | verdict |", "| --- | --- | --- | --- |"]
    for i, (_, s) in enumerate(sections, 1):
        assert s["verdict"] in VERDICTS, s["verdict"]
        lines.append(f"| {i} | {s['claim']} | {s['source']} | **{s['verdict']}**: {s['detail']} |")
    return "\n".join(lines) + "\n"


def run_times(results, sections):
    lines = ["## Run times at the defaults", "",
             "Measured by each command itself (`results/<name>/run_info.json`): the wall time of the last "
             "invocation that trained runs, how many of its runs it trained and how many it found in the "
             "cache, with the processes it ran side by side.", "",
             "| command | runs | trained / from the cache | wall time | processes | machine |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, _ in sections:
        info = results.json(name, "run_info.json")
        info = info.get("last_training_run") or info  # the last invocation that trained runs
        lines.append(f"| `python -m experiments.{name}` | {info['runs_planned']} | {info['runs_trained']} / "
                     f"{info['runs_planned'] - info['runs_trained']} | {info['wall_time_s'] / 60:.1f} min | "
                     f"{info['workers']} | {info['cpu_count']} cores, torch {info['torch']} |")
    return "\n".join(lines) + "\n"


def document(results, sections):
    parts = [opening(results), "## The claims at a glance\n", summary_table(sections)]
    for i, (_, s) in enumerate(sections, 1):
        parts.append(f"## {i}. {s['title']}\n\n{s['body'].strip()}\n")
    parts.append(run_times(results, sections))
    return "\n".join(parts)


def readme_blocks(results):
    """{block name: Markdown} for the README's generated blocks."""
    return {}

