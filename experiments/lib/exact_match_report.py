"""experiments/exact_match.py's plot, table and REPRODUCTIONS.md section, from its summary json.

Every number here is on the test prompts and the test text; the rates were chosen on validation."""
import math

import matplotlib.pyplot as plt

from experiments.lib import verdicts
from experiments.lib.plots import finish, log2_axis
from experiments.lib.sections import section_ref
from experiments.lib.seeds import show, show_difference

# A match at zero is no match: when the top rank (64) gets no more than this share of the test
# prompts right beyond what always giving the commonest answer gets, the task was not learned, and
# "r=1 matches r=64" would be two failures agreeing.
LEARNED = 0.10
DIVERSITY = "distinct_3"  # the diversity verdict's measure (fixed before the run): more room than distinct-2


def lora_rows(summary):
    return sorted((row for row in summary["rows"] if row["method"] == "lora"), key=lambda row: row["r"])


def top_rank(summary):
    return max(row["r"] for row in lora_rows(summary))


def full_row(summary):
    return next((row for row in summary["rows"] if row["method"] == "full"), None)


def _band(ax, s, color, label):
    """A spread (seeds.spread) as a horizontal line with its 95% interval shaded."""
    ax.axhline(s["mean"], color=color, linestyle="--", label=label)
    if s["n"] > 1 and math.isfinite(s["ci"]):
        ax.axhspan(s["mean"] - s["ci"], s["mean"] + s["ci"], color=color, alpha=0.12)


def plot_exact_match(summary, path, title):
    """Test exact match against rank, and distinct-n against rank; full fine-tuning as a band
    (mean and 95% interval), the base model as a dotted line."""
    rows, full, base = lora_rows(summary), full_row(summary), summary["base"]
    ranks = [row["r"] for row in rows]
    fig, (ax_e, ax_d) = plt.subplots(1, 2, figsize=(11, 4.3))
    ax_e.errorbar(ranks, [row["test_exact"]["mean"] for row in rows], marker="o", capsize=3, label="LoRA (q, v)",
                  yerr=[row["test_exact"]["ci"] if row["test_exact"]["n"] > 1 else 0 for row in rows])
    if full:
        _band(ax_e, full["test_exact"], "black", "full fine-tuning (95% CI shaded)")
    ax_e.axhline(base["test_exact"], color="gray", linestyle=":", label="base model")
    ax_e.set_ylim(-0.02, 1.02)
    ax_e.set_ylabel("test exact match (share of prompts, greedy)")
    ax_e.set_title("the task: higher is better")
    for n, color in (("distinct_2", "#4C72B0"), ("distinct_3", "#DD8452")):
        label = f"distinct-{n[-1]} (byte {n[-1]}-grams)"
        ax_d.errorbar(ranks, [row[n]["mean"] for row in rows], marker="o", capsize=3, color=color,
                      label=f"LoRA, {label}", yerr=[row[n]["ci"] if row[n]["n"] > 1 else 0 for row in rows])
        if full:
            _band(ax_d, full[n], color, f"full fine-tuning, {label}")
        ax_d.axhline(base[n], color=color, linestyle=":", label=f"base model, {label}")
    ax_d.set_ylabel("unique n-grams / all n-grams")
    ax_d.set_title(f"diversity of {summary['samples']} free samples: higher is more diverse")
    for ax in (ax_e, ax_d):
        log2_axis(ax, ranks, "LoRA rank r")
        ax.legend(fontsize=7)
    return finish(fig, title, path)


