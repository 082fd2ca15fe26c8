"""What the rank buys: look inside trained adapters (Hu et al. 2021, LoRA, Fig. 3/4 and Section 7.3).

    python -m experiments.subspace                    # r=8 vs r=64, 5 seeds, on {q, v} and on all six
    python -m experiments.subspace --ranks 4,32 --seeds 4 --paper-targets ""

Fine-tunes LoRA at a low and a high rank with five seeds each, twice: on W_q and W_v only (the
paper's setting) and on all six linear layers of each block (the project's default; the same runs
as `rank_sweep`, shared through the cache). Then asks two questions of the adapters:
  (a) subspace similarity (Fig. 3): do the top directions of A at r=8 also appear in A at r=64?
      If only the top one does, the extra rank mostly holds noise.
  (b) amplification (Section 7.3, Table 7): does delta W point along W0's strong directions, or
      amplify directions W0 barely uses?

Independent initialisations. A run's seed decides its A at init (Kaiming-uniform, drawn module
after module from one random stream) and its batches. Two runs with the same seed but different
ranks draw the same numbers for the first adapted module, so r=64's first 8 rows of A equal
r=8's there: the two start inside each other, and phi is inflated for a reason that has nothing
to do with training. So every comparison pairs runs of different seeds: r=8 with seed s_k against
r=64 with seed s_(k+1) (cyclically), which uses each run once, keeps the pairs independent, and
lets the spread over pairs be a real 95% interval. The same-seed pairs are kept as a diagnostic,
and the same measures before training as the control.

Chance. A random j-dimensional subspace of R^d holds j/d of a fixed direction on average, so
phi(i, j) of unrelated adapters is max(i, j)/d, not 0 (1/16 for 8 of 128 directions). Every
similarity is also reported chance-corrected: (phi - chance) / (1 - chance), 0 for unrelated
subspaces, 1 for contained ones.

Writes OUT/records.json, OUT/subspace.json, OUT/similarity_heatmaps.png, OUT/similarity_per_module.png,
OUT/amplification.png, OUT/results.md and OUT/run_info.json.
"""
import math
import os

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_ranks, parse_targets,
                                    positive_int, run_kwargs)
from experiments.lib.finetune import prepare_model, reported_loss, reported_on
from experiments.lib.plots import finish, lr_text, save, write_report
from experiments.lib.runs import run_all
from experiments.lib.seeds import paired, seed_list, spread
from experiments.lib.subspace_math import (amplification, chance_corrected, cross_seed_pairs, delta_weight,
                                           load_adapter_tensors, random_similarity, similarity_numbers,
                                           subspace_similarity)
from experiments.lib.subspace_report import NEAR_CHANCE, PAPER_FACTOR, TOP_SHARED, how_to_read, module_table
from experiments.lib.subspace_report import report  # noqa: F401 (experiments/report.py asks each experiment for it)
from minilora.model_ops import lora_layers
from nanogpt.train import write_json

PAPER_TARGETS = "q_proj,v_proj"  # Hu et al. 2021, Sec. 7: LoRA on W_q and W_v of GPT-3


# ---------------------------------------------------------------------------------------------
# Adapters in, numbers out (the measures: lib/subspace_math.py)

def initial_A(base, spec, seed):
    """{module name: A at initialisation} for a run, replayed as run_finetune starts it (seed, then
    prepare_model). The control: how similar are the A's before any training?"""
    torch.manual_seed(seed)
    model = prepare_model(base, spec)
    return {name: layer.lora_A.detach().clone() for name, layer in lora_layers(model)}


def compare(first, second, pairs, module, k):
    """One comparison over pairs of runs: {"pairs", and for each similarity number its spread over
    the pairs}, plus the mean phi(i, j) matrix over the pairs. first, second: {seed: {module: A}}."""
    per_pair = [similarity_numbers(first[s1][module], second[s2][module], k) for s1, s2 in pairs]
    numbers = {key: spread([p[key] for p in per_pair]) for key in per_pair[0] if not key.endswith("_chance")}
    numbers.update({key: per_pair[0][key] for key in per_pair[0] if key.endswith("_chance")})
    heat = torch.stack([subspace_similarity(first[s1][module], second[s2][module]) for s1, s2 in pairs]).mean(0)
    return {"pairs": [list(p) for p in pairs], **numbers}, heat


