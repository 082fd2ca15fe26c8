"""What the rank buys: look inside trained adapters (Hu et al. 2021, LoRA, Fig. 3/4 and Section 7.3).

    python -m experiments.subspace                    # r=8 vs r=64, 3 seeds, on {q, v} and on all six
    python -m experiments.subspace --ranks 4,32 --seeds 4 --paper-targets ""

Fine-tunes LoRA at a low and a high rank with three seeds each, twice: on W_q and W_v only (the
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
from experiments.lib.finetune import prepare_model
from experiments.lib.plots import finish, lr_text, save, write_report
from experiments.lib.runs import run_all
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from minilora.adapter_file import read_adapter_file
from minilora.model_ops import lora_layers
from nanogpt.train import write_json

PAPER_TARGETS = "q_proj,v_proj"  # Hu et al. 2021, Sec. 7: LoRA on W_q and W_v of GPT-3
# The paper's numbers (GPT-3 175B, W_q of layer 48, Table 7): the amplification factor at r=4 and r=64.
PAPER_FACTOR = {4: 21.5, 64: 1.9}
PAPER_D_MODEL = 12288  # GPT-3 175B's width: the d of the paper's phi and projections
TOP_SHARED = 0.5    # the paper's Fig. 3: phi(1, 1) "above 0.5" for the top direction
NEAR_CHANCE = 0.1   # a chance-corrected overlap below this is "near chance" (a tenth of the way to contained)


# ---------------------------------------------------------------------------------------------
# The measures (pure functions of tensors)

def right_singular_basis(A):
    """U_A: the right-singular vectors of A, as orthonormal columns ordered by singular value.

    A: (r, d), LoRA's down projection (r <= d). Returns (d, r) float64: column k is the k-th
    direction of the input space R^d that A reads, strongest first. The paper calls this the
    "right-singular unitary matrix" U_A of A.
    """
    _, _, vh = torch.linalg.svd(A.detach().double(), full_matrices=False)  # vh: (r, d), rows orthonormal
    return vh.T


def direction_overlaps(A1, A2):
    """(U1^T U2)^2: entry (a, b) is the squared cosine between direction a of A1 and direction b
    of A2, (r1, r2) float64. Row a summed over b <= j is how much of A1's a-th direction lies in
    A2's top-j subspace."""
    U1, U2 = right_singular_basis(A1), right_singular_basis(A2)  # (d, r1), (d, r2)
    return (U1.T @ U2) ** 2


