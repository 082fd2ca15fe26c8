"""LoRA variants, each at its own tuned learning rate: rsLoRA against alpha/r at two ranks, DoRA, PiSSA.

    python -m experiments.variants                            # CPU, tiny model, offline
    python -m experiments.variants --device cuda --preset small

Claims, each from its paper:
- rsLoRA (Kalajdzievski 2023): scaling by alpha/sqrt(r) instead of alpha/r keeps high ranks
  learning, so a high rank pays off where alpha/r stalls.
- DoRA (Liu et al. 2024) and PiSSA (Meng et al. 2024): at the same rank they learn more than
  LoRA, closing part of the gap to full fine-tuning.
Every contender gets its own rate (lib/tuning.py), since a rate tuned for one favours it.

One thing to know before reading the rsLoRA result: with Adam and no weight decay, multiplying
the scale s by k is the same as multiplying B's learning rate by k (Adam's step does not depend
on the gradient's size, and B starts at zero; only gradient clipping, which sees the sum of all
gradients, tells them apart). So rsLoRA at rank r is plain LoRA with B's rate sqrt(r) times A's:
the knob LoRA+ turns (loraplus.py tests LoRA+ itself). The runs "LoRA, B's rate x sqrt(r)" check
that identity here; tests/test_lora_variants.py checks it exactly without clipping.
Rates are chosen on validation (the held-out text's first half); every final loss reported is on
the test half, which no choice read (the loss curves are validation: runs are evaluated only there
while they train).
Writes OUT/records.json, OUT/variants.json, OUT/variants.png, OUT/results.md.
"""
import math
import os

import matplotlib.pyplot as plt

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, non_negative_int,
                                    parse_targets, positive_int, run_kwargs)
from experiments.lib.finetune import reported_loss, reported_on
from experiments.lib.plots import finish, write_report
from experiments.lib.runs import run_all
from experiments.lib.sections import section_ref
from experiments.lib import verdicts
from experiments.lib.settled import settle, shown
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from experiments.lib.tuning import grid_neighbours, tune
from nanogpt.train import write_json


def plot_variants(groups, full, path, title, scored_on="validation"):
    """Left: loss curves (mean over seeds); right: final loss, bar = mean with 95% CI, dots = seeds."""
    fig, (ax_c, ax_f) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    shown = groups + ([full] if full else [])
    for g in shown:
        h0 = g["runs"][0]["history"]
        mean = [sum(r["history"][i]["target_loss"] for r in g["runs"]) / len(g["runs"]) for i in range(len(h0))]
        style = dict(color="black", linestyle="--", linewidth=2) if g is full else {}
        ax_c.plot([h["step"] for h in h0][1:], mean[1:], label=g["name"], **style)  # step 0: the base model
    ax_c.set_xlabel("fine-tuning step")
    ax_c.set_ylabel("validation loss on target (nats/byte, mean over seeds)")
    ax_c.set_title("loss curves (lower is better)")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=7)
    for i, g in enumerate(shown):
        s = g["target_loss"]
        ax_f.bar(i, s["mean"], yerr=s["ci"] if s["n"] > 1 else 0, capsize=3, alpha=0.6,
                 color="gray" if g is full else "#4C72B0")
        ax_f.scatter([i] * s["n"], s["values"], color="black", s=12, zorder=3)
    ax_f.set_xticks(range(len(shown)), [f"{g['name']}\nlr {g['lr']:g}" for g in shown], rotation=30, ha="right",
                    fontsize=7)
    ax_f.set_ylim(0, reported_loss(shown[0]["runs"][0], "target", "base") * 1.05)  # from zero: no exaggeration
    ax_f.set_ylabel(f"final {scored_on} loss on target (nats/byte)")
    ax_f.set_title("final loss at each one's tuned rate")
    ax_f.grid(axis="y", alpha=0.3)
    return finish(fig, title, path)