def results_table(summary):
    diffs, top = summary["differences"], top_rank(summary)
    lines = [f"| contender | tuned rate | trainable params | test exact match | minus r={top} | minus full | "
             "distinct-2 | distinct-3 | test loss, task (nats/byte) | test loss, code (forgetting) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = summary["base"]
    lines.append(f"| base model | - | - | {base['test_exact']:.3f} | - | - | {base['distinct_2']:.3f} | "
                 f"{base['distinct_3']:.3f} | {base['target_test_loss']:.3f} | {base['source_test_loss']:.3f} |")
    for row in ([full_row(summary)] if full_row(summary) else []) + lora_rows(summary):
        d = diffs.get(row["name"], {})
        cell = lambda key: show_difference(d[key]) if key in d else "-"  # noqa: E731
        vs_top = "-" if row["r"] == top else cell("exact_vs_top")
        lines.append(f"| {'full fine-tuning' if row['method'] == 'full' else 'LoRA ' + row['name']} | {row['lr']:g} | "
                     f"{row['trainable_params']:,} | {show(row['test_exact'])} | {vs_top} | {cell('exact_vs_full')} | "
                     f"{show(row['distinct_2'])} | {show(row['distinct_3'])} | {show(row['target_test_loss'])} | "
                     f"{show(row['source_test_loss'])} |")
    return "\n".join(lines) + "\n"


def judge(summary):
    """The comparisons the verdict rests on: r=1 and r=2 each match the top rank (64) in test exact
    match (equivalence within the "exact" delta), and LoRA r=8 beats full fine-tuning in diversity."""
    diffs, top = summary["differences"], top_rank(summary)
    out = [verdicts.matches(diffs[f"r={r}"]["exact_vs_top"], "exact", f"r={r} matches r={top} in test exact match")
           for r in (1, 2) if r < top and f"r={r}" in diffs]
    if f"{DIVERSITY}_vs_full" in diffs.get("r=8", {}):
        out.append(verdicts.beats(diffs["r=8"][f"{DIVERSITY}_vs_full"], "distinct",
                                  f"LoRA r=8 keeps more diversity ({DIVERSITY.replace('_', '-')}) than full fine-tuning"))
    return out


def shown_table(rows):
    """The first test prompts and what seed 1 of each contender generated for them."""
    first = rows[0]["shown"]
    lines = ["| prompt | answer | " + " | ".join(row["name"] for row in rows) + " |",
             "| --- | --- | " + " | ".join("---" for _ in rows) + " |"]
    code = lambda text: "`" + text.replace("|", "\\|").replace("`", "'") + "`" if text.strip() else "(blank)"  # noqa: E731
    for i, ex in enumerate(first):
        cells = [code(row["shown"][i]["generated"]) + (" ✓" if row["shown"][i]["generated"] == ex["answer"] else "")
                 for row in rows]
        lines.append(f"| {code(ex['prompt'])} | {code(ex['answer'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(summary):
    """The section dict of REPRODUCTIONS.md (see experiments/loraplus.py's report)."""
    judged = judge(summary)
    rows, full, base = lora_rows(summary), full_row(summary), summary["base"]
    top, (majority, commonest) = rows[-1], summary["majority"]
    regime = (None if top["test_exact"]["mean"] >= majority + LEARNED else
              f"{top['name']} gets {top['test_exact']['mean']:.0%} of the test prompts right, less than "
              f"{LEARNED:.0%} above always answering `{commonest}` ({majority:.0%}): the task was not learned, so "
              f"a match would be two failures agreeing")
    verdict = verdicts.combine([c["outcome"] for c in judged], regime=regime) if judged else verdicts.NOT_REPRODUCED
    n_seeds, sizes = len(summary["seeds"]), summary["sizes"]
    bullets = [f"- {c['question']}: {verdicts.show_interval(c)}: **{verdicts.show(c)}**." for c in judged]
    if regime:
        bullets.insert(0, f"- Not tested in the claim's regime: {regime}.")
    if full:
        best = max(rows, key=lambda row: row["test_exact"]["mean"])
        bullets.append(f"- Against full fine-tuning ({show(full['test_exact'])}): the best rank, {best['name']}, gets "
                       f"{show(best['test_exact'])}; full fine-tuning takes the code's test loss from "
                       f"{base['source_test_loss']:.3f} to {full['source_test_loss']['mean']:.3f}, LoRA to "
                       f"{min(r['source_test_loss']['mean'] for r in rows):.3f}-"
                       f"{max(r['source_test_loss']['mean'] for r in rows):.3f} (forgetting).")
    short = [c for c in judged if c["rule"] == "matches" and c["outcome"] == verdicts.NOT_REPRODUCED and c["mean"] < 0]
    if short:
        bullets.append(f"- The small ranks fall short at this budget of {summary['max_iters']} steps; Hu et al. trained "
                       f"far longer, on a far larger model. Whether r=1 and r=2 catch up with more steps is not "
                       f"tested here (`--max-iters`).")
    if full:
        spans = [row[DIVERSITY]["mean"] for row in rows]
        bullets.append(f"- Diversity is partly the task's format: a model that has learned the task writes its free "
                       f"samples as prompt and answer lines, and the short type names repeat, so learning more and "
                       f"keeping fewer distinct n-grams go together (\"learns less, forgets less\"). Distinct-3: base "
                       f"{base[DIVERSITY]:.3f}, full fine-tuning {full[DIVERSITY]['mean']:.3f}, LoRA "
                       f"{min(spans):.3f}-{max(spans):.3f}.")
    edges = [row["name"] for row in summary["rows"] if row["tuning"]["at_grid_edge"]]
    if edges:
        bullets.append(f"- The tuned rate of {', '.join(edges)} sat at the edge of the rates tried, so its best may "
                       f"lie further out.")
    tuning = "; ".join(f"{row['name']}: " + ", ".join(f"{lr:g} -> {v:.3f}" for lr, v in
                                                       zip(row["tuning"]["lrs"], row["tuning"]["val_exact"]))
                       for row in summary["rows"])
    ex = summary["examples"][0]
    body = f"""**Claim.** Adapting W_q and W_v at a very small rank (1 or 2) is competitive with a large one
on a task scored by accuracy: the update has a low intrinsic rank (Hu et al. 2021, Sec. 7.2 and
Table 6). {section_ref('rank_targets')} tested this on loss; here it is tested on exact match. And
LoRA keeps generations more diverse than full fine-tuning (Biderman et al. 2024).

**Command.** `python -m experiments.exact_match` (`results/exact_match/`). The task
(`experiments/lib/format_task.py`): name the type of the literal a real line of the standard
library assigns (lines of at most {summary['max_len']} bytes): prompt `{ex[0]}`, answer `{ex[1]}`; the answer
is one of {len(summary['answers'])} type names ({', '.join(summary['answers'])}), mostly told by the value's first
byte, with traps (`(1)` is an int, `{{1}}` a set). A transformation of the line (PEP 8 spacing, the
first choice) needs the line copied byte for byte, which this small base cannot do: in a smoke run
(not kept) LoRA r=8 got almost none of such lines right. Three sets, disjoint by line: {sizes['train']:,} training examples,
{sizes['val']} validation and {sizes['test']} test prompts. A prompt counts when the greedy continuation of
"\\n" + prompt + "\\n" up to its first newline is the answer exactly. Always answering the most
common training answer (`{summary['majority'][1]}`) would get {summary['majority'][0]:.1%} of the test prompts.
Contenders: LoRA on {', '.join(summary['targets'])} at r = {', '.join(str(r['r']) for r in rows)}
(alpha {summary['alpha']:g}) and full fine-tuning, {summary['max_iters']} steps; each at its own rate,
chosen on **validation** exact match (validation loss breaks ties) with the first seed, then
{n_seeds} seeds at that rate. **Every number below is on the test prompts or the test text.**
Diversity: {summary['samples']} free samples of {summary['sample_bytes']} bytes from "\\n" at
temperature 1 (the same sampling seeds for every model), distinct-n = unique byte n-grams / all byte
n-grams, pooled over the samples. The base model gets {base['test_exact']:.1%} of the test prompts right.

![exact match and diversity against rank](../results/exact_match/exact_match.png)

{results_table(summary).strip()}

Mean ± 95% CI over {n_seeds} seeds; differences seed by seed (`*` called, MDE the smallest effect the
seeds detect). Validation exact match by rate (first seed): {tuning}.

What seed 1 of each contender writes for the first test prompts:

{shown_table(summary['rows'])}

**Verdict: {verdict}.** delta is {verdicts.DELTAS['exact']:g} of exact match for "matches" and
{verdicts.DELTAS['distinct']:g} of distinct-n for "beats" (`experiments/lib/verdicts.py`).
""" + "\n".join(bullets)
    detail = "; ".join(f"{c['question']}: {c['mean']:+.3f} ({c['outcome']})" for c in judged)
    return {"title": "Exact match: how small can the rank be on a task?", "source": "LoRA Sec. 7.2; Biderman et al. 2024",
            "claim": "r = 1 or 2 on W_q, W_v matches r = 64 in exact match; LoRA keeps more diversity than full "
                     "fine-tuning", "verdict": verdict, "detail": detail, "body": body, "comparisons": judged}