def analyse_set(base, spec_of, records, seeds, ranks):
    """Every number of one target set: per module, the similarities (trained across seeds, trained
    with the same seed, before training) and the amplification per seed."""
    r_low, r_high = ranks
    k = r_low
    A, init, adapters = {}, {}, {}
    for r in ranks:
        A[r], init[r] = {}, {}
        for s in seeds:
            adapters[(r, s)], config = load_adapter_tensors(records[(r, s)]["adapter_path"])
            A[r][s] = {m: a for m, (a, _) in adapters[(r, s)].items()}
            init[r][s] = initial_A(base, spec_of(r), s)
    cross, same = cross_seed_pairs(seeds), [(s, s) for s in seeds]
    weights = base.state_dict()
    modules, heatmaps = {}, {}
    for m in A[r_low][seeds[0]]:
        w0 = weights[f"{m}.weight"]  # (out, in)
        ranks_cross, heatmaps[m] = compare(A[r_low], A[r_high], cross, m, k)
        amp = {str(r_low): [], str(r_high): [], f"{r_high}_top{r_low}": []}
        for s in seeds:
            dw_low, dw_high = delta_weight(*adapters[(r_low, s)][m], config), delta_weight(*adapters[(r_high, s)][m], config)
            amp[str(r_low)].append(amplification(dw_low, w0, r_low))
            amp[str(r_high)].append(amplification(dw_high, w0, r_high))
            # r_high's factor is not comparable with r_low's (64 random directions of 128 hold half of
            # W0), so also r_high's update along its own top r_low directions.
            amp[f"{r_high}_top{r_low}"].append(amplification(dw_high, w0, r_low))
        modules[m] = {
            "in_features": w0.shape[1], "out_features": w0.shape[0],
            "ranks": ranks_cross,                                              # r_low vs r_high, seeds differ
            "ranks_same_seed": compare(A[r_low], A[r_high], same, m, k)[0],    # the old, inflated design
            "seeds_high": compare(A[r_high], A[r_high], cross, m, k)[0],       # Fig. 4: r_high, two seeds
            "at_init": compare(init[r_low], init[r_high], cross, m, k)[0],     # control: before training
            "at_init_same_seed": compare(init[r_low], init[r_high], same, m, k)[0],
            # How far training moved A from its random start (relative Frobenius distance), per rank.
            "A_moved": {str(r): spread([(torch.linalg.matrix_norm(A[r][s][m] - init[r][s][m])
                                         / torch.linalg.matrix_norm(init[r][s][m])).item() for s in seeds])
                        for r in ranks},
            "amplification": {key: {field: (spread([x[field] for x in runs]) if field in VARYING else runs[0][field])
                                    for field in runs[0]} for key, runs in amp.items()},
        }
    # Nothing here is chosen (one rate, the default), so the losses are simply the reported ones: test
    # when the runs held it out.
    losses = {str(r): spread([reported_loss(records[(r, s)]) for s in seeds]) for r in ranks}
    high_minus_low = paired([reported_loss(records[(r_low, s)]) for s in seeds],
                            [reported_loss(records[(r_high, s)]) for s in seeds])
    return {"modules": modules, "final_target_loss": losses, "high_minus_low": high_minus_low}, heatmaps


# amplification() fields that change from seed to seed (the others are properties of W0 alone)
VARYING = {"delta_w_norm", "projection_delta_w", "amplification", "over_random", "of_w0_top"}


