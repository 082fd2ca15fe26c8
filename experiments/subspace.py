"""What the rank buys: look inside trained adapters (Hu et al. 2021, LoRA, Fig. 3/4 and Section 7.3).

    python -m experiments.subspace                    # r=8 vs r=64, two seeds at r=8, CPU, tiny
    python -m experiments.subspace --ranks 4,32 --seeds 3

Fine-tunes LoRA at a low rank and a high rank (same seed) and at the low rank with a second seed,
then asks two questions of the adapters:
  (a) subspace similarity (Fig. 3/4): do the top directions of A at r=8 also appear in A at r=64,
      and in A at r=8 from another seed? If so, the extra rank mostly holds noise.
  (b) amplification (Section 7.3, Table 7): does delta W point along W0's strong directions, or
      amplify directions W0 barely uses?

Writes OUT/records.json, OUT/subspace.json, OUT/similarity_heatmaps.png, OUT/amplification.png and
OUT/results.md.
"""
import os

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from experiments.common import check_runs, load_setup, make_parser, parse_ranks, parse_targets, positive_int, run_kwargs
from experiments.finetune import prepare_model, run_finetune
from experiments.plots import finish, save, write_report
from minilora.adapter_file import read_adapter_file
from minilora.model_ops import lora_layers
from nanogpt.train import write_json

LAYER_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
N_RANDOM = 8  # random subspace draws averaged for the "random" projection baseline


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


def subspace_similarity(A1, A2):
    """phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), for i = 1..r1, j = 1..r2.

    A1: (r1, d), A2: (r2, d). Returns phi as an (r1, r2) float64 tensor, phi[i-1, j-1] in [0, 1]:
    1 when the top-i directions of A1 lie inside the top-j directions of A2 (or the other way
    round, whichever subspace is smaller), 0 when they are orthogonal (Hu et al. 2021, Eq. 4).
    """
    U1, U2 = right_singular_basis(A1), right_singular_basis(A2)  # (d, r1), (d, r2)
    overlap = (U1.T @ U2) ** 2  # (r1, r2): squared cosine between direction a of A1 and b of A2
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


def delta_weight(A, B, config):
    """delta W = scaling * B @ A, (out, in) float64, with scaling alpha/r (alpha/sqrt(r) for rsLoRA)."""
    r = A.shape[0]
    scaling = config["alpha"] / (r ** 0.5 if config.get("rslora") else r)
    return scaling * (B.double() @ A.double())


def projection_norm(w0, U, V):
    """||U^T W0 V||_F: how much of W0 acts between the output directions U (out, r) and the input
    directions V (in, r), both with orthonormal columns."""
    return torch.linalg.matrix_norm(U.T @ w0 @ V).item()  # U^T W0 V: (r, r)


def random_orthonormal(n, r, generator):
    """(n, r) orthonormal columns spanning a uniformly random r-dimensional subspace of R^n."""
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))
    return q