def group(name, runs, lr, **extra):
    return {"name": name, "lr": lr, "runs": runs, "trainable_params": runs[0]["trainable_params"],
            "target_loss": spread([reported_loss(r, "target") for r in runs]),
            "source_loss": spread([reported_loss(r, "source") for r in runs]), **extra}


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/variants", test_split=True)
    p.add_argument("--r", type=positive_int, default=8, help="the rank every variant trains at")
    p.add_argument("--high-r", type=non_negative_int, default=64, help="the high rank for LoRA vs rsLoRA (0 to skip)")
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tuning seeds per variant")
    args = p.parse_args(argv)
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=[args.r] + ([args.high_r] if args.high_r else []), variants=("lora", "dora", "pissa"),
               lr_on_grid=True)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)
    first_rates = grid_neighbours(args.lora_lr)

    def entry(variant, r, **more):
        spec = {"method": "lora", "variant": variant, "r": r, "alpha": args.alpha, "targets": targets, **more}
        return dict(base=base, base_key=base_key, spec=spec, target=target, source=source, **kwargs)

    ranks = [args.r] + ([args.high_r] if args.high_r else [])
    contenders = {}
    for r in ranks:
        contenders[f"LoRA r={r}"] = (entry("lora", r), first_rates)
        contenders[f"rsLoRA r={r}"] = (entry("rslora", r), first_rates)
    contenders[f"DoRA r={args.r}"] = (entry("dora", args.r), first_rates)
    contenders[f"PiSSA r={args.r}"] = (entry("pissa", args.r), first_rates)
    tuned = tune(contenders, seeds, workers=args.workers, progress=not args.no_progress)
    groups = [group(name, t["records"], t["best_lr"], tuning={k: t[k] for k in ("lrs", "losses", "at_grid_edge")})
              for name, t in tuned.items()]

    # The identity: rsLoRA at rank r = LoRA with B's rate sqrt(r) times A's, at rsLoRA's tuned rate.
    plan, same_as = [], []
    for r in ranks:
        lr = tuned[f"rsLoRA r={r}"]["best_lr"]
        e = entry("loraplus", r, ratio=math.sqrt(r))
        plan += [{**e, "spec": {**e["spec"], "lr": lr}, "seed": s} for s in seeds]
        same_as.append((f"LoRA r={r}, B's rate x sqrt({r})", lr, f"rsLoRA r={r}"))
    plan += [dict(base=base, base_key=base_key, spec={"method": "full", "lr": args.full_lr}, target=target,
                  source=source, **{**kwargs, "seed": s}) for s in seeds]
    extra = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="identity check and full")
    identity = []
    for k, (name, lr, twin) in enumerate(same_as):
        g = group(name, extra[k * len(seeds):(k + 1) * len(seeds)], lr)
        groups.append(g)
        twin_runs = tuned[twin]["records"]
        identity.append({"name": name, "twin": twin, "largest_gap": max(
            abs(reported_loss(a) - reported_loss(b)) for a, b in zip(g["runs"], twin_runs))})
    full = group("full fine-tuning", extra[-len(seeds):], args.full_lr)

    by_name = {g["name"]: g for g in groups}

    def versus(a, b):  # b minus a, seed by seed (positive: a is lower, i.e. better)
        return paired(by_name[a]["target_loss"]["values"], by_name[b]["target_loss"]["values"])
    comparisons = []
    for r in ranks:
        comparisons.append({"question": f"rsLoRA beats LoRA at r={r}", "difference": versus(f"rsLoRA r={r}", f"LoRA r={r}")})
    if args.high_r:
        for kind in ("LoRA", "rsLoRA"):
            comparisons.append({"question": f"{kind}: r={args.high_r} beats r={args.r}",
                                "difference": versus(f"{kind} r={args.high_r}", f"{kind} r={args.r}")})
    for v in ("DoRA", "PiSSA"):
        comparisons.append({"question": f"{v} beats LoRA at r={args.r}", "difference": versus(f"{v} r={args.r}", f"LoRA r={args.r}")})
    records = [r for g in groups for r in g["runs"]] + full["runs"]
    summary = {"seeds": seeds, "r": args.r, "high_r": args.high_r, "scored_on": reported_on(records[0]),
               "identity": identity, "comparisons": comparisons,
               "groups": [{k: v for k, v in g.items() if k != "runs"} for g in groups + [full]]}
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "variants.json"))
    title = (f"variants: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, alpha {args.alpha:g}, "
             f"each at its tuned rate, {len(seeds)} seeds, {device}")
    plot_variants([g for g in groups if "x sqrt" not in g["name"]], full, os.path.join(args.out, "variants.png"), title,
                  summary["scored_on"])
    table = write_report(os.path.join(args.out, "results.md"), "LoRA variants", title, results_table(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, variants.json, variants.png, results.md")


def results_table(summary):
    lines = ["| run | trainable params | tuned rate | final target loss | final source loss |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for g in summary["groups"]:
        lines.append(f"| {g['name']} | {g['trainable_params']:,} | {g['lr']:g} | {show(g['target_loss'])} | "
                     f"{show(g['source_loss'])} |")
    lines += ["", "| question | difference in target loss (the other minus the claimed winner), 95% CI; * = called |",
              "| --- | ---: |"]
    lines += [f"| {c['question']} | {show_difference(c['difference'])} |" for c in summary["comparisons"]]
    lines += [""] + [f"- {i['name']} against {i['twin']}: largest difference in final target loss over the seeds "
                     f"{i['largest_gap']:.4f}" for i in summary["identity"]]
    return "\n".join(lines) + "\n"


def claim_verdict(difference, question=""):
    """A claim that one contender beats another, by the shared rule (experiments/lib/verdicts.py)
    on their paired difference (the other's loss minus the claimed winner's, seed by seed)."""
    return verdicts.beats(difference, "loss", question)


def report(results):
    """Section of REPRODUCTIONS.md from results/variants: rsLoRA, DoRA and PiSSA against LoRA,
    each at its own tuned rate."""
    summary = results.json("variants", "variants.json")
    comps = {c["question"]: c["difference"] for c in summary["comparisons"]}
    groups = {g["name"]: g for g in summary["groups"]}
    r, high = summary["r"], summary["high_r"]
    claims = []  # (claim, question, verdict)
    if high:
        claims.append((f"rsLoRA beats LoRA at a high rank (r={high})", f"rsLoRA beats LoRA at r={high}"))
    claims += [(f"DoRA beats LoRA at r={r}", f"DoRA beats LoRA at r={r}"),
               (f"PiSSA beats LoRA at r={r}", f"PiSSA beats LoRA at r={r}")]
    judged = [(claim, q, settle(results, claim_verdict(comps[q], claim))) for claim, q in claims]
    verdict = verdicts.combine([c["outcome"] for *_, c in judged])
    edges = [g["name"] for g in summary["groups"] if g.get("tuning", {}).get("at_grid_edge")]
    bullets = []
    for claim, q, c in judged:
        bullets.append(f"- {claim}: difference {show_difference(comps[q])}; **{verdicts.show(c)}**.")
    if high:
        for kind in ("LoRA", "rsLoRA"):
            d = comps[f"{kind}: r={high} beats r={r}"]
            bullets.append(f"- {kind}, r={high} against r={r}, each at its own rate: {show_difference(d)} "
                           f"({'called' if d['called'] else 'not called'}). rsLoRA's tuned rates: "
                           f"{groups[f'rsLoRA r={r}']['lr']:g} at r={r}, {groups[f'rsLoRA r={high}']['lr']:g} at "
                           f"r={high}; LoRA's: {groups[f'LoRA r={r}']['lr']:g} and {groups[f'LoRA r={high}']['lr']:g}."
                           if kind == "rsLoRA" else
                           f"- LoRA (alpha/r), r={high} against r={r}, each at its own rate: {show_difference(d)} "
                           f"({'called: more rank pays under alpha/r too' if d['called'] and d['mean'] > 0 else 'called' if d['called'] else 'not called'}).")
    if summary["identity"]:
        bullets.append("- The identity: with Adam, rsLoRA at rank r is LoRA with B's rate sqrt(r) times A's. Run that way "
                       "at rsLoRA's tuned rate, plain LoRA ends within " + ", ".join(
                           f"{i['largest_gap']:.4f} of {i['twin']}" for i in summary["identity"]) +
                       " seed by seed (gradient clipping is the only thing that tells them apart). So what rsLoRA "
                       "wins at a high rank is a larger rate for B than for A, LoRA+'s knob "
                       f"({section_ref('loraplus')}).")
    if edges:
        bullets.append(f"- The tuned rate of {', '.join(edges)} sat at the edge of the rates tried, so its best may lie "
                       f"further out.")
    full = groups["full fine-tuning"]
    body = f"""**Claims.** rsLoRA (Kalajdzievski 2023): scaling the update by alpha/sqrt(r) instead of alpha/r
keeps high ranks learning, so a high rank pays off where alpha/r stalls. DoRA (Liu et al. 2024)
and PiSSA (Meng et al. 2024): at the same rank they learn more than LoRA, closing part of the
gap to full fine-tuning.

**Command.** `python -m experiments.variants` (`results/variants/`): each contender at its own
tuned rate (`experiments/lib/tuning.py`), then {len(summary['seeds'])} seeds at that rate; alpha 16, all
six linear layers. Full fine-tuning at {full['lr']:g} for reference: {show(full['target_loss'])}.

![variants](../results/variants/variants.png)

{results_table(summary).strip()}

Final losses on {summary.get('scored_on', 'validation')} text in nats/byte (each contender's rate chosen on
validation), mean ± 95% CI over seeds. A difference is the other's loss minus the claimed winner's, seed by seed; `*` marks a called one (its 95% interval excludes zero).

**Verdict: {verdict}.**
""" + "\n".join(bullets)
    detail = "; ".join(f"{claim.split(' beats')[0]} vs LoRA {shown(c, show_difference(comps[q]))}: {c['outcome']}"
                       for claim, q, c in judged)
    return {"title": "Variants at their own rates: rsLoRA, DoRA, PiSSA",
            "source": "rsLoRA (Kalajdzievski 2023); DoRA (Liu et al. 2024); PiSSA (Meng et al. 2024)",
            "claim": "rsLoRA makes a high rank pay off; DoRA and PiSSA learn more than LoRA at the same rank",
            "verdict": verdict, "detail": detail, "body": body, "comparisons": [c for *_, c in judged]}


if __name__ == "__main__":
    main()