def claims(analysis, ranks):
    """The verdict's ingredients for one target set, counted over its modules."""
    r_low, r_high = ranks
    mods = analysis["modules"].values()
    n = len(mods)
    low, high = str(r_low), str(r_high)
    def over_modules(key):
        """Per pair, the mean over modules (the pairs are the same runs in every module): a spread
        over the independent pairs of the set's average."""
        per_module = [m["ranks"][key]["values"] for m in mods]
        return spread([sum(col) / n for col in zip(*per_module)])

    return {
        "modules": n,
        "top_over_modules": over_modules("top"),
        "top_chance_over_modules": sum(m["ranks"]["top_chance"] for m in mods) / n,
        "top_corrected_over_modules": over_modules("top_corrected"),
        "rest_corrected_over_modules": over_modules("rest_corrected"),
        # Fig. 3: the top direction is shared (phi(1,1) > 0.5), the others are near chance.
        "top_above_half": sum(m["ranks"]["top"]["mean"] > TOP_SHARED for m in mods),
        "top_called_above_chance": sum(m["ranks"]["top"]["mean"] - m["ranks"]["top"]["ci"] > m["ranks"]["top_chance"]
                                       for m in mods),
        "rest_near_chance": sum(m["ranks"]["rest_corrected"]["mean"] < NEAR_CHANCE for m in mods),
        # Sec. 7.3: more of W0 than random, far less than W0's top, and a large factor at the low rank.
        "more_than_random": sum(m["amplification"][low]["over_random"]["mean"]
                                - m["amplification"][low]["over_random"]["ci"] > 1 for m in mods),
        "below_half_w0_top": sum(m["amplification"][low]["of_w0_top"]["mean"] < 0.5 for m in mods),
        "factor_near_paper": sum(m["amplification"][low]["amplification"]["mean"] >= PAPER_FACTOR[4] / 2 for m in mods),
        "factor_falls_with_rank": sum(m["amplification"][high]["amplification"]["mean"]
                                      < m["amplification"][low]["amplification"]["mean"] for m in mods),
        "factor_low_range": [min(m["amplification"][low]["amplification"]["mean"] for m in mods),
                             max(m["amplification"][low]["amplification"]["mean"] for m in mods)],
        "factor_high_range": [min(m["amplification"][high]["amplification"]["mean"] for m in mods),
                              max(m["amplification"][high]["amplification"]["mean"] for m in mods)],
    }


# ---------------------------------------------------------------------------------------------
# Plots

def short(module):
    """'blocks.2.attn.q_proj' -> 'q 2'."""
    parts = module.split(".")
    return f"{parts[-1].split('_')[0]} {parts[1]}" if parts[0] == "blocks" else module


def plot_heatmaps(heatmaps, modules, ranks, path, title):
    """Fig. 3 for every module of one set: phi(i, j) of A at r_low (rows) against A at r_high
    (columns), mean over the independent cross-seed pairs, chance-corrected: the raw phi(i, j) of
    unrelated subspaces grows with j (to 0.5 at j = 64 of d = 128), which would paint the right
    of every panel bright; corrected, unrelated is 0 everywhere. (In GPT-3, with d = 12288, chance
    is near 0 and the paper's raw figure is the corrected one.)"""
    r_low, r_high = ranks
    names = list(heatmaps)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows + 0.8), squeeze=False, layout="constrained")
    for ax, m in zip(axes.flat, names):
        phi = torch.tensor(heatmaps[m], dtype=torch.float64)
        d = modules[m]["in_features"]
        corrected = chance_corrected(phi, random_similarity(r_low, r_high, d))
        im = ax.imshow(corrected.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper",
                       extent=(0.5, r_high + 0.5, r_low + 0.5, 0.5))
        ax.set_title(f"{m}\nphi(1,1) = {phi[0, 0]:.2f} (chance {1 / d:.3f}); corrected {corrected[0, 0]:.2f}",
                     fontsize=8)
        ax.set_xlabel(f"j: top-j directions of A, r={r_high}", fontsize=8)
        ax.set_ylabel(f"i: top-i of A, r={r_low}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, label="(phi - chance) / (1 - chance): 0 as unrelated, 1 contained",
                 fraction=0.02, pad=0.02)
    fig.suptitle(title)
    return save(fig, path)