def amplification(delta_w, w0, r, n_random=N_RANDOM, seed=0):
    """Section 7.3: does delta W amplify directions W0 already emphasises, or others?

    delta_w, w0: (out, in). U (out, r), V^T (in, r): the top-r left/right singular vectors of
    delta W. The paper's ||U^T W V^T||_F projects W0 onto delta W's r-dim subspace; compared with
    the same projection onto W0's own top-r singular directions (as large as it can be) and onto
    random directions (what no relation gives). The amplification factor ||delta W||_F /
    ||U^T W0 V^T||_F says how much the update enlarges what W0 does along those directions
    (paper, GPT-3 W_q: 6.91 / 0.32 = 21.5 at r=4).
    """
    delta_w, w0 = delta_w.double(), w0.double()
    U, _, Vh = torch.linalg.svd(delta_w, full_matrices=False)  # U: (out, k), Vh: (k, in)
    U0, _, Vh0 = torch.linalg.svd(w0, full_matrices=False)
    g = torch.Generator().manual_seed(seed)
    out, d_in = w0.shape
    random = [projection_norm(w0, random_orthonormal(out, r, g), random_orthonormal(d_in, r, g))
              for _ in range(n_random)]
    delta_norm = torch.linalg.matrix_norm(delta_w).item()
    along_delta = projection_norm(w0, U[:, :r], Vh[:r].T)
    return {
        "r": r,
        "delta_w_norm": delta_norm,
        "projection_delta_w": along_delta,           # ||U^T W0 V^T||_F, U, V from delta W
        "projection_w0_top": projection_norm(w0, U0[:, :r], Vh0[:r].T),  # = sqrt(sum of W0's top r sigma^2)
        "projection_random": sum(random) / len(random),
        "w0_norm": torch.linalg.matrix_norm(w0).item(),
        "amplification": delta_norm / along_delta,
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


def phi_summary(phi, d, r_low):
    """The few numbers of a phi matrix (r1, r2) worth a table, each with its random expectation."""
    r1, r2 = phi.shape
    rand = random_similarity(r1, r2, d)
    k = min(r_low, r1, r2)
    picks = {"phi_1_1": (0, 0), f"phi_1_{k}": (0, k - 1), f"phi_{k}_{k}": (k - 1, k - 1), f"phi_1_{r2}": (0, r2 - 1)}
    out = {}
    for name, (i, j) in picks.items():
        out[name] = phi[i, j].item()
        out[name + "_random"] = rand[i, j].item()
    out[f"mean_phi_i_le_{k}_j_{k}"] = phi[:k, k - 1].mean().item()
    out[f"mean_phi_i_le_{k}_j_{k}_random"] = rand[:k, k - 1].mean().item()
    return out


def by_layer_type(per_module):
    """{module: {key: number}} -> {layer type: {key: mean over blocks}} (q_proj, ..., down_proj)."""
    groups = {}
    for module, numbers in per_module.items():
        groups.setdefault(module.rsplit(".", 1)[-1], []).append(numbers)
    return {t: {k: sum(n[k] for n in group) / len(group) for k in group[0]} for t, group in groups.items()}


# ---------------------------------------------------------------------------------------------
# Plots

def similarity_row(axes, phis, randoms, what, r1, r2):
    """One row of Fig. 3: heatmaps of phi(i, j) per named module, and phi(1, j) against random."""
    *heat_axes, ax_line = axes
    names = list(phis)
    for ax, name in zip(heat_axes, names):
        im = ax.imshow(phis[name].numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper",
                       extent=(0.5, r2 + 0.5, r1 + 0.5, 0.5))
        ax.set_title(f"{name}\nphi(1,1)={phis[name][0, 0]:.2f}  (random: {randoms[name][0, 0]:.3f})", fontsize=9)
        ax.set_xlabel(f"j: top-j directions of {what[1]}")
        ax.set_ylabel(f"i: top-i directions of {what[0]}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    plt.colorbar(im, ax=heat_axes, label="phi(i, j): 0 orthogonal, 1 contained", fraction=0.03, pad=0.02)
    j = range(1, r2 + 1)
    for name, style in zip(names, ("o-", "s-", "k^-")):
        ax_line.plot(j, phis[name][0].numpy(), style, markersize=3, label=f"phi(1, j): {name.split(',')[0]}")
    ax_line.plot(j, randoms[names[-1]][0].numpy(), "--", color="gray", label="random subspace: j/d (mean)")
    ax_line.set_ylim(0, 1.02)
    ax_line.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_line.set_xlabel("j (number of top directions of the second A)")
    ax_line.set_ylabel("phi(1, j)")
    ax_line.set_title(f"top direction of {what[0]} inside\nthe top-j directions of {what[1]}", fontsize=9)
    ax_line.grid(alpha=0.3)
    ax_line.legend(fontsize=7)


def plot_similarity(rows, path, title):
    """rows: [(phis {name: (r1, r2)}, randoms {name: (r1, r2)}, (name of A1, name of A2), r1, r2)]."""
    fig = plt.figure(figsize=(17, 4.4 * len(rows)))
    grid = fig.add_gridspec(len(rows), 4, width_ratios=[1, 1, 1, 1.1], wspace=0.5, hspace=0.6)
    for k, row in enumerate(rows):
        similarity_row([fig.add_subplot(grid[k, c]) for c in range(4)], *row)
    fig.suptitle(title)
    return save(fig, path)


def plot_amplification(amp, keys, path, title):
    """amp: {key: {layer type: amplification dict, mean over blocks}}; keys: [(key, label)], the
    first two get a panel of projections each, all get a bar of the factor."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6))
    types = [t for t in LAYER_TYPES if t in amp[keys[0][0]]]
    x = torch.arange(len(types)).numpy()
    bars = [("projection_delta_w", "||U^T W0 V^T||, U,V = delta W's top-r", "#C44E52"),
            ("projection_w0_top", "||U^T W0 V^T||, U,V = W0's top-r", "#4C72B0"),
            ("projection_random", "||U^T W0 V^T||, U,V random", "#8C8C8C"),
            ("delta_w_norm", "||delta W|| itself", "#55A868")]
    width = 0.2
    for ax, (key, name) in zip(axes, keys[:2]):
        for k, (field, bar_name, color) in enumerate(bars):
            ax.bar(x + (k - 1.5) * width, [amp[key][t][field] for t in types], width, label=bar_name, color=color)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # ticks at 0.2, 0.5, 1, 2, 5
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5 rather than 5x10^-1
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, types)
        ax.set_ylabel("Frobenius norm (log scale), mean over blocks")
        w0 = sum(amp[key][t]["w0_norm"] for t in types) / len(types)
        ax.set_title(f"{name}: W0 projected onto r directions\n(||W0||_F = {w0:.1f}, mean over layer types)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax = axes[-1]
    width = 0.8 / len(keys)
    for k, (key, name) in enumerate(keys):
        offset = (k - (len(keys) - 1) / 2) * width
        values = [amp[key][t]["amplification"] for t in types]
        ax.bar(x + offset, values, width, label=name)
        for xi, v in zip(x, values):
            ax.text(xi + offset, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(1, color="gray", linestyle=":", label="1: delta W no larger than W0 there")
    ax.set_xticks(x, types)
    ax.set_ylabel("||delta W||_F / ||U^T W0 V^T||_F")
    ax.set_title("amplification factor (paper, GPT-3 W_q: 21.5 at r=4, 1.9 at r=64)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return finish(fig, title, path)


# ---------------------------------------------------------------------------------------------

def markdown(sim, amp, keys, ranks, seeds):
    """Two tables, per layer type (mean over blocks): similarity, then amplification."""
    r_low, r_high = ranks
    k = r_low
    rows = [f"| layer | phi(1,1) r={r_low} vs r={r_high} | phi({k},{k}) | phi(1,{r_high}) | "
            f"phi(1,1) seed {seeds[0]} vs {seeds[1]} | phi({k},{k}) | control, at init: phi(1,1) r={r_low} vs {r_high} | "
            f"random phi(1,1) / phi({k},{k}) / phi(1,{r_high}) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in LAYER_TYPES:
        if t not in sim["ranks"]:
            continue
        s, e, i = sim["ranks"][t], sim["seeds"][t], sim["ranks_at_init"][t]
        rows.append(f"| {t} | {s['phi_1_1']:.3f} | {s[f'phi_{k}_{k}']:.3f} | {s[f'phi_1_{r_high}']:.3f} | "
                    f"{e['phi_1_1']:.3f} | {e[f'phi_{k}_{k}']:.3f} | {i['phi_1_1']:.3f} | "
                    f"{s['phi_1_1_random']:.4f} / {s[f'phi_{k}_{k}_random']:.3f} / {s[f'phi_1_{r_high}_random']:.3f} |")
    rows += ["", "| layer | adapter | ||delta W||_F | ||U^T W0 V^T||_F: delta W's top-r | W0's top-r | random | "
             "||W0||_F | amplification |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in LAYER_TYPES:
        for key, name in keys:
            if t in amp[key]:
                a = amp[key][t]
                rows.append(f"| {t} | {name} | {a['delta_w_norm']:.3f} | {a['projection_delta_w']:.3f} | "
                            f"{a['projection_w0_top']:.3f} | {a['projection_random']:.3f} | {a['w0_norm']:.2f} | "
                            f"{a['amplification']:.2f} |")
    return "\n".join(rows) + "\n"


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/subspace")
    p.add_argument("--ranks", type=parse_ranks, default=[8, 64], help="a low and a high rank, e.g. 8,64")
    p.add_argument("--seeds", type=positive_int, default=2, help="fine-tuning seeds at the low rank (>= 2): --seed, --seed+1, ...")
    args = p.parse_args(argv)
    if len(args.ranks) != 2 or args.ranks[0] >= args.ranks[1]:
        p.error(f"--ranks needs a low and a high rank like 8,64; got {args.ranks}")
    if args.seeds < 2:
        p.error("--seeds must be at least 2 (the seed-vs-seed comparison needs two runs)")
    r_low, r_high = args.ranks
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    del kwargs["seed"]  # each run names its own seed; the base model stays the one for args.seed
    seeds = [args.seed + k for k in range(args.seeds)]

    def spec(r):
        return {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": parse_targets(args.targets),
                "lr": args.lora_lr}

    runs = [(r_low, seeds[0]), (r_high, seeds[0])] + [(r_low, s) for s in seeds[1:]]
    records, adapters = [], {}
    for r, s in runs:
        print(f"fine-tuning: LoRA r={r}, seed {s}")
        record = run_finetune(base, base_key, spec(r), target, source, seed=s, keep_adapter=True, **kwargs)
        records.append(record)
        adapters[(r, s)], config = load_adapter_tensors(record["adapter_path"])  # {module: (A, B)}
    write_json(records, os.path.join(args.out, "records.json"))

    low, high = adapters[(r_low, seeds[0])], adapters[(r_high, seeds[0])]
    # Control: the same seed starts both runs, so A's at init are compared too (they should be random).
    init_low, init_high = initial_A(base, spec(r_low), seeds[0]), initial_A(base, spec(r_high), seeds[0])
    modules = list(low)
    weights = base.state_dict()
    # The factor at r_high is not comparable with r_low's: with d=128, 64 random directions already
    # hold half of W0. So also r_high's adapter along its own top-r_low directions.
    amp_keys = [(str(r_low), f"r={r_low}"), (str(r_high), f"r={r_high}"),
                (f"{r_high}_top{r_low}", f"r={r_high}, its top {r_low} directions")]
    per_module, phis = {}, {"ranks": {}, "seeds": {}, "ranks_at_init": {}}
    for m in modules:
        d = low[m][0].shape[1]  # in_features: the space the rows of A live in
        phis["ranks"][m] = subspace_similarity(low[m][0], high[m][0])  # (r_low, r_high)
        phis["seeds"][m] = subspace_similarity(low[m][0], adapters[(r_low, seeds[1])][m][0])  # (r_low, r_low)
        phis["ranks_at_init"][m] = subspace_similarity(init_low[m], init_high[m])  # (r_low, r_high)
        w0 = weights[f"{m}.weight"]  # (out, in)
        dw_low, dw_high = delta_weight(*low[m], config), delta_weight(*high[m], config)  # (out, in) each
        per_module[m] = {
            "in_features": d,
            # How far training moved A from its random start: if little, A's directions are the init's.
            "A_moved": {str(r): (torch.linalg.matrix_norm(a - a0) / torch.linalg.matrix_norm(a0)).item()
                        for r, a, a0 in ((r_low, low[m][0], init_low[m]), (r_high, high[m][0], init_high[m]))},
            "similarity_ranks": phi_summary(phis["ranks"][m], d, r_low),
            "similarity_ranks_at_init": phi_summary(phis["ranks_at_init"][m], d, r_low),
            "similarity_seeds": {f"{seeds[0]}_vs_{s}": phi_summary(
                subspace_similarity(low[m][0], adapters[(r_low, s)][m][0]), d, r_low) for s in seeds[1:]},
            "amplification": dict(zip([k for k, _ in amp_keys], (
                amplification(dw_low, w0, r_low), amplification(dw_high, w0, r_high),
                amplification(dw_high, w0, r_low)))),
        }
    first_pair = f"{seeds[0]}_vs_{seeds[1]}"
    sim = {"ranks": by_layer_type({m: v["similarity_ranks"] for m, v in per_module.items()}),
           "seeds": by_layer_type({m: v["similarity_seeds"][first_pair] for m, v in per_module.items()}),
           "ranks_at_init": by_layer_type({m: v["similarity_ranks_at_init"] for m, v in per_module.items()})}
    amp = {k: by_layer_type({m: v["amplification"][k] for m, v in per_module.items()}) for k, _ in amp_keys}
    title = (f"{args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, alpha {args.alpha:g}, "
             f"lr {args.lora_lr:g}, {device}")
    write_json({"setup": title, "ranks": args.ranks, "seeds": seeds, "modules": per_module,
                "by_layer_type": {"similarity": sim, "amplification": amp}}, os.path.join(args.out, "subspace.json"))

    blocks = sorted({m.split(".")[1] for m in modules if m.startswith("blocks.")}, key=int)
    mid = blocks[len(blocks) // 2]  # a middle block, as the paper shows one layer (48 of 96)
    rows = []
    for key, what, r2, note in (
            ("ranks", (f"A r={r_low}", f"A r={r_high}"), r_high, f"seed {seeds[0]}"),
            ("seeds", (f"A seed {seeds[0]}", f"A seed {seeds[1]}"), r_low, f"r={r_low}"),
            ("ranks_at_init", (f"A r={r_low} at init", f"A r={r_high} at init"), r_high, "before training (control)")):
        members = {f"{t}, block {mid}, {note}": [f"blocks.{mid}.attn.{t}"] for t in ("q_proj", "v_proj")
                   if f"blocks.{mid}.attn.{t}" in phis[key]}
        members[f"mean over {len(modules)} adapted modules"] = modules
        chosen = {n: torch.stack([phis[key][m] for m in ms]).mean(0) for n, ms in members.items()}
        # E[phi] for random subspaces, averaged like phi (d is 4x larger for down_proj)
        randoms = {n: torch.stack([random_similarity(r_low, r2, low[m][0].shape[1]) for m in ms]).mean(0)
                   for n, ms in members.items()}
        rows.append((chosen, randoms, what, r_low, r2))
    plot_similarity(rows, os.path.join(args.out, "similarity_heatmaps.png"),
                    f"subspace similarity phi(i, j) of LoRA's A matrices (Hu et al. 2021, Fig. 3/4)\n{title}")
    plot_amplification(amp, amp_keys, os.path.join(args.out, "amplification.png"),
                       f"does delta W amplify W0's strong directions? (Hu et al. 2021, Sec. 7.3)\n{title}")

    table = markdown(sim, amp, amp_keys, args.ranks, seeds)
    how_to_read = (f"Per layer type, mean over blocks. phi(i, j) in [0, 1]; random = its expectation for a random "
                   f"subspace, max(i, j)/d. The control column compares the two A's at initialisation: both runs "
                   f"start from seed {seeds[0]}, so in the first adapted module the r={r_high} A's first {r_low} rows "
                   f"equal the r={r_low} A at init; elsewhere the starts are unrelated.\n\n")
    write_report(os.path.join(args.out, "results.md"), "What the rank buys: subspace similarity and amplification",
                 title, how_to_read + table)
    print(table)
    print(f"wrote {args.out}/records.json, subspace.json, similarity_heatmaps.png, amplification.png, results.md")


if __name__ == "__main__":
    main()