def subspace_similarity(A1, A2):
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), for i = 1..r1, j = 1..r2.

    A1: (r1, d), A2: (r2, d). Returns phi as an (r1, r2) float64 tensor, phi[i-1, j-1] in [0, 1]:
    1 when the top-i directions of A1 lie inside the top-j directions of A2 (or the other way
    round, whichever subspace is smaller), 0 when they are orthogonal (Hu et al. 2021, Eq. 4).
    """
    overlap = direction_overlaps(A1, A2)  # (r1, r2)
    # ||U1[:, :i]^T U2[:, :j]||_F^2 is the sum of overlap[:i, :j]: a 2-D cumulative sum.
    sums = overlap.cumsum(0).cumsum(1)  # (r1, r2)
    i = torch.arange(1, overlap.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, overlap.shape[1] + 1, dtype=torch.float64)[None, :]
    return sums / torch.minimum(i, j)


def random_similarity(r1, r2, d):
    """E[phi(i, j)] when one subspace is uniformly random in R^d: max(i, j) / d, shape (r1, r2).

    Each of the j orthonormal columns of a random U2 is uniform on the sphere, so its squared
    projection onto a fixed i-dimensional subspace is i/d on average: E||U1_i^T U2_j||_F^2 = i j / d,
    and dividing by min(i, j) leaves max(i, j) / d (= j/d for i <= j, as the paper's Fig. 3 plots)."""
    i = torch.arange(1, r1 + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, r2 + 1, dtype=torch.float64)[None, :]
    return torch.maximum(i, j).expand(r1, r2) / d


def chance_corrected(value, chance):
    """(value - chance) / (1 - chance): 0 at what unrelated subspaces give on average, 1 when contained."""
    return (value - chance) / (1 - chance)


def similarity_numbers(A1, A2, k):
    """The few numbers of one comparison (A1: (r1, d) the lower rank, A2: (r2, d)), each with its
    chance level and its chance-corrected value:
      top:  phi(1, 1), the top direction of A1 against the top direction of A2 (chance 1/d);
      rest: directions 2..k of A1, each in A2's top-k subspace, averaged (chance k/d): are the
            directions after the top one shared too, or noise?
      span: phi(k, r2), A1's top k inside all of A2 (chance r2/d): 1 when A1 started inside A2.
    """
    d = A1.shape[1]
    overlap = direction_overlaps(A1, A2)  # (r1, r2)
    r2 = overlap.shape[1]
    values = {"top": (overlap[0, 0].item(), 1 / d),
              "rest": (overlap[1:k, :k].sum(1).mean().item() if k > 1 else math.nan, k / d),
              "span": (overlap[:k, :].sum().item() / k, max(k, r2) / d)}
    out = {}
    for name, (value, chance) in values.items():
        out[name], out[f"{name}_chance"], out[f"{name}_corrected"] = value, chance, chance_corrected(value, chance)
    return out


def cross_seed_pairs(seeds):
    """[(seed of the first run, seed of the second run)]: each seed against the next, cyclically
    (1337-1338, 1338-1339, 1339-1337). No run meets its own seed, and across two groups of runs
    (r=8 and r=64) each run is in exactly one pair, so the pairs are independent."""
    if len(seeds) < 2:
        raise ValueError(f"independent pairs need at least 2 seeds; got {list(seeds)}")
    return [(seeds[k], seeds[(k + 1) % len(seeds)]) for k in range(len(seeds))]


def delta_weight(A, B, config):
    """delta W = scaling * B @ A, (out, in) float64, with scaling alpha/r (alpha/sqrt(r) for rsLoRA)."""
    r = A.shape[0]
    scaling = config["alpha"] / (r ** 0.5 if config.get("rslora") else r)
    return scaling * (B.double() @ A.double())


def projection_norm(w0, U, V):
    """||U^T W0 V||_F: how much of W0 acts between the output directions U (out, r) and the input
    directions V (in, r), both with orthonormal columns."""
    return torch.linalg.matrix_norm(U.T @ w0 @ V).item()  # U^T W0 V: (r, r)


def random_projection_norm(w0, r):
    """sqrt(E ||U^T W0 V||_F^2) for U (out, r), V (in, r) spanning independent uniformly random
    subspaces: E[U U^T] = (r/out) I and E[V V^T] = (r/in) I, so the expectation of the square is
    (r/out)(r/in) ||W0||_F^2. The "random" row of the paper's Table 7, without sampling noise."""
    out, d_in = w0.shape
    return torch.linalg.matrix_norm(w0.double()).item() * r / math.sqrt(out * d_in)


def amplification(delta_w, w0, r):
    """Section 7.3: does delta W amplify directions W0 already emphasises, or others?

    delta_w, w0: (out, in). U (out, r), V^T (in, r): the top-r left/right singular vectors of
    delta W. The paper's ||U^T W0 V^T||_F projects W0 onto delta W's r-dim subspace; compared with
    the same projection onto W0's own top-r singular directions (as large as it can be) and onto
    random directions (what no relation gives). The amplification factor ||delta W||_F /
    ||U^T W0 V^T||_F says how much the update enlarges what W0 does along those directions
    (paper, GPT-3 W_q: 6.91 / 0.32 = 21.5 at r=4).
    """
    delta_w, w0 = delta_w.double(), w0.double()
    U, _, Vh = torch.linalg.svd(delta_w, full_matrices=False)  # U: (out, k), Vh: (k, in)
    U0, _, Vh0 = torch.linalg.svd(w0, full_matrices=False)
    delta_norm = torch.linalg.matrix_norm(delta_w).item()
    along_delta = projection_norm(w0, U[:, :r], Vh[:r].T)
    along_top = projection_norm(w0, U0[:, :r], Vh0[:r].T)  # = sqrt(sum of W0's top r sigma^2)
    random = random_projection_norm(w0, r)
    return {
        "r": r,
        "delta_w_norm": delta_norm,
        "projection_delta_w": along_delta,     # ||U^T W0 V^T||_F, U, V from delta W
        "projection_w0_top": along_top,
        "projection_random": random,
        "w0_norm": torch.linalg.matrix_norm(w0).item(),
        "amplification": delta_norm / along_delta,
        "over_random": along_delta / random,   # > 1: delta W's directions matter to W0 more than chance
        "of_w0_top": along_delta / along_top,  # << 1: they are not W0's strongest
    }


# ---------------------------------------------------------------------------------------------
# Adapters in, numbers out

def load_adapter_tensors(path):
    """{module name: (A (r, in), B (out, r))} and the adapter's config, from an adapter file."""
    obj = read_adapter_file(path)
    tensors = obj["tensors"]
    return {m: (tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"]) for m in obj["config"]["targets"]}, obj["config"]


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
    losses = {str(r): spread([records[(r, s)]["final_target_loss"] for s in seeds]) for r in ranks}
    high_minus_low = paired([records[(r_low, s)]["final_target_loss"] for s in seeds],
                            [records[(r_high, s)]["final_target_loss"] for s in seeds])
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


# ---------------------------------------------------------------------------------------------
# Tables

def module_table(analysis, ranks):
    """One row per module: the similarities and the amplification, each over seeds or pairs."""
    r_low, r_high = ranks
    lines = [f"| module | d | phi(1,1), r={r_low} vs r={r_high} | corrected | directions 2-{r_low}, corrected | "
             f"same seed: phi(1,1) / phi({r_low},{r_high}) before training | different seeds before training: phi(1,1) | "
             f"r={r_high} vs r={r_high}: phi(1,1), min-max | amplification r={r_low} | r={r_high} | "
             f"W0 along delta W / random, r={r_low} |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, v in analysis["modules"].items():
        rk, ss, sh, amp = v["ranks"], v["ranks_same_seed"], v["seeds_high"], v["amplification"]
        lines.append(
            f"| {m} | {v['in_features']} | {show(rk['top'])} | {show(rk['top_corrected'], signed=True)} | "
            f"{show(rk['rest_corrected'], signed=True)} | {ss['top']['mean']:.3f} / {v['at_init_same_seed']['span']['mean']:.3f} | "
            f"{show(v['at_init']['top'])} | {sh['top']['min']:.2f}-{sh['top']['max']:.2f} | "
            f"{show(amp[str(r_low)]['amplification'], digits=1)} | {show(amp[str(r_high)]['amplification'], digits=2)} | "
            f"{show(amp[str(r_low)]['over_random'], digits=1)} |")
    return "\n".join(lines) + "\n"


def how_to_read(ranks, n_pairs):
    r_low, r_high = ranks
    return (f"phi(1,1) of A at r={r_low} against A at r={r_high}: mean ± 95% CI over {n_pairs} independent pairs of "
            f"runs with different seeds; corrected = (phi - chance) / (1 - chance), chance = 1/d for phi(1,1), "
            f"{r_low}/d for directions 2-{r_low} (each direction's share inside the other's top {r_low}). Same seed: "
            f"the old design, r={r_low} and r={r_high} trained from one seed, mean over seeds; phi({r_low},{r_high}) before "
            f"training is 1 where the r={r_high} A starts with the r={r_low} A as its first rows. r={r_high} vs r={r_high}: the paper's Fig. 4 (pairs share runs: the range, no interval). "
            f"Amplification ||delta W||_F / ||U^T W0 V^T||_F, mean ± 95% CI over seeds.\n")


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/subspace")
    p.add_argument("--ranks", type=parse_ranks, default=[8, 64],
                   help="a low rank (at least 2) and a high rank, e.g. 8,64")
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tuning seeds per rank (>= 2): --seed, --seed+1, ...")
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


# ---------------------------------------------------------------------------------------------
# The section of REPRODUCTIONS.md

def report(results):
    """Section of REPRODUCTIONS.md: the claims, and the verdicts from results/subspace."""
    info = results.json("subspace", "subspace.json")
    r_low, r_high = info["ranks"]
    sets = info["sets"]
    paper = info["paper_set"] or next(iter(sets))
    main_set, c = sets[paper], sets[paper]["claims"]
    n = c["modules"]
    most = n / 2  # "most modules": more than half
    first = info["first_module"]
    seeds = info["seeds"]
    pair_text = ", ".join(f"{a}-{b}" for a, b in info["pairs"])

    def rng(key, sub, digits=2, s=paper):
        vals = [m[key][sub]["mean"] for m in sets[s]["modules"].values()]
        return f"{min(vals):.{digits}f}-{max(vals):.{digits}f}"

    # The paper's picture: the top direction above 0.5 and the others near chance, in most modules.
    # Partly: one of the two, or at least the top direction above chance on the set's average.
    top_ok = c["top_above_half"] > most
    rest_ok = c["rest_near_chance"] > most
    top_avg = c["top_over_modules"]
    top_shared = top_avg["mean"] - top_avg["ci"] > c["top_chance_over_modules"]
    rest_avg = c["rest_corrected_over_modules"]
    rest_shared = rest_avg["mean"] - rest_avg["ci"] > 0
    sim_verdict = ("reproduced" if top_ok and rest_ok else "partly" if top_ok or rest_ok or top_shared
                   else "not reproduced")
    amp_kind = c["more_than_random"] > most and c["below_half_w0_top"] > most
    amp_size = c["factor_near_paper"] > most
    amp_verdict = "reproduced" if amp_kind and amp_size else "partly" if amp_kind else "not reproduced"
    verdict = sim_verdict if sim_verdict == amp_verdict else "partly"

    # The shared-init diagnostic, in the first adapted module of the paper's set.
    m0 = main_set["modules"][first]
    others = [m for name, m in main_set["modules"].items() if name != first]
    same_init_elsewhere = max(m["at_init_same_seed"]["span"]["max"] for m in others) if others else math.nan
    span_chance = m0["at_init"]["span_chance"]
    loss = main_set["final_target_loss"]
    diff = main_set["high_minus_low"]

    sim_lines = [
        f"- *The bug the old version had.* Run with one seed, r={r_low} and r={r_high} draw A's initial rows from "
        f"one random stream, module after module: in the first adapted module ({first}) the r={r_high} A starts "
        f"with the r={r_low} A as its first {r_low} rows. Before training, phi({r_low},{r_high}) there is "
        f"{m0['at_init_same_seed']['span']['mean']:.3f} (chance {span_chance:.2f}); in the other modules at most "
        f"{same_init_elsewhere:.2f}. After training with the same seed, phi(1,1) in {first} is "
        f"{m0['ranks_same_seed']['top']['mean']:.2f} against {m0['ranks']['top']['mean']:.2f} with different seeds. "
        f"Every number below pairs different seeds ({pair_text}), so the starts are independent: before training, "
        f"phi(1,1) is {rng('at_init', 'top', 3)} (chance {1 / m0['in_features']:.3f}).",
        f"- *Top direction.* With LoRA on {paper} (the paper's setting), phi(1,1) between r={r_low} and r={r_high} is "
        f"{rng('ranks', 'top')} over the {n} modules (chance {m0['ranks']['top_chance']:.3f}); above the paper's "
        f"{TOP_SHARED} in {c['top_above_half']} of {n}, and above chance (its 95% interval clear of it) in "
        f"{c['top_called_above_chance']} of {n}; the intervals are wide, for the seeds disagree. Averaged over the "
        f"{n} modules, pair by pair, phi(1,1) is {show(top_avg)}, "
        f"{top_avg['mean'] / c['top_chance_over_modules']:.0f}x chance"
        + (" (its interval clear of chance)." if top_shared else " (its interval reaches chance)."),
        f"- *The other directions.* Directions 2-{r_low} of the r={r_low} A lie in the r={r_high} A's top {r_low} "
        f"at a chance-corrected {rng('ranks', 'rest_corrected')} (0: chance, 1: contained); near chance (below "
        f"{NEAR_CHANCE}) in {c['rest_near_chance']} of {n} modules; averaged over the modules "
        f"{show(c['rest_corrected_over_modules'], signed=True)}, against "
        f"{show(c['top_corrected_over_modules'], signed=True)} for the top direction."
        + (f" The top direction is not the only one shared: directions 2-{r_low} overlap beyond chance too (the "
           f"interval clear of 0), so they are not the random noise the paper takes them for." if rest_shared else
           f" Directions 2-{r_low} are not shared beyond chance (the interval reaches 0)."),
    ]
    for name, s in sets.items():
        if name == paper:
            continue
        cs = s["claims"]
        sim_lines.append(
            f"- *All six matrices* ({name}): phi(1,1) is {rng('ranks', 'top', s=name)}, above {TOP_SHARED} in "
            f"{cs['top_above_half']} of {cs['modules']} modules and above chance in {cs['top_called_above_chance']}; "
            f"directions 2-{r_low} corrected {rng('ranks', 'rest_corrected', s=name)}, near chance in "
            f"{cs['rest_near_chance']} of {cs['modules']}.")
    sim_lines.append(
        f"- *Is the extra rank noise?* On {paper}, r={r_high} ends at {show(loss[str(r_high)])} against r={r_low}'s "
        f"{show(loss[str(r_low)])} (final docs loss); paired difference {show_difference(diff)}"
        + ((" (called): the extra rank learns more, so it is not noise here." if diff["mean"] < 0 else
            " (called): the extra rank does worse here.") if diff["called"] else
           " (not called: its interval includes 0)."))

    amp_lines = [
        f"- W0 along delta W's top-{r_low} directions is {rng_amp(main_set, str(r_low), 'over_random', 1)}x its "
        f"value along random directions (above 1, the interval over seeds clear of it, in {c['more_than_random']} of "
        f"{n} modules), and {rng_amp(main_set, str(r_low), 'of_w0_top', 2)} of its value along W0's own top-{r_low} "
        f"directions (below half in {c['below_half_w0_top']} of {n}): correlated with W0, not W0's strongest "
        f"directions, as the paper says.",
        f"- The factor at r={r_low} is {c['factor_low_range'][0]:.1f}-{c['factor_low_range'][1]:.1f} (the paper: "
        f"{PAPER_FACTOR[4]:g} at r=4), and {c['factor_high_range'][0]:.2f}-{c['factor_high_range'][1]:.2f} at "
        f"r={r_high} (the paper: {PAPER_FACTOR[64]:g}); at least half the paper's r=4 value in "
        f"{c['factor_near_paper']} of {n} modules, and lower at r={r_high} than at r={r_low} in "
        f"{c['factor_falls_with_rank']} of {n}.",
        f"- The size is partly a matter of dimension: with d = {m0['in_features']}, {r_low} random directions already "
        f"hold about {r_low}/{m0['in_features']} of W0 each way (the random projection is "
        f"{rng_amp(main_set, str(r_low), 'projection_random', 2, field_is_spread=False)} here), against "
        f"{min(PAPER_FACTOR)}/{PAPER_D_MODEL} in GPT-3, so no direction can be far below W0's typical size.",
    ]
    for name, s in sets.items():
        if name != paper:
            cs = s["claims"]
            amp_lines.append(f"- All six matrices: the factor at r={r_low} is {cs['factor_low_range'][0]:.1f}-"
                             f"{cs['factor_low_range'][1]:.1f}, at r={r_high} {cs['factor_high_range'][0]:.2f}-"
                             f"{cs['factor_high_range'][1]:.2f}; more than random in {cs['more_than_random']} of "
                             f"{cs['modules']} modules, below half of W0's top in {cs['below_half_w0_top']}.")

    tables = "\n".join(f"LoRA on {name}:\n\n{module_table(s, info['ranks'])}" for name, s in sets.items())
    body = f"""**Claim.** Hu et al. 2021 (Fig. 3 and Section 7), GPT-3 with LoRA on W_q and W_v: the adapters
learned at r=8 and r=64 share their top direction (normalised subspace similarity of the A
matrices' right-singular vectors, phi(i, j) = ||U_8[:, :i]^T U_64[:, :j]||_F^2 / min(i, j), above
{TOP_SHARED} at i = j = 1) while the other directions do not overlap: the extra rank mostly holds noise.
And delta W amplifies directions that W0 does not emphasise: ||U^T W0 V^T||_F along delta W's top
singular directions is more than along random ones but far below W0's own top directions, and the
amplification factor ||delta W||_F / ||U^T W0 V^T||_F is {PAPER_FACTOR[4]:g} at r=4 and {PAPER_FACTOR[64]:g} at r=64.

**Command.** `python -m experiments.subspace` (`results/subspace/`). LoRA at r={r_low} and r={r_high},
seeds {', '.join(str(s) for s in seeds)}, at the default LoRA rate {lr_text(info['lr'])} (not tuned per
target set: nothing here compares losses between methods), twice: on {paper} as the paper, and on all six
linear layers (the runs of `rank_sweep`). Each r={r_low} run is compared with the r={r_high}
run of the next seed ({pair_text}): independent initialisations, each run in one pair, so the 95% intervals
over the {len(info['pairs'])} pairs are honest. Chance is what a random subspace gives, max(i, j)/d; the
chance-corrected value (phi - chance) / (1 - chance) is 0 there. The control is the same comparison
before training.

![subspace similarity per module](../results/subspace/similarity_per_module.png)
![subspace similarity heatmaps](../results/subspace/similarity_heatmaps.png)
![amplification](../results/subspace/amplification.png)

{how_to_read(info['ranks'], len(info['pairs'])).strip()}

{tables.strip()}

The rule: the Fig. 3 picture is reproduced if, in most modules of the paper's set, phi(1,1) is above
{TOP_SHARED} and directions 2-{r_low} are near chance (chance-corrected below {NEAR_CHANCE}); partly if one
of the two holds, or the top direction is shared above chance on the set's average. Amplification is
reproduced in kind if, in most modules, W0 along delta W's directions is above random (interval clear of 1)
and below half of W0's top; in size if the factor at r={r_low} reaches half the paper's {PAPER_FACTOR[4]:g} in
most modules.

**Verdict: {verdict}.**
- *Shared directions (Fig. 3): {sim_verdict}.*
""" + "\n".join("  " + line for line in sim_lines) + f"""
- *Amplification (Sec. 7.3): {amp_verdict}.*
""" + "\n".join("  " + line for line in amp_lines)
    return {"title": "What the rank buys: shared directions and amplification",
            "source": "LoRA (Hu et al. 2021), Fig. 3, Sec. 7.3",
            "claim": "The r=8 and r=64 adapters share their top direction, the rest is noise; delta W amplifies "
                     "directions W0 does not emphasise",
            "verdict": verdict,
            "detail": f"on {paper}, phi(1,1) r={r_low} vs r={r_high} is {rng('ranks', 'top')} (chance "
                      f"{m0['ranks']['top_chance']:.3f}), above 0.5 in {c['top_above_half']} of {n} modules; "
                      f"amplification {c['factor_low_range'][0]:.1f}-{c['factor_low_range'][1]:.1f} at r={r_low} "
                      f"(paper: {PAPER_FACTOR[4]:g} at r=4)",
            "body": body}


def rng_amp(analysis, key, field, digits, field_is_spread=True):
    """'a-b': the range over modules of an amplification field's seed mean."""
    vals = [m["amplification"][key][field]["mean"] if field_is_spread else m["amplification"][key][field]
            for m in analysis["modules"].values()]
    return f"{min(vals):.{digits}f}-{max(vals):.{digits}f}"


if __name__ == "__main__":
    main()