def plot_per_module(sets, ranks, path, title):
    """phi(1, 1) per module for each target set: trained across seeds (mean and 95% CI over the
    independent pairs), trained with the same seed, and before training; chance and the paper's 0.5."""
    r_low, r_high = ranks
    fig, axes = plt.subplots(len(sets), 1, figsize=(max(8, 0.42 * max(len(s["modules"]) for s in sets.values()) + 3),
                                                    3.6 * len(sets)), squeeze=False)
    for ax, (name, analysis) in zip(axes[:, 0], sets.items()):
        mods = list(analysis["modules"])
        x = torch.arange(len(mods)).numpy()
        cross = [analysis["modules"][m]["ranks"]["top"] for m in mods]
        ax.bar(x, [c["mean"] for c in cross], yerr=[c["ci"] for c in cross], capsize=2, color="#4C72B0", alpha=0.75,
               label=f"trained, r={r_low} vs r={r_high}, different seeds (mean, 95% CI over {cross[0]['n']} pairs)")
        for key, marker, color, label in (
                ("ranks_same_seed", "o", "#C44E52", "trained, same seed (shared first rows of A in one module)"),
                ("seeds_high", "^", "#55A868", f"trained, r={r_high} vs r={r_high}, different seeds (Fig. 4)"),
                ("at_init", "x", "black", "before training, different seeds (control)")):
            for i, m in enumerate(mods):
                vals = analysis["modules"][m][key]["top"]["values"]
                ax.scatter([x[i]] * len(vals), vals, marker=marker, color=color, s=14, zorder=3,
                           label=label if i == 0 else None, facecolors="none" if marker == "o" else None)
        chance = [analysis["modules"][m]["ranks"]["top_chance"] for m in mods]
        ax.step(list(x - 0.5) + [x[-1] + 0.5], chance + chance[-1:], where="post", color="gray", linestyle="--",
                label="chance: 1/d")
        ax.axhline(TOP_SHARED, color="gray", linestyle=":", label="the paper: above 0.5")
        ax.set_xticks(x, [short(m) for m in mods], fontsize=7, rotation=90 if len(mods) > 12 else 0)
        ax.set_xlim(-0.6, len(mods) - 0.4)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("phi(1, 1)")
        ax.set_title(f"LoRA on {name}: the top direction of A at r={r_low} against A at r={r_high}", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1))
    return finish(fig, title, path)


def plot_amplification(sets, ranks, path, title):
    """Per module: the amplification factor at r_low and r_high (mean and 95% CI over seeds, log
    scale) and the projection of W0 onto delta W's directions over its random-direction value."""
    r_low, r_high = ranks
    fig, axes = plt.subplots(len(sets), 2, figsize=(16, 3.8 * len(sets)), squeeze=False)
    for (ax_f, ax_r), (name, analysis) in zip(axes, sets.items()):
        mods = list(analysis["modules"])
        x = torch.arange(len(mods)).numpy()
        width = 0.38
        for k, (key, color) in enumerate(((str(r_low), "#C44E52"), (str(r_high), "#4C72B0"))):
            s = [analysis["modules"][m]["amplification"][key]["amplification"] for m in mods]
            ax_f.bar(x + (k - 0.5) * width, [v["mean"] for v in s], width, yerr=[v["ci"] for v in s], capsize=2,
                     color=color, label=f"r={key}")
        for r, factor in PAPER_FACTOR.items():
            ax_f.axhline(factor, color="gray", linestyle=":" if r == min(PAPER_FACTOR) else "--",
                         label=f"the paper, GPT-3 W_q, r={r}: {factor:g}")
        ax_f.axhline(1, color="black", linewidth=0.8)
        ax_f.set_yscale("log")
        ax_f.set_ylim(top=100)  # room for the legend above the paper's lines
        ax_f.set_ylabel("||delta W||_F / ||U^T W0 V^T||_F (log)")
        ax_f.set_title(f"LoRA on {name}: amplification factor, mean and 95% CI over seeds", fontsize=9)
        s = [analysis["modules"][m]["amplification"][str(r_low)]["over_random"] for m in mods]
        ax_r.bar(x, [v["mean"] for v in s], yerr=[v["ci"] for v in s], capsize=2, color="#C44E52")
        ax_r.axhline(1, color="black", linestyle="--", label="1: random directions")
        ax_r.set_ylim(bottom=0)
        ax_r.set_ylabel("||U^T W0 V^T|| / random")
        ax_r.set_title(f"r={r_low}: W0 along delta W's top-{r_low} directions, over random directions", fontsize=9)
        for ax in (ax_f, ax_r):
            ax.set_xticks(x, [short(m) for m in mods], fontsize=7, rotation=90 if len(mods) > 12 else 0)
            ax.grid(alpha=0.3, axis="y")
        ax_f.legend(fontsize=7, loc="upper left", ncol=4)
        ax_r.legend(fontsize=7, loc="upper left")
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/subspace", test_split=True)
    p.add_argument("--ranks", type=parse_ranks, default=[8, 64],
                   help="a low rank (at least 2) and a high rank, e.g. 8,64")
    # Five: at three, the amplification factor's interval held the margin around the paper's value (the
    # rules' call for five seeds where a comparison is left open).
    p.add_argument("--seeds", type=positive_int, default=5, help="fine-tuning seeds per rank (>= 2): --seed, --seed+1, ...")
    p.add_argument("--paper-targets", default=PAPER_TARGETS,
                   help="the paper's target set, run beside --targets ('' to skip it)")
    args = p.parse_args(argv)
    if len(args.ranks) != 2 or args.ranks[0] >= args.ranks[1]:
        p.error(f"--ranks needs a low and a high rank like 8,64; got {args.ranks}")
    if args.ranks[0] < 2:
        p.error(f"--ranks: the low rank must be at least 2, got {args.ranks[0]}: the experiment asks whether the "
                f"low rank's directions 2..r lie in the high rank's subspace, and r=1 has none")
    if args.seeds < 2:
        p.error(f"--seeds must be at least 2 (runs are compared across seeds); got {args.seeds}")
    seeds = seed_list(args.seed, args.seeds)
    ranks = args.ranks
    target_sets = {}
    for text in (args.paper_targets, args.targets):
        if text.strip():
            targets = parse_targets(text)
            target_sets[", ".join(targets) if isinstance(targets, list) else targets] = targets
    # Every planned adapter (both target sets) checked before the base model is made.
    check_runs(args, planned=lambda model: [(t, r) for t in target_sets.values() for r in ranks])
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)

    def spec_for(targets):
        # The spec rank_sweep uses, so that the all-six runs are its runs (same cache keys).
        return lambda r: {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets,
                          "lr": args.lora_lr}

    plan, where = [], []
    for name, targets in target_sets.items():
        for r in ranks:
            for s in seeds:
                plan.append(dict(base=base, base_key=base_key, spec=spec_for(targets)(r), target=target, source=source,
                                 keep_adapter=True, **{**kwargs, "seed": s}))
                where.append((name, r, s))
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="subspace runs")
    by_set = {name: {} for name in target_sets}
    for (name, r, s), record in zip(where, records):
        by_set[name][(r, s)] = record
    write_json([{k: v for k, v in x.items() if k != "adapter_path"} for x in records],
               os.path.join(args.out, "records.json"))

    sets, heatmaps = {}, {}
    for name, targets in target_sets.items():
        sets[name], heatmaps[name] = analyse_set(base, spec_for(targets), by_set[name], seeds, ranks)
        sets[name]["targets"] = targets
        sets[name]["claims"] = claims(sets[name], ranks)
    first_module = next(iter(sets[next(iter(sets))]["modules"]))
    title = (f"{args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, alpha {args.alpha:g}, "
             f"LoRA lr {lr_text(args.lora_lr)}, {len(seeds)} seeds, {device}")
    summary = {"setup": title, "ranks": ranks, "seeds": seeds, "lr": args.lora_lr, "alpha": args.alpha,
               "scored_on": reported_on(records[0]),
               "pairs": cross_seed_pairs(seeds), "paper_set": next(iter(target_sets)) if args.paper_targets.strip()
               else None, "first_module": first_module, "sets": sets,
               # The mean phi(i, j) over the cross-seed pairs, per module of the first set, for the heatmaps.
               "heatmaps": {n: {m: [[round(v, 4) for v in row] for row in h.tolist()] for m, h in hm.items()}
                            for n, hm in list(heatmaps.items())[:1]}}
    write_json(summary, os.path.join(args.out, "subspace.json"))

    heat_set = next(iter(sets))
    plot_heatmaps(summary["heatmaps"][heat_set], sets[heat_set]["modules"], ranks,
                  os.path.join(args.out, "similarity_heatmaps.png"),
                  f"subspace similarity of A, chance-corrected, LoRA on {heat_set}, r={ranks[0]} vs r={ranks[1]}, "
                  f"different seeds (Hu et al. 2021, Fig. 3)\n{title}")
    plot_per_module(sets, ranks, os.path.join(args.out, "similarity_per_module.png"),
                    f"is the top direction shared? (Hu et al. 2021, Fig. 3)\n{title}")
    plot_amplification(sets, ranks, os.path.join(args.out, "amplification.png"),
                       f"does delta W amplify W0's strong directions? (Hu et al. 2021, Sec. 7.3)\n{title}")
    tables = "\n".join(f"## LoRA on {name}\n\n{module_table(a, ranks)}" for name, a in sets.items())
    text = write_report(os.path.join(args.out, "results.md"), "What the rank buys: subspace similarity and amplification",
                        title, how_to_read(ranks, len(seeds)) + "\n" + tables)
    finish_experiment(args, argv)
    print(text)
    print(f"wrote {args.out}/records.json, subspace.json, similarity_heatmaps.png, similarity_per_module.png, "
          f"amplification.png, results.md")


if __name__ == "__main__":
    main()
