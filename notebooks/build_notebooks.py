"""Write the classroom notebooks from the cells below, and optionally run them in place.

    python notebooks/build_notebooks.py                    # write the four .ipynb files, no outputs
    python notebooks/build_notebooks.py --execute          # write, then run each top to bottom, saving outputs
    python notebooks/build_notebooks.py --execute 02 03    # only the notebooks whose names start so

The notebooks are committed with the outputs of a run at their default settings, so run with
NOTEBOOK_FAST unset (or empty). NOTEBOOK_FAST=1 is the tests' quick mode (tests/test_notebooks.py).
Editing a notebook: edit its cells here, then rebuild and execute it, so that the .ipynb and this
file never disagree.
"""
import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def md(text):
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text):
    return ("code", textwrap.dedent(text).strip("\n"))


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------

SETUP = r'''
import os, sys, time
from pathlib import Path

ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()  # the repository root
sys.path.insert(0, str(ROOT))  # so that `import nanogpt, minilora, experiments` works without installing
FAST = os.environ.get("NOTEBOOK_FAST") == "1"  # the tests' quick mode: fewer steps, same code
T0 = time.perf_counter()
'''

PLOTS = r'''
import matplotlib.pyplot as plt
%matplotlib inline
plt.rcParams.update({"figure.dpi": 80, "font.size": 10})
print(f"torch {torch.__version__} | CPU threads: {torch.get_num_threads()} | mode: {'FAST (tests)' if FAST else 'default'}")
'''

BASE_MODEL = r'''
import tempfile
from experiments.base_model import get_base_model
from experiments.common import make_parser
from nanogpt.presets import config_from_preset

EXP = make_parser("notebook", "runs").parse_args([])  # the experiments' own defaults: one shared cache
PRETRAIN_ITERS = 50 if FAST else EXP.pretrain_iters
CACHE = Path(tempfile.mkdtemp(prefix="lora-notebook-")) if FAST else ROOT / "runs" / "cache"
config = config_from_preset(EXP.preset)

t = time.perf_counter()
base, ckpt_path = get_base_model(EXP.source, config, max_iters=PRETRAIN_ITERS, batch_size=EXP.batch_size,
                                 lr=EXP.pretrain_lr, seed=EXP.seed, device=EXP.device,
                                 cache_dir=str(CACHE), progress=False)
print(f"base model: {base.num_parameters():,} parameters, pretrained for {PRETRAIN_ITERS} steps on "
      f"{EXP.source!r} (loaded or trained in {time.perf_counter() - t:.1f} s)")
'''

ELAPSED = r'''
print(f"notebook ran top to bottom in {time.perf_counter() - T0:.0f} s (mode: {'FAST' if FAST else 'default'})")
'''

FOOTER = r'''
if FAST:
    import shutil
    shutil.rmtree(CACHE, ignore_errors=True)  # quick mode works in a temporary folder
print(f"notebook ran top to bottom in {time.perf_counter() - T0:.0f} s (mode: {'FAST' if FAST else 'default'})")
'''


def solution(title, body):
    """An exercise solution, hidden until the reader clicks it open."""
    return md(f"<details>\n<summary>{title}</summary>\n\n{textwrap.dedent(body).strip()}\n\n</details>")


# ---------------------------------------------------------------------------------------------
# 01: low-rank intuition
# ---------------------------------------------------------------------------------------------

NB01 = [
    md(r'''
    # 1. Low rank: the intuition behind LoRA

    LoRA (Hu et al. 2021) fine-tunes a big model by learning, for each chosen weight matrix $W_0$,
    a change $\Delta W = \frac{\alpha}{r} B A$ that has **low rank** $r$. Before writing any LoRA
    code, this notebook builds the intuition for why that can work.

    **What you will learn**

    - what the rank of a matrix is, and why a product $B A$ of a $d \times r$ and an $r \times k$
      matrix has rank at most $r$;
    - what the singular value decomposition (SVD) says about a matrix, and how much of a matrix's
      *energy* its top $r$ directions keep;
    - that a trained weight matrix (from our tiny GPT) is far more structured than a random one,
      but is **not** itself low rank;
    - that the *change* fine-tuning makes to the weights is more concentrated, and that a low-rank
      part of it keeps much of its effect: LoRA's bet;
    - what low rank buys: $r(d + k)$ parameters instead of $d k$.

    Runs in about a minute on a laptop CPU (plus about two minutes, once, to pretrain the base
    model if `runs/cache` does not hold it yet).
    '''),
    code(SETUP + "\nimport copy\nimport torch\n" + PLOTS),
    md(r'''
    ## What rank is

    A $d \times k$ matrix $W$ maps a $k$-dimensional input to a $d$-dimensional output. Its **rank**
    is the number of independent directions those outputs can point in.

    - An outer product $u v^T$ ($d \times 1$ times $1 \times k$) has rank 1: every column is a
      multiple of the same vector $u$.
    - A product $B A$ with $B$ of shape $d \times r$ and $A$ of shape $r \times k$ is a sum of $r$
      outer products (column $i$ of $B$ times row $i$ of $A$), so its rank is **at most $r$**.

    That second shape is exactly the one LoRA uses for $\Delta W$.
    '''),
    code(r'''
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(12, 1, generator=g), torch.randn(1, 12, generator=g)
    B, A = torch.randn(12, 3, generator=g), torch.randn(3, 12, generator=g)
    examples = {
        r"$u v^T$ (12×1 times 1×12)": u @ v,
        r"$B A$ (12×3 times 3×12)": B @ A,
        "random 12×12": torch.randn(12, 12, generator=g),
    }

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), layout="constrained")
    for ax, (title, M) in zip(axes, examples.items()):
        limit = M.abs().max()
        ax.imshow(M, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_title(f"{title}\nrank {torch.linalg.matrix_rank(M).item()}")
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("Three 12×12 matrices (colour = entry value): the rank counts independent directions")
    plt.show()
    '''),
    md(r'''
    In the rank-1 picture every row is the same pattern, only scaled (and maybe flipped). The
    rank-3 matrix mixes three patterns; the random one has no shared pattern at all.

    ## The singular value decomposition

    Every matrix can be written as $W = U \,\mathrm{diag}(\sigma)\, V^T$: orthonormal input
    directions (rows of $V^T$), orthonormal output directions (columns of $U$), and singular values
    $\sigma_1 \ge \sigma_2 \ge \dots \ge 0$ that say how strongly $W$ acts along each pair.

    - The rank is the number of non-zero $\sigma_i$.
    - Keeping only the top $r$ terms gives the **best** rank-$r$ approximation $W_r$
      (Eckart-Young), and the error it leaves is $\|W - W_r\|_F^2 = \sum_{i > r} \sigma_i^2$.
    - So the **energy kept** by the top $r$ directions,
      $\sum_{i \le r} \sigma_i^2 \,/\, \sum_i \sigma_i^2$, tells how well rank $r$ can describe $W$.
    '''),
    code(r'''
    BA = examples[r"$B A$ (12×3 times 3×12)"]
    U, S, Vh = torch.linalg.svd(BA)
    print("singular values of B A:", [round(s, 3) for s in S.tolist()])
    W3 = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]  # the top-3 terms
    print("the top 3 terms rebuild B A exactly:", torch.allclose(W3, BA, atol=1e-4))
    '''),
    md(r'''
    Three non-zero singular values, then zeros (up to float rounding): rank 3, as built.

    ## A real weight matrix

    Now a matrix that was learned. We load the tiny GPT that the experiments pretrain on the Python
    standard library's code (4 layers, width 128), from the shared cache `runs/cache`, or train it
    if it is not there yet.
    '''),
    code(BASE_MODEL),
    code(r'''
    def energy_kept(W):
        """Fraction of ||W||_F^2 held by the top-r singular directions, for r = 1 .. min(d, k)."""
        s2 = torch.linalg.svdvals(W.detach().double()) ** 2
        return (s2.cumsum(0) / s2.sum()).numpy()

    params = dict(base.named_parameters())
    W = params["blocks.1.attn.q_proj.weight"].detach()  # (128, 128): layer 1's query projection
    R = torch.randn(W.shape, generator=g) * W.std()  # a random matrix of the same shape and scale

    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    for M, name, style in ((W, "trained: blocks.1.attn.q_proj", "-"), (R, "random, same shape and std", "--")):
        ax_s.plot(range(1, 129), torch.linalg.svdvals(M).numpy(), style, label=name)
        ax_e.plot(range(1, 129), 100 * energy_kept(M), style, label=name)
    ax_s.set(title="singular values, largest first", xlabel="index i", ylabel=r"singular value $\sigma_i$")
    ax_e.axvline(8, color="gray", linestyle=":", label="r = 8")
    ax_e.set(title="energy kept by the top r directions", xlabel="r (directions kept)", ylabel="energy kept (%)")
    for ax in (ax_s, ax_e):
        ax.grid(alpha=0.3), ax.legend()
    plt.show()
    '''),
    md(r'''
    The random matrix's singular values fall off slowly and evenly: every direction matters about
    as much as any other, so no small $r$ describes it well. The trained matrix has a handful of
    strong directions on top of a random-looking bulk: training put structure in it.

    The same comparison for every weight matrix of one block, as numbers:
    '''),
    code(r'''
    def r_for(energy, fraction):
        return int((energy < fraction).sum()) + 1  # the smallest r that keeps `fraction` of the energy

    print(f"{'matrix (block 1)':<16} {'shape':>10} {'kept by r=8':>12} {'random':>8} {'r for 90%':>10} {'random':>8}")
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"):
        part = "attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        M = params[f"blocks.1.{part}.{name}.weight"].detach()
        e, e_rand = energy_kept(M), energy_kept(torch.randn(M.shape, generator=g))
        print(f"{name:<16} {str(tuple(M.shape)):>10} {e[7]:>11.0%} {e_rand[7]:>8.0%} {r_for(e, 0.9):>10} "
              f"{r_for(e_rand, 0.9):>8}")
    '''),
    md(r'''
    Structured, but **not low rank**: keeping 90% of a trained matrix's energy still takes a large
    fraction of its 128 directions. Replacing $W_0$ by a rank-8 approximation would damage the model.

    LoRA never does that. It keeps $W_0$ whole and frozen, and learns only a *change*:
    $W = W_0 + \Delta W$ with $\Delta W = \frac{\alpha}{r} B A$. The paper's hypothesis is that the
    change fine-tuning needs has a low "intrinsic rank", even when $W_0$ does not.

    ## The change is what LoRA makes low rank

    We can look at such a change directly. Fine-tune **all** the weights of a copy of the base
    model for a few hundred steps on a new corpus (the English prose of the Python docs), then take
    the SVD of $\Delta W = W_{\text{tuned}} - W_0$ for each of the 24 weight matrices in the blocks.
    '''),
    code(r'''
    import contextlib, io
    from nanogpt.data import load_corpus
    from nanogpt.train import train

    FT_STEPS = 20 if FAST else 200
    docs = load_corpus(EXP.target, config.block_size)
    tuned = copy.deepcopy(base).requires_grad_(True)  # full fine-tuning: every weight trains
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # train() prints each evaluation; we only need the end
        result = train(tuned, docs.train, {"docs": docs.val}, max_iters=FT_STEPS, batch_size=EXP.batch_size,
                       lr=EXP.full_lr, warmup_iters=max(1, FT_STEPS // 10), weight_decay=0.0,
                       eval_interval=FT_STEPS, eval_iters=4 if FAST else 20, progress=False)
    h = result["history"]
    print(f"{FT_STEPS} steps of full fine-tuning on {EXP.target!r} in {time.perf_counter() - t:.0f} s: "
          f"docs loss {h[0]['docs_loss']:.3f} -> {h[-1]['docs_loss']:.3f} nats/byte")
    '''),
    code(r'''
    import numpy as np

    tuned_params = dict(tuned.named_parameters())
    names = [n for n in params if n.startswith("blocks.") and n.endswith("_proj.weight")]
    delta_energy = np.array([energy_kept(tuned_params[n] - params[n]) for n in names])  # (24, 128)
    weight_energy = np.array([energy_kept(params[n]) for n in names])
    random_energy = np.array([energy_kept(torch.randn(params[n].shape, generator=g)) for n in names])

    r_axis = np.arange(1, 129)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for E, name, color in ((delta_energy, r"the change $\Delta W$ made by fine-tuning", "C3"),
                           (weight_energy, r"the trained weights $W_0$", "C0"),
                           (random_energy, "random matrices", "gray")):
        ax.plot(r_axis, 100 * np.median(E, 0), color=color, label=f"{name} (median of {len(E)})")
        ax.fill_between(r_axis, 100 * E.min(0), 100 * E.max(0), color=color, alpha=0.15)
    ax.axvline(8, color="black", linestyle=":", label="r = 8")
    ax.set(xscale="log", xlabel="r (directions kept, log scale)", ylabel="energy kept (%)",
           title="How much of each matrix the top r directions keep\n(line: median over the 24 block matrices; band: min to max)")
    ax.grid(alpha=0.3), ax.legend(loc="upper left", fontsize=9)
    plt.show()
    for E, name in ((delta_energy, "delta W"), (weight_energy, "W0"), (random_energy, "random")):
        print(f"top 8 of 128 directions keep (median): {np.median(E[:, 7]):5.1%} of {name}")
    '''),
    md(r'''
    The change that fine-tuning makes is more concentrated than the trained weights, and far more
    than a random matrix. But energy is not the whole story: some directions matter more to what
    the model *does* than their size suggests, and some carry mostly noise from the optimizer.

    ## Does the model need all of the change?

    The direct test: keep only the top $r$ directions of each matrix's change,
    $W = W_0 + (\Delta W)_r$, for all 24 matrices at once, and measure the loss on the docs. At
    $r = 0$ this is the base model; at $r = 128$ it is the base model plus the full change of every
    block matrix (the other, small parameters such as biases and layer norms stay at the base values).
    '''),
    code(r'''
    from nanogpt.data import fixed_batches
    from nanogpt.train import evaluate

    def with_truncated_change(r):
        # A copy of the base model plus the rank-r part of each block matrix's fine-tuning change.
        model = copy.deepcopy(base)
        model_params = dict(model.named_parameters())
        with torch.no_grad():
            for n in names:
                U, S, Vh = torch.linalg.svd(tuned_params[n] - params[n], full_matrices=False)
                model_params[n] += U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]  # (d, k), rank <= r
        return model

    batches = fixed_batches(docs.val, 4 if FAST else 20, EXP.batch_size, config.block_size)
    ranks = [0, 1, 2, 4, 8, 16, 32, 64, 128]
    loss_at = {r: evaluate(with_truncated_change(r), batches, "cpu") for r in ranks}
    tuned_loss = evaluate(tuned, batches, "cpu")

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot([max(r, 0.5) for r in ranks], list(loss_at.values()), "o-", color="C3",
            label=r"$W_0 + (\Delta W)_r$ in all 24 block matrices")
    ax.axhline(loss_at[0], color="gray", linestyle=":", label="base model (r = 0, drawn at 0.5)")
    ax.axhline(tuned_loss, color="black", linestyle="--", label="fully fine-tuned model")
    ax.set(xscale="log", xlabel="rank r kept of each change (log scale)", ylabel="docs validation loss (nats/byte)",
           title="How much of fine-tuning's effect survives truncating the change to rank r")
    ax.set_xticks([0.5] + ranks[1:], ["0"] + [str(r) for r in ranks[1:]])
    ax.grid(alpha=0.3), ax.legend(fontsize=9)
    plt.show()
    gain = loss_at[0] - loss_at[128]
    for r in (4, 8, 16, 32):
        print(f"rank {r:>3} keeps {(loss_at[0] - loss_at[r]) / gain:5.1%} of the loss improvement made by the full-rank change")
    '''),
    md(r'''
    A small rank keeps a large share of what fine-tuning achieved, but not all of it: the first
    few directions buy the most, and each doubling of $r$ after that buys less. That is the bet
    LoRA makes. (The gap between $r = 128$ and the fully fine-tuned line is what the changes to
    the embeddings, biases and layer norms contributed; LoRA on the block matrices does not get
    that part.) Two cautions: this truncates a change that was found *without* a rank limit, while
    LoRA learns its change *within* the limit (and can find a better one); and a longer or harder
    fine-tuning tends to need more directions. Notebook 4 measures real LoRA runs as $r$ shrinks.

    ## What low rank buys: parameters

    A full $d \times k$ update has $d k$ numbers. The LoRA factors $B$ ($d \times r$) and $A$
    ($r \times k$) have $r (d + k)$: linear in $r$, and tiny when $r \ll \min(d, k)$. LoRA stops
    saving anything at $r = dk / (d + k)$ (64 for a square $128 \times 128$ matrix).
    '''),
    code(r'''
    from minilora import apply_lora, count_parameters
    from experiments.common import ALL_BLOCK_LINEARS

    shapes = {"tiny GPT attention, 128×128": (128, 128), "tiny GPT MLP, 512×128": (512, 128),
              "7B-class attention, 4096×4096": (4096, 4096)}
    fig, (ax_m, ax_w) = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, (name, (d, k)) in enumerate(shapes.items()):
        r = np.unique(np.logspace(0, np.log2(min(d, k)), 60, base=2).astype(int))
        ax_m.plot(r, r * (d + k), color=f"C{i}", label=f"{name}: at r=8, {8 * (d + k) / (d * k):.2%} of d·k")
        ax_m.axhline(d * k, color=f"C{i}", linestyle="--", linewidth=1)
        ax_m.plot(8, 8 * (d + k), "o", color=f"C{i}")
    ax_m.set(xscale="log", yscale="log", xlabel="rank r (log scale)", ylabel="parameters (log scale)",
             title="one matrix: r(d+k) (solid) against the full d·k (dashed)")
    ax_m.grid(alpha=0.3), ax_m.legend(fontsize=8, loc="lower right")

    ranks = [1, 2, 4, 8, 16, 32, 64, 128]
    percent = [count_parameters(apply_lora(copy.deepcopy(base), ALL_BLOCK_LINEARS, r=r, alpha=16)).percent
               for r in ranks]
    ax_w.plot(ranks, percent, "o-")
    for r, p in zip(ranks, percent):
        ax_w.annotate(f"{p:.1f}%", (r, p), textcoords="offset points", xytext=(-10, 6), fontsize=8)
    ax_w.set(xscale="log", xlabel="rank r (log scale)", ylabel="trainable parameters (% of the model)",
             title="whole tiny GPT: LoRA on all 24 block matrices")
    ax_w.set_xticks(ranks, [str(r) for r in ranks])
    ax_w.grid(alpha=0.3)
    fig.tight_layout()
    plt.show()
    '''),
    md(r'''
    The saving grows with the matrix: at $r = 8$ a $4096 \times 4096$ projection needs 0.4% of its
    parameters, our $128 \times 128$ one 12.5%. Our tiny model is the hard case for LoRA's
    arithmetic; the big models LoRA was made for are the easy one.

    (In the right panel the percentage counts trainable parameters against all parameters, which
    include the embeddings and the frozen base; at $r = 128$ the adapters outnumber the weights they adapt.)

    ## Summary

    - $B A$ with inner size $r$ has rank at most $r$ and costs $r(d+k)$ parameters instead of $dk$.
    - The SVD ranks a matrix's directions by importance; the energy kept by the top $r$ says how
      well rank $r$ can describe it.
    - Trained weights are structured but not low rank; the change fine-tuning makes is more
      concentrated, and its top few directions keep much of its effect on the loss. LoRA keeps
      $W_0$ and learns only a low-rank change.

    ## Exercises
    1. How many directions does `blocks.0.mlp.down_proj.weight` need to keep 90% of its energy?
       And the change $\Delta W$ that fine-tuning made to it?
    2. Check Eckart-Young numerically: build $W_r$ from the top $r$ singular triplets of the
       query matrix `W` above and show that $\|W - W_r\|_F^2 = \sum_{i>r} \sigma_i^2$ for a few $r$.
    3. For which $r$ does LoRA stop saving parameters on a $4096 \times 4096$ matrix? On a
       $512 \times 128$ one? Is that $r$ allowed at all for the second?
    '''),
    solution("Solution 1", r'''
    ```python
    name = "blocks.0.mlp.down_proj.weight"
    print("W0:     ", r_for(energy_kept(params[name]), 0.9), "directions for 90%")
    print("delta W:", r_for(energy_kept(tuned_params[name] - params[name]), 0.9), "directions for 90%")
    ```
    The weight needs most of its 128 directions; the fine-tuning change needs far fewer.
    '''),
    solution("Solution 2", r'''
    ```python
    U, S, Vh = torch.linalg.svd(W.double())
    for r in (1, 8, 32):
        W_r = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]
        print(r, ((W.double() - W_r) ** 2).sum().item(), (S[r:] ** 2).sum().item())  # equal
    ```
    '''),
    solution("Solution 3", r'''
    LoRA breaks even when $r(d + k) = dk$, so at $r = dk/(d+k)$: 2048 for $4096 \times 4096$, and
    $512 \cdot 128 / 640 = 102.4$ for $512 \times 128$. Ranks above $\min(d, k) = 128$ add
    parameters but no rank, so `minilora` refuses them; between 103 and 128 LoRA is allowed but
    costs more parameters than the matrix itself.
    '''),
    code(FOOTER),
]


# ---------------------------------------------------------------------------------------------
# 02: the LoRA layer from scratch
# ---------------------------------------------------------------------------------------------

NB02 = [
    md(r'''
    # 2. A LoRA layer from scratch

    A LoRA layer wraps a frozen linear layer $h = W_0 x + b$ and adds a trainable low-rank path:

    $$h = W_0 x + b + \Delta W x, \qquad \Delta W = \frac{\alpha}{r} B A,$$

    with $A$ of shape $r \times k$ (in), $B$ of shape $d \times r$ (out), $A$ random and $B = 0$
    at the start. Here we write it by hand in a few lines, put it next to `minilora.LoRALinear`,
    and check, one cell at a time, the properties that make LoRA work.

    **What you will learn**

    1. it starts exactly equal to the base layer, because $B = 0$;
    2. only $A$ and $B$ get gradients (and at the very first step, only $B$);
    3. what the scaling $\alpha / r$ does when you change $r$;
    4. merging $\Delta W$ into $W_0$ gives the same outputs with no added latency (timed);
    5. $\Delta W$ has rank at most $r$, and what that means for what it can learn.

    Runs in well under a minute on a laptop CPU; no pretrained model needed.
    '''),
    code(SETUP + "\nimport copy, math, statistics\nimport torch\nimport torch.nn as nn\n" + PLOTS),
    md(r'''
    ## The layer, by hand

    Ten lines. `A` starts like an `nn.Linear` weight (Kaiming-uniform) and `B` at zero; the base
    layer is frozen with `requires_grad_(False)`.
    '''),
    code(r'''
    class MyLoRALinear(nn.Module):
        def __init__(self, base: nn.Linear, r: int, alpha: float):
            super().__init__()
            self.base = base.requires_grad_(False)                           # W0 and b: frozen
            self.A = nn.Parameter(torch.empty(r, base.in_features))          # (r, in)
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))                 # as nn.Linear inits a weight
            self.B = nn.Parameter(torch.zeros(base.out_features, r))         # (out, r): zero
            self.scaling = alpha / r

        def forward(self, x):                                                # x (..., in)
            return self.base(x) + (x @ self.A.T @ self.B.T) * self.scaling   # (..., out)
    '''),
    md(r'''
    The library's `minilora.LoRALinear` computes the same function; it adds several named adapters
    per layer, adapter dropout, merging, the rsLoRA/DoRA/PiSSA variants, and a hand-written
    backward pass that never forms the full $d \times k$ product. Put the same $A$ and $B$ into
    both and compare. (We give $B$ random values first: with $B = 0$ the check would prove little.)
    '''),
    code(r'''
    from minilora import LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(128, 512)                        # the shape of our tiny GPT's MLP up-projection
    mine = MyLoRALinear(copy.deepcopy(base), r=8, alpha=16)
    lib = LoRALinear(copy.deepcopy(base), r=8, alpha=16)
    with torch.no_grad():
        lib.lora_B.normal_(0, 0.02)
        mine.A.copy_(lib.lora_A), mine.B.copy_(lib.lora_B)

    x = torch.randn(4, 16, 128)                       # (batch, tokens, in)
    print("A", tuple(lib.lora_A.shape), " B", tuple(lib.lora_B.shape), " scaling", lib.scaling)
    print("max |mine(x) - lib(x)| =", (mine(x) - lib(x)).abs().max().item())
    '''),
    md(r'''
    Equal up to float rounding (the two add things in a different order).

    ## Property 1: it starts as the base layer

    With $B = 0$, $\Delta W = \frac{\alpha}{r} B A = 0$, so before any training the adapted model
    computes exactly what the pretrained model computes: fine-tuning starts from the pretrained
    behaviour, not from a damaged copy of it.
    '''),
    code(r'''
    fresh = LoRALinear(copy.deepcopy(base), r=8, alpha=16)
    print("B is all zeros:", bool((fresh.lora_B == 0).all()))
    print("outputs identical to the base layer, bit for bit:", torch.equal(fresh(x), base(x)))
    '''),
    md(r'''
    ## Property 2: only $A$ and $B$ learn

    Back-propagate a loss and look at which parameters received a gradient.
    '''),
    code(r'''
    loss = fresh(x).pow(2).mean()
    loss.backward()
    for name, p in fresh.named_parameters():
        grad = "no gradient" if p.grad is None else f"gradient norm {p.grad.norm():.2e}"
        print(f"{name:<24} {str(tuple(p.shape)):<11} requires_grad={str(p.requires_grad):<5}  {grad}")
    '''),
    md(r'''
    The frozen $W_0$ and $b$ get no gradient at all, so no memory for gradients or optimizer
    state either: that is where LoRA's memory saving comes from.

    Notice also that at this first step **$A$'s gradient is exactly zero**. With
    $h = W_0 x + s B A x$ and upstream gradient $g = \partial L / \partial h$:

    $$\frac{\partial L}{\partial B} = s\, g\, (A x)^T \neq 0, \qquad \frac{\partial L}{\partial A} = s\, B^T g\, x^T = 0 \text{ while } B = 0.$$

    So the first step moves only $B$; from the second step on both train. (Exercise 2 asks what
    happens if *both* start at zero.)

    ## Property 3: the scaling $\alpha / r$

    $\Delta W$ is scaled by $s = \alpha / r$, so doubling $\alpha$ doubles the change the adapter
    makes, for the same $A$ and $B$:
    '''),
    code(r'''
    with torch.no_grad():
        lib.adapters["default"].alpha = 32.0          # alpha 16 -> 32, same A and B
        doubled = lib.delta_weight()
        lib.adapters["default"].alpha = 16.0
        print("scaling:", lib.scaling, "| delta W == (alpha/r) B A:",
              torch.allclose(lib.delta_weight(), 16 / 8 * lib.lora_B @ lib.lora_A),
              "| alpha x2 doubles delta W:", torch.allclose(doubled, 2 * lib.delta_weight()))
    '''),
    md(r'''
    Why divide by $r$ at all? With Adam, the first updates of $B$ have about the same size
    whatever the gradient's size, so the product $B A$, a sum of $r$ terms, grows with $r$. The
    paper divides by $r$ so that a learning rate found at one rank still works at another ("we
    simply set $\alpha$ to the first $r$ we try and do not tune it").

    We can measure it: take one layer, one regression problem, and for each $r$ train a fresh
    adapter for 10 Adam steps at the same learning rate, then measure how much the layer's output
    moved, $\|\Delta W x\|$. Three choices of scale: none ($s = 1$), LoRA's $\alpha / r$, and
    rsLoRA's $\alpha / \sqrt{r}$ (Kalajdzievski 2023, `rslora=True` in `minilora`).
    '''),
    code(r'''
    def change_after_adam(r, scale, steps=10, lr=1e-3):
        """Mean ||delta W x|| after `steps` Adam steps on a fixed regression, for an adapter of rank r."""
        torch.manual_seed(1)
        alpha = {"none (s = 1)": r, "LoRA: alpha / r": 16, "rsLoRA: alpha / sqrt(r)": 16 * math.sqrt(r) / 4}[scale]
        layer = LoRALinear(copy.deepcopy(base), r=r, alpha=alpha)  # alphas chosen to match at r = 16
        opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
        gen = torch.Generator().manual_seed(2)
        xs, target = torch.randn(256, 128, generator=gen), torch.randn(256, 512, generator=gen)
        for _ in range(steps):
            loss = (layer(xs) - target).pow(2).mean()
            opt.zero_grad(), loss.backward(), opt.step()
        with torch.no_grad():
            return (xs @ layer.delta_weight().T).norm(dim=-1).mean().item()

    ranks = [1, 2, 4, 8, 16, 32, 64]
    scales = ["none (s = 1)", "LoRA: alpha / r", "rsLoRA: alpha / sqrt(r)"]
    moved = {s: [change_after_adam(r, s) for r in ranks] for s in scales}

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s, marker in zip(scales, "s^o"):
        ax.plot(ranks, moved[s], marker + "-", label=s)
    ax.set(xscale="log", yscale="log", xlabel="rank r (log scale)",
           ylabel=r"output change $\|\Delta W x\|$ (log scale)",
           title="How far 10 Adam steps move the layer, by rank and scale\n(same learning rate; scales equal at r = 16)")
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.grid(alpha=0.3), ax.legend()
    plt.show()
    for s in scales:
        print(f"{s:<24} r=64 moves {moved[s][-1] / moved[s][0]:5.2f}x as far as r=1")
    '''),
    md(r'''
    Without a scale, the same learning rate moves a rank-64 adapter about ten times further than a
    rank-1 adapter, so every rank would need its own learning rate. Dividing by $r$ removes that
    growth, and in this test over-corrects: large ranks now take *smaller* steps. That is rsLoRA's
    observation, and dividing by $\sqrt{r}$ keeps the step size about flat. The LoRA paper's
    $\alpha / r$ is the default in `minilora` and in most libraries; notebook 4 keeps $\alpha = 16$
    fixed across ranks, as the paper does.

    ## Property 4: merging costs nothing at inference

    After training, $\Delta W$ can be added into the base weight once, $W = W_0 + \frac{\alpha}{r} BA$,
    and the layer is then an ordinary linear layer again: same outputs, no extra computation.
    `unmerge()` subtracts it again, so adapters stay swappable.
    '''),
    code(r'''
    y_adapter = lib(x)
    lib.merge()                                       # W0 <- W0 + delta W, in place
    y_merged = lib(x)
    print("merged:", lib.merged, "| max |difference| =", (y_merged - y_adapter).abs().max().item())
    lib.unmerge()                                     # W0 <- W0 - delta W
    print("unmerged again, base weight restored:", torch.allclose(lib.base.weight, base.weight, atol=1e-6))
    '''),
    md(r'''
    The same outputs, up to float rounding (about $10^{-6}$ or less). Now the latency, on a whole model:
    the tiny GPT (untrained weights are fine for timing) with LoRA on all 24 block matrices, $r=8$.
    We time one forward pass over a 64-token context, as one step of text generation does, in four
    forms: the plain model, LoRA unmerged, LoRA merged (the LoRA layers still wrap the merged
    linears), and merged then unloaded (`unload_lora` puts plain `nn.Linear` modules back). The
    forms take turns, so a busy CPU slows them all alike, and we keep the median.
    '''),
    code(r'''
    from minilora import apply_lora, merge_lora, unload_lora
    from nanogpt.model import GPT
    from nanogpt.presets import config_from_preset

    torch.manual_seed(0)
    gpt = GPT(config_from_preset("tiny")).eval()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    lora_gpt = apply_lora(copy.deepcopy(gpt), targets, r=8, alpha=16)
    with torch.no_grad():                             # pretend it was trained: B != 0
        for name, p in lora_gpt.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02)
    forms = {"base model": gpt, "LoRA, unmerged": lora_gpt,
             "LoRA, merged": merge_lora(copy.deepcopy(lora_gpt)),
             "merged + unloaded": unload_lora(copy.deepcopy(lora_gpt))}

    idx = torch.randint(0, 256, (1, 64))              # one 64-token context
    with torch.no_grad():
        ref = lora_gpt(idx)[0]
        for name in ("LoRA, merged", "merged + unloaded"):
            print(f"{name}: max |logits - unmerged logits| = {(forms[name](idx)[0] - ref).abs().max():.1e}")

    ROUNDS = 30 if FAST else 300
    times = {name: [] for name in forms}
    with torch.no_grad():
        for _ in range(ROUNDS):
            for name, model in forms.items():         # take turns
                t = time.perf_counter()
                model(idx)
                times[name].append(time.perf_counter() - t)
    median_ms = {name: 1000 * statistics.median(ts) for name, ts in times.items()}
    '''),
    code(r'''
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bars = ax.bar(list(median_ms), list(median_ms.values()), color=["#4C72B0", "#C44E52", "#55A868", "#8172B3"])
    for bar, ms in zip(bars, median_ms.values()):
        ax.text(bar.get_x() + bar.get_width() / 2, ms, f"{ms:.2f} ms\n({ms / median_ms['base model'] - 1:+.0%})",
                ha="center", va="bottom", fontsize=9)
    ax.set(ylabel="median forward time (ms)", title=f"Tiny GPT, one 64-token forward pass, median of {ROUNDS} "
           f"(CPU threads: {torch.get_num_threads()})")
    ax.margins(y=0.25)
    plt.show()
    '''),
    md(r'''
    Unmerged, every adapted layer runs two extra thin matrix products ($x A^T$, then times $B^T$),
    which costs real time at this small size. Merged, the model does the base model's work again;
    the merged LoRA layers only add a Python call each (a few microseconds), and after
    `unload_lora` the model *is* a plain model. (Timings on a shared CPU are noisy; compare the
    bars, not the third digit.)

    ## Property 5: $\Delta W$ has rank at most $r$

    $\Delta W = s B A$ goes through an $r$-dimensional bottleneck, so its rank is at most $r$,
    whatever values training gives $A$ and $B$. Fill them with random values and look at the
    singular values of $\Delta W$:
    '''),
    code(r'''
    fig, ax = plt.subplots(figsize=(7, 4))
    for r, color in ((1, "C0"), (4, "C1"), (16, "C2")):
        layer = LoRALinear(nn.Linear(128, 128), r=r, alpha=16)
        with torch.no_grad():
            layer.lora_B.normal_()                    # any values training might produce
            dW = layer.delta_weight()                 # (128, 128)
        sv = torch.linalg.svdvals(dW)
        ax.semilogy(range(1, 129), sv.clamp_min(1e-12), color=color,
                    label=f"r = {r}: matrix_rank = {torch.linalg.matrix_rank(dW).item()}")
        ax.axvline(r, color=color, linestyle=":")
    ax.set(xlabel="index i", ylabel=r"singular value $\sigma_i$ of $\Delta W$ (log scale)",
           title=r"A 128×128 $\Delta W = (\alpha / r)\, B A$: exactly r non-zero singular values")
    ax.grid(alpha=0.3), ax.legend()
    plt.show()
    '''),
    md(r'''
    After index $r$ the singular values drop by many orders of magnitude to float-rounding noise:
    the rank is exactly $r$.

    ## Putting it together: what rank $r$ can and cannot learn

    A last experiment ties the properties together. A "teacher" layer is the base layer plus a
    change of rank 4: $W_{\text{teacher}} = W_0 + U V^T$ with $U V^T$ of rank 4. Train LoRA
    adapters of rank 1, 2, 4 and 8 to imitate the teacher (mean squared error on random inputs).
    '''),
    code(r'''
    torch.manual_seed(0)
    base128 = nn.Linear(128, 128)
    gen = torch.Generator().manual_seed(1)
    change = 0.025 * torch.randn(128, 4, generator=gen) @ torch.randn(4, 128, generator=gen)  # rank 4
    xs = torch.randn(512, 128, generator=gen)
    with torch.no_grad():
        target = base128(xs) + xs @ change.T

    STEPS = 40 if FAST else 400
    curves = {}
    for r in (1, 2, 4, 8):
        torch.manual_seed(1)
        layer = LoRALinear(copy.deepcopy(base128), r=r, alpha=16)
        opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=3e-3)
        curves[r] = []
        for _ in range(STEPS):
            loss = (layer(xs) - target).pow(2).mean()
            opt.zero_grad(), loss.backward(), opt.step()
            curves[r].append(loss.item())

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r, losses in curves.items():
        ax.semilogy(losses, label=f"LoRA r = {r}: final {losses[-1]:.1e}")
    ax.set(xlabel="Adam step", ylabel="mean squared error (log scale)",
           title="Imitating a rank-4 change with rank-r adapters")
    ax.grid(alpha=0.3), ax.legend()
    plt.show()
    '''),
    md(r'''
    Ranks 1 and 2 plateau: they capture the change's strongest one or two directions and can never
    represent the rest. Ranks 4 and 8 drive the error towards zero (the wiggles near $10^{-8}$ are
    float32 rounding). Rank 8 gets there more slowly than rank 4: with $\alpha$ fixed, its scale
    $\alpha / r$ is half as large, so the same learning rate takes smaller steps (property 3).
    Real fine-tuning updates are not exactly low rank (notebook 1), so in practice the question is
    how much loss a smaller $r$ costs; notebook 4 measures that on the GPT.

    ## Summary

    - A LoRA layer is ten lines: a frozen base plus $\frac{\alpha}{r} B (A x)$, with $B = 0$ at the start.
    - It starts equal to the base; only $A$, $B$ train (and only $B$ at the first step).
    - $\alpha / r$ keeps the update size from growing with $r$ (it slightly over-corrects; rsLoRA
      uses $\sqrt{r}$).
    - Merging folds $\Delta W$ into $W_0$: identical outputs, the base model's latency.
    - $\Delta W$ has rank at most $r$: changes of higher rank can only be approximated.

    ## Exercises
    1. Add adapter dropout to `MyLoRALinear`: dropout applied to the adapter's input only,
       $h = W_0 x + b + s B A\,\mathrm{dropout}(x)$. Check that in `eval()` mode it matches
       `LoRALinear(..., dropout=0.1)` and that in `train()` mode two calls differ.
    2. Start with **both** $A = 0$ and $B = 0$. What gradients do $A$ and $B$ get, and can the
       adapter ever learn?
    3. Write `merge()` and `unmerge()` methods for `MyLoRALinear` and check that the merged layer
       gives the same outputs as the unmerged one.
    '''),
    solution("Solution 1", r'''
    ```python
    class MyLoRALinearDropout(MyLoRALinear):
        def __init__(self, base, r, alpha, dropout):
            super().__init__(base, r, alpha)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling

    lib_d = LoRALinear(copy.deepcopy(base), r=8, alpha=16, dropout=0.1)
    mine_d = MyLoRALinearDropout(copy.deepcopy(base), r=8, alpha=16, dropout=0.1)
    with torch.no_grad():
        lib_d.lora_B.normal_(0, 0.02)
        mine_d.A.copy_(lib_d.lora_A), mine_d.B.copy_(lib_d.lora_B)
    lib_d.eval(), mine_d.eval()
    print(torch.allclose(lib_d(x), mine_d(x), atol=1e-6))      # True: no dropout in eval mode
    mine_d.train()
    print(torch.equal(mine_d(x), mine_d(x)))                    # False: a new mask each call
    ```
    '''),
    solution("Solution 2", r'''
    ```python
    layer = LoRALinear(copy.deepcopy(base), r=8, alpha=16)
    with torch.no_grad():
        layer.lora_A.zero_()
    layer(x).pow(2).mean().backward()
    print(layer.lora_A.grad.abs().max().item(), layer.lora_B.grad.abs().max().item())  # 0.0 0.0
    ```
    $\partial L/\partial A = s B^T g x^T = 0$ because $B = 0$, and $\partial L/\partial B = s\, g (Ax)^T = 0$
    because $A = 0$. Both gradients stay zero forever (a saddle point), so the adapter never learns.
    One factor must be zero (so training starts from the base model) and the other random.
    '''),
    solution("Solution 3", r'''
    ```python
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.scaling * self.B @ self.A
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        self.base.weight -= self.scaling * self.B @ self.A
        self.merged = False

    def forward(self, x):
        if getattr(self, "merged", False):
            return self.base(x)
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scaling

    MyLoRALinear.merge, MyLoRALinear.unmerge, MyLoRALinear.forward = merge, unmerge, forward
    before = mine(x)
    mine.merge()
    print((mine(x) - before).abs().max().item())   # about 1e-7
    mine.unmerge()
    ```
    '''),
    code(ELAPSED),
]


# ---------------------------------------------------------------------------------------------
# 03: fine-tune the GPT with LoRA
# ---------------------------------------------------------------------------------------------

NB03 = [
    md(r'''
    # 3. Fine-tune a GPT with LoRA, and compare with full fine-tuning

    The tiny GPT was pretrained on Python **code** (the standard library's sources). We fine-tune
    it on English **prose** (the Python docs) in two ways on the same budget: LoRA, and full
    fine-tuning of every weight. Then we count what each costs and work with adapter files.

    **What you will learn**

    - how to apply LoRA to chosen layers of a model with `minilora.apply_lora`, and train it with an
      ordinary training loop (`nanogpt.train.train` knows nothing about LoRA);
    - what fine-tuning changes in the model's samples;
    - learning and forgetting: loss on the new corpus (docs) and the old one (code), LoRA against
      full fine-tuning;
    - the costs: trainable parameters, training memory by part, and the size of what must be saved;
    - how to save an adapter, load it into a fresh copy of the base model, and switch between two
      adapters on one base.

    Runs in about two minutes on a 2-core CPU, plus about two minutes, once, to pretrain the base
    model when `runs/cache` does not hold it yet.
    '''),
    code(SETUP + "\nimport contextlib, copy, io, tempfile\nimport torch\n" + PLOTS),
    md(r'''
    ## The base model and the two corpora

    The base model comes from the same cache as the experiments (`runs/cache`), with the same
    settings, so if you ran `python -m experiments.full_vs_lora` first it loads instantly.
    '''),
    code(BASE_MODEL),
    code(r'''
    from nanogpt.data import load_corpus

    code_corpus = load_corpus(EXP.source, config.block_size)  # what the base model knows
    docs = load_corpus(EXP.target, config.block_size)         # what we teach it
    for c in (code_corpus, docs):
        print(f"{c.name:<12} {len(c.train):>10,} training bytes  {len(c.val):>9,} validation bytes")

    WORK = CACHE / "notebook-03" if FAST else ROOT / "runs" / "notebooks" / "03"  # files we write (git-ignored)
    WORK.mkdir(parents=True, exist_ok=True)
    '''),
    md(r'''
    ## What the base model writes

    A byte-level model continues a prompt one byte at a time. The base model has only seen code,
    so even a prose prompt turns into something code-like.
    '''),
    code(r'''
    from nanogpt.sample import sample_text

    N_NEW = 40 if FAST else 240
    PROMPT = "The "
    print(sample_text(base, PROMPT, max_new_tokens=N_NEW, temperature=0.8, seed=0))
    '''),
    md(r'''
    ## Apply LoRA

    `apply_lora` replaces each chosen `nn.Linear` by a `LoRALinear` (notebook 2), in place, and
    freezes everything else. We adapt all six linear layers of every block (as the experiments
    do) with $r = 8$, $\alpha = 16$. The output head `lm_head` is tied to the token embedding, and
    `apply_lora` refuses to adapt a shared weight.
    '''),
    code(r'''
    import minilora
    from experiments.common import ALL_BLOCK_LINEARS, DEFAULT_LR

    R, ALPHA = 8, 16
    lora_model = minilora.apply_lora(copy.deepcopy(base), ALL_BLOCK_LINEARS, r=R, alpha=ALPHA)
    summary = minilora.lora_summary(lora_model).splitlines()
    print("\n".join(summary[:8] + ["  ... (one row per adapted layer) ..."] + summary[-1:]))
    '''),
    md(r'''
    ## Fine-tune with LoRA

    The loop is `nanogpt.train.train`, the same one that pretrained the base: AdamW over the
    parameters with `requires_grad=True` (here: only the adapters), warm-up then cosine decay.
    Every few steps it measures the validation loss on both corpora, so we see learning (docs)
    and forgetting (code) as they happen. Each method trains at the experiments' default learning
    rate (`experiments.common.DEFAULT_LR`, picked by a small sweep): LoRA's is higher than full
    fine-tuning's, as is usual, because each adapter step moves the weights through a small $r$.
    '''),
    code(r'''
    from nanogpt.train import train

    STEPS = 30 if FAST else 400
    EVAL_INTERVAL, EVAL_ITERS = (10, 2) if FAST else (50, 20)
    BATCH = EXP.batch_size
    EVAL_SETS = {"docs": docs.val, "code": code_corpus.val}

    def finetune(model, lr, steps=STEPS, data=docs, eval_sets=EVAL_SETS):
        """Train `model` in place on data.train; return train()'s result plus the wall time."""
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # train() prints every evaluation; we plot them instead
            out = train(model, data.train, eval_sets, max_iters=steps, batch_size=BATCH, lr=lr,
                        warmup_iters=max(1, steps // 10), weight_decay=0.0, eval_interval=EVAL_INTERVAL,
                        eval_iters=EVAL_ITERS, progress=False)
        out["seconds"] = time.perf_counter() - t
        first, last = out["history"][0], out["history"][-1]
        print(f"{steps} steps in {out['seconds']:.0f} s; validation loss (nats/byte): " + ", ".join(
            f"{k[:-5]} {first[k]:.3f} -> {last[k]:.3f}" for k in first if k.endswith("_loss")))
        return out

    print("learning rates:", DEFAULT_LR)
    lora_run = finetune(lora_model, lr=DEFAULT_LR["lora"])
    '''),
    code(r'''
    print(sample_text(lora_model, PROMPT, max_new_tokens=N_NEW, temperature=0.8, seed=0))
    '''),
    md(r'''
    Same prompt, same random seed: the text drifts from code towards the docs' English prose. It
    is a 0.8M-parameter byte-level model after a minute of training, so expect invented words
    (and an occasional `�`, bytes that do not form valid UTF-8). Only the adapters changed; the
    base weights inside `lora_model` are untouched.

    ## Full fine-tuning on the same budget

    The reference: a fresh copy of the base with every weight trainable, the same steps and
    batches, at full fine-tuning's own learning rate.
    '''),
    code(r'''
    full_model = copy.deepcopy(base).requires_grad_(True)
    full_run = finetune(full_model, lr=DEFAULT_LR["full"])
    '''),
    code(r'''
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4))
    for run, name, style in ((full_run, "full fine-tuning", dict(color="black", linestyle="--")),
                             (lora_run, f"LoRA r={R}", dict(color="C3"))):
        steps = [h["step"] for h in run["history"]]
        ax_t.plot(steps, [h["docs_loss"] for h in run["history"]], label=name, **style)
        ax_s.plot(steps, [h["code_loss"] for h in run["history"]], label=name, **style)
    ax_t.set_title("learning: docs (the new corpus), lower is better")
    ax_s.set_title("forgetting: code (the old corpus), lower is better")
    for ax in (ax_t, ax_s):
        ax.set(xlabel="fine-tuning step", ylabel="validation loss (nats/byte)")
        ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(f"Tiny GPT fine-tuned on {EXP.target} for {STEPS} steps (batch {BATCH})")
    fig.tight_layout()
    plt.show()
    '''),
    md(r'''
    Read the two panels together. On the docs (left), both methods learn fast at first, and full
    fine-tuning, which can change every weight, ends lower. On the code (right),
    both lose some of what the base model knew; LoRA, which keeps $W_0$ frozen and changes it only
    in a few directions, typically forgets less. "LoRA learns less and forgets less" (Biderman et
    al. 2024) in one picture. The exact gap depends on the learning rates and the budget:
    exercise 2 compares the two at an equal docs loss.

    ## What each costs

    Three costs: how many parameters train, how much memory a training step holds (measured from
    the tensors themselves with `experiments.memory`), and how many bytes must be saved.
    '''),
    code(r'''
    from experiments.memory import measure_training_memory
    from nanogpt.data import get_batch
    from nanogpt.train import configure_optimizer

    x, y = get_batch(docs.train, BATCH, config.block_size, generator=torch.Generator().manual_seed(0))
    costs = {}
    for name, model, lr in (("full fine-tuning", full_model, DEFAULT_LR["full"]),
                            (f"LoRA r={R}", lora_model, DEFAULT_LR["lora"])):
        probe = copy.deepcopy(model)  # one measured training step on a copy
        memory = measure_training_memory(probe, configure_optimizer(probe, lr, 0.0), x, y, contextlib.nullcontext())
        path = WORK / ("full_model.pt" if name.startswith("full") else "lora_adapter.pt")
        if name.startswith("full"):
            torch.save(model.state_dict(), path)  # full fine-tuning must save the whole model
        else:
            minilora.save_adapter(model, path)  # LoRA saves only A, B and the config
        run = full_run if name.startswith("full") else lora_run
        costs[name] = dict(params=minilora.count_parameters(model), memory=memory, file_bytes=path.stat().st_size,
                           step_ms=1000 * sorted(run["step_times"])[len(run["step_times"]) // 2])

    MB = 2 ** 20
    print(f"{'':<18}{'trainable params':>22}{'train memory':>15}{'saved file':>13}{'median step':>13}")
    for name, c in costs.items():
        print(f"{name:<18}{c['params'].trainable:>12,} ({c['params'].percent:5.1f}%){sum(v for k, v in c['memory'].items() if k != 'analytic') / MB:>12.1f} MB"
              f"{c['file_bytes'] / 1024:>10,.0f} KB{c['step_ms']:>10.1f} ms")
    '''),
    code(r'''
    names = list(costs)
    parts = [("params", "weights", "#4C72B0"), ("grads", "gradients", "#DD8452"),
             ("optimizer", "optimizer state (AdamW)", "#C44E52"), ("activations", "activations", "#8C8C8C")]
    fig, (ax_p, ax_m, ax_f) = plt.subplots(1, 3, figsize=(13, 4.2))

    trainable = [costs[n]["params"].trainable for n in names]
    ax_p.bar(names, trainable, color="#55A868")
    for i, v in enumerate(trainable):
        ax_p.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=9)
    ax_p.set(ylabel="trainable parameters", title="parameters that train")
    ax_p.yaxis.set_major_formatter("{x:,.0f}")

    bottom = [0.0] * len(names)
    for key, label, color in parts:
        values = [costs[n]["memory"][key] / MB for n in names]
        ax_m.bar(names, values, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax_m.text(i, total, f"{total:.1f} MB", ha="center", va="bottom", fontsize=9)
    ax_m.set(ylabel="memory (MB)", title="training memory by part (one step, measured)")
    ax_m.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)

    sizes = [costs[n]["file_bytes"] / 1024 for n in names]
    ax_f.bar(names, sizes, color="#8172B3")
    for i, v in enumerate(sizes):
        ax_f.text(i, v, f"{v:,.0f} KB", ha="center", va="bottom", fontsize=9)
    ax_f.set(ylabel="file size (KB)", title="what must be saved")
    for ax in (ax_p, ax_m, ax_f):
        ax.margins(y=0.15)
    fig.tight_layout()
    plt.show()
    '''),
    md(r'''
    - **Parameters**: LoRA trains a small fraction of the model. (At $r = 8$ on a width-128 model
      that fraction is far larger than on a big model: notebook 1.)
    - **Memory**: full fine-tuning keeps a gradient and two AdamW moments for every weight, 16
      bytes per parameter in all; LoRA keeps them only for the adapters, and 4 bytes for each
      frozen weight. The **activations** (what the forward pass saves for the backward pass) are
      about the same for both: LoRA freezes weights, it does not shrink activations. In this tiny
      model they are most of the total, so LoRA's total saving is modest here; in a large model
      (billions of weights, 16 bytes each for full fine-tuning) the weight-related parts dominate
      and the saving is large.
    - **Saved file**: the adapter file holds only $A$, $B$ and the config; a fully fine-tuned
      model must be saved whole.

    ## Save the adapter, reload it into a fresh base

    The adapter file is useless on its own and small: it needs the base model it was trained on.
    Load the base checkpoint again from disk (a truly fresh copy), then `load_adapter` adds the
    LoRA layers with the file's config and fills in $A$ and $B$.
    '''),
    code(r'''
    from nanogpt.checkpoint import load_model

    adapter_path = WORK / "lora_adapter.pt"
    minilora.save_adapter(lora_model, adapter_path)
    fresh, _ = load_model(ckpt_path)                      # the base model, from its checkpoint
    minilora.load_adapter(fresh, adapter_path)
    saved_config = minilora.read_adapter_file(adapter_path)["config"]
    print(f"{adapter_path.name}: {adapter_path.stat().st_size / 1024:.0f} KB; r={saved_config['r']}, "
          f"alpha={saved_config['alpha']:g}, {len(saved_config['targets'])} adapted layers")

    idx = docs.val[: config.block_size].long()[None]      # one validation context
    fresh.eval(), lora_model.eval()
    with torch.no_grad():
        same = torch.equal(fresh(idx)[0], lora_model(idx)[0])
    print("reloaded model gives the trained model's logits, bit for bit:", same)
    '''),
    md(r'''
    ## Two adapters on one base

    One frozen base can carry several adapters and switch between them instantly: only which
    $(A, B)$ pair the forward pass uses changes. To make the switch visible, train a second
    adapter, `"shout"`, on the same docs **in capital letters**. `add_adapter` adds it inactive;
    `set_adapter` makes it the active (and the only trainable) one.
    '''),
    code(r'''
    upper_path = WORK / "docs_upper.txt"
    upper_path.write_text(docs.train.numpy().tobytes().decode("utf-8", errors="ignore").upper(), encoding="utf-8")
    shout_corpus = load_corpus(str(upper_path), config.block_size)

    minilora.add_adapter(fresh, "shout", ALL_BLOCK_LINEARS, r=R, alpha=ALPHA)
    minilora.set_adapter(fresh, "shout")
    print("adapters:", minilora.adapter_names(fresh), "| active:", minilora.active_adapter(fresh),
          "| trainable:", f"{minilora.count_parameters(fresh).trainable:,}")
    shout_run = finetune(fresh, lr=DEFAULT_LR["lora"], steps=20 if FAST else 200, data=shout_corpus,
                         eval_sets={"docs": docs.val, "DOCS": shout_corpus.val})
    '''),
    code(r'''
    for name in ("default", "shout"):
        minilora.set_adapter(fresh, name)
        print(f"--- adapter {name!r} ---")
        print(sample_text(fresh, PROMPT, max_new_tokens=N_NEW, temperature=0.8, seed=0), "\n")
    with minilora.disable_lora(fresh):  # inside: the base model alone
        print("--- no adapter (the base model) ---")
        print(sample_text(fresh, PROMPT, max_new_tokens=N_NEW, temperature=0.8, seed=0))
    '''),
    code(r'''
    from nanogpt.data import fixed_batches
    from nanogpt.train import evaluate

    eval_batches = {name: fixed_batches(c.val, EVAL_ITERS, BATCH, config.block_size)
                    for name, c in (("docs", docs), ("DOCS (upper case)", shout_corpus), ("code", code_corpus))}
    losses = {}
    for name in ("base model", "default", "shout"):
        if name == "base model":
            with minilora.disable_lora(fresh):
                losses[name] = [evaluate(fresh, b, "cpu") for b in eval_batches.values()]
        else:
            minilora.set_adapter(fresh, name)
            losses[name] = [evaluate(fresh, b, "cpu") for b in eval_batches.values()]

    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.27
    for i, (name, values) in enumerate(losses.items()):
        xs = [j + (i - 1) * width for j in range(len(values))]
        ax.bar(xs, values, width, label=f"adapter: {name}" if name != "base model" else name)
        for x_, v in zip(xs, values):
            ax.text(x_, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(eval_batches)), list(eval_batches))
    ax.set(ylabel="validation loss (nats/byte)", title="One base model, three behaviours: each is best on its own text")
    ax.margins(y=0.15), ax.legend(fontsize=8)
    plt.show()
    '''),
    md(r'''
    Each adapter is best on the text it was trained on (and the base model on the code), and
    switching is instant: no weights are copied or reloaded. Switching back gives exactly the outputs of before:
    '''),
    code(r'''
    minilora.set_adapter(fresh, "default")
    with torch.no_grad():
        print("back on 'default', same logits as the original LoRA model:", torch.equal(fresh(idx)[0], lora_model(idx)[0]))
    minilora.save_adapter(fresh, WORK / "shout_adapter.pt", adapter_name="shout")  # any adapter, by name
    print("saved adapters:", ", ".join(f"{p.name} ({p.stat().st_size / 1024:.0f} KB)" for p in sorted(WORK.glob("*_adapter.pt"))))
    '''),
    md(r'''
    ## Summary

    - `apply_lora(model, targets, r, alpha)` turns any PyTorch model into one whose only trainable
      parameters are adapters; an ordinary training loop then fine-tunes it.
    - On the same budget, full fine-tuning usually learns the new corpus a bit better and forgets
      the old one more; LoRA trains a fraction of the parameters.
    - LoRA saves gradient and optimizer memory, not activation memory; its saved file is tiny.
    - Adapters are small files that load into a fresh base model, and several can share one base.

    ## Exercises
    1. Adapt only `q_proj` and `v_proj` (the LoRA paper's choice for GPT-3), with $r = 8$. How many
       parameters train now, and how do the final docs and code losses compare with all six layers?
    2. Is LoRA's smaller forgetting only because it learned less? Find the step at which full
       fine-tuning first reached LoRA's final docs loss, and compare the code losses at that point.
    3. Blend the two adapters: `minilora.add_weighted_adapter(fresh, ["default", "shout"], [0.5, 0.5], "mix")`,
       activate it and sample. What does half-shouting look like?
    '''),
    solution("Solution 1", r'''
    ```python
    qv_model = minilora.apply_lora(copy.deepcopy(base), ["q_proj", "v_proj"], r=8, alpha=16)
    print(minilora.count_parameters(qv_model))   # 2 matrices x 4 blocks x 8 x (128 + 128) = 16,384
    qv_run = finetune(qv_model, lr=DEFAULT_LR["lora"])
    ```
    A third of the adapted matrices and under a quarter of the parameters: expect a higher docs
    loss, since the MLP layers, which hold two thirds of each block's weights, are not adapted.
    Adapting every linear layer is the common choice today (QLoRA, "LoRA Without Regret").
    '''),
    solution("Solution 2", r'''
    ```python
    goal = lora_run["history"][-1]["docs_loss"]
    h = next((h for h in full_run["history"] if h["docs_loss"] <= goal), None)
    if h is None:
        print("full fine-tuning never reached LoRA's final docs loss")
    else:
        print(f"full FT reaches docs {h['docs_loss']:.3f} at step {h['step']}, code loss {h['code_loss']:.3f}; "
              f"LoRA ends at docs {goal:.3f}, code {lora_run['history'][-1]['code_loss']:.3f}")
    ```
    Comparing at equal learning is the fair question; the answer depends on learning rates and
    budgets, which is why the experiments sweep them.
    '''),
    solution("Solution 3", r'''
    ```python
    minilora.add_weighted_adapter(fresh, ["default", "shout"], [0.5, 0.5], "mix")
    minilora.set_adapter(fresh, "mix")
    print(sample_text(fresh, PROMPT, max_new_tokens=200, temperature=0.8, seed=0))
    ```
    The combined $\Delta W$ is exactly $0.5\,\Delta W_{\text{default}} + 0.5\,\Delta W_{\text{shout}}$
    (`add_weighted_adapter` concatenates the ranks, so $r = 16$). Mixed-case text, often switching
    case mid-word: weights combine linearly, behaviours do not have to.
    '''),
    code(FOOTER),
]


# ---------------------------------------------------------------------------------------------
# 04: rank sweep
# ---------------------------------------------------------------------------------------------

NB04 = [
    md(r'''
    # 4. A rank sweep: what $r$ changes, and what it does not

    How small can $r$ be? We fine-tune the tiny GPT (pretrained on Python code) on the Python docs
    with LoRA at several ranks, plus full fine-tuning as the reference, using the experiments'
    own code (`experiments.rank_sweep`), and read its plots.

    **What you will learn**

    - how to run a sweep with the experiments code, and where its results go;
    - what the rank changes: trainable parameters, adapter size, the adapters' memory and time,
      and (up to a point) the loss;
    - what it does not change: the frozen weights, and most of the activations;
    - where low ranks stop keeping up with higher ranks and with full fine-tuning.

    Runs in about two minutes on a 2-core CPU, plus about two minutes, once, to pretrain the base
    model when `runs/cache` does not hold it yet. Finished runs are cached in `runs/cache/runs`,
    so a second run of this notebook takes seconds.
    '''),
    code(SETUP + r'''
import contextlib, io, json, tempfile
import torch
from IPython.display import Image, Markdown, display
from experiments import rank_sweep  # imported before %matplotlib inline: its plotting module selects Agg
''' + PLOTS),
    md(r'''
    ## Run the sweep

    The same settings as `python -m experiments.rank_sweep`, shortened: ranks 1, 4, 16 and 64,
    250 fine-tuning steps each, $\alpha = 16$ at every rank (as in the LoRA paper), LoRA on all six
    linear layers of each block, and each method at the experiments' default learning rate
    (`experiments.common.DEFAULT_LR`). The command line would be:

        python -m experiments.rank_sweep --ranks 1,4,16,64 --max-iters 250 --eval-interval 50 --out runs/notebooks/04
    '''),
    code(r'''
    RANKS = [1, 4] if FAST else [1, 4, 16, 64]
    STEPS = 20 if FAST else 250
    CACHE = Path(tempfile.mkdtemp(prefix="lora-notebook-")) if FAST else ROOT / "runs" / "cache"
    OUT = CACHE / "sweep" if FAST else ROOT / "runs" / "notebooks" / "04"
    argv = ["--ranks", ",".join(map(str, RANKS)), "--max-iters", str(STEPS), "--cache", str(CACHE),
            "--out", str(OUT), "--no-progress"]
    argv += ["--pretrain-iters", "50", "--eval-interval", "10", "--eval-iters", "2"] if FAST else ["--eval-interval", "50"]

    t = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # it prints every evaluation of every run; keep only the summary
        rank_sweep.main(argv)
    print(f"sweep done in {time.perf_counter() - t:.0f} s (runs already in the cache are not redone)")
    records = json.loads((OUT / "records.json").read_text())
    full = next(r for r in records if r["method"] == "full")
    lora = [r for r in records if r["method"] == "lora"]
    print("runs:", ", ".join("full fine-tuning" if r["method"] == "full" else f"LoRA r={r['r']}" for r in records))
    '''),
    md(r'''
    ## The numbers

    One row per run. Losses are validation losses in nats per byte at the end of fine-tuning:
    **docs** is what we teach (lower = learned more), **code** is what the base model knew
    (lower = forgot less).
    '''),
    code(r'''
    MB = 2 ** 20
    def mem_total(r):
        return sum(r["memory"][k] for k in ("params", "grads", "optimizer", "activations")) / MB

    print(f"base model before fine-tuning: docs {full['base_target_loss']:.3f}, code {full['base_source_loss']:.3f}\n")
    print(f"{'run':<18}{'trainable':>12}{'% model':>9}{'docs':>8}{'code':>8}{'memory':>10}{'adapter':>11}{'step':>9}")
    for r in records:
        name = "full fine-tuning" if r["method"] == "full" else f"LoRA r={r['r']}"
        print(f"{name:<18}{r['trainable_params']:>12,}{100 * r['trainable_params'] / r['total_params']:>8.1f}%"
              f"{r['final_target_loss']:>8.3f}{r['final_source_loss']:>8.3f}{mem_total(r):>7.1f} MB"
              f"{r['saved_bytes'] / 1024:>8,.0f} KB{1000 * r['median_step_s']:>6.0f} ms")
    '''),
    md(r'''
    ## Loss against rank
    '''),
    code(r'''
    display(Image(filename=str(OUT / "final_loss_vs_rank.png"), width=900))
    '''),
    code(r'''
    best = min(lora, key=lambda r: r["final_target_loss"])
    TOL = 0.02  # nats/byte: about the noise of our evaluation (20 batches of 12 x 64 bytes)
    enough = min((r for r in lora if r["final_target_loss"] <= best["final_target_loss"] + TOL), key=lambda r: r["r"])
    lines = [f"- The best rank here is **r={best['r']}** (docs {best['final_target_loss']:.3f}); "
             f"full fine-tuning reaches {full['final_target_loss']:.3f} "
             f"({full['final_target_loss'] - best['final_target_loss']:+.3f}).",
             f"- The smallest rank within {TOL} nats/byte of the best is **r={enough['r']}**."]
    behind = [r for r in lora if r["r"] < enough["r"]]
    if behind:
        lines.append(f"- Below r={enough['r']} the rank stops keeping up: " + ", ".join(
            f"r={r['r']} ends {r['final_target_loss'] - best['final_target_loss']:+.3f}" for r in behind)
            + " nats/byte behind the best.")
    else:
        lines.append("- Every rank in this sweep keeps up with the best.")
    lines.append(f"- Forgetting (code loss) ranges from {min(r['final_source_loss'] for r in lora):.3f} to "
                 f"{max(r['final_source_loss'] for r in lora):.3f} across ranks; full fine-tuning: "
                 f"{full['final_source_loss']:.3f}; the base model: {full['base_source_loss']:.3f}.")
    display(Markdown("**Read from this run:**\n\n" + "\n".join(lines)))
    '''),
    md(r'''
    How to read it: on the left (learning), loss falls steeply from $r = 1$ to the next ranks and
    then flattens. The flat part is the LoRA hypothesis at work: beyond a modest rank, extra
    directions in $\Delta W$ add little, because the useful change is concentrated in a few
    directions (notebook 1). At $r = 1$ the adapter can change each matrix in a single direction
    only, and it shows. Full fine-tuning sets the bar that every rank is measured against.

    On the right (forgetting), every run loses some of its code skill. Ranks that learn more tend
    to forget more: the two panels move together.

    One caveat: with $\alpha$ fixed, the scale $\alpha / r$ shrinks as $r$ grows (notebook 2), so a
    large rank also takes smaller steps at the same learning rate. A flat curve at large $r$ is
    partly that effect (exercise 2 tries rsLoRA's $\alpha / \sqrt{r}$).

    ## Learning curves
    '''),
    code(r'''
    display(Image(filename=str(OUT / "loss_curves.png"), width=900))
    '''),
    md(r'''
    All LoRA runs start from the same point (the base model: $B = 0$) and spread out within the
    first hundred steps. The order of the curves is set early: a rank that cannot represent the
    change falls behind early and stays behind; more steps do not close the gap.

    ## Costs against rank
    '''),
    code(r'''
    display(Image(filename=str(OUT / "params_memory_vs_rank.png"), width=900))
    '''),
    code(r'''
    def adapter_mb(r):
        # everything the adapters add: their weights (beyond the frozen model), gradients, optimizer state
        m = r["memory"]
        return (m["params"] - full["memory"]["params"] + m["grads"] + m["optimizer"]) / MB

    lo, hi = lora[0], lora[-1]
    lines = [
        f"- Trainable parameters: {lo['trainable_params']:,} at r={lo['r']} to {hi['trainable_params']:,} at "
        f"r={hi['r']}: exactly {hi['trainable_params'] // lo['trainable_params']}x, linear in r "
        f"(full fine-tuning: {full['trainable_params']:,}).",
        f"- Adapter file: {lo['saved_bytes'] / 1024:,.0f} KB to {hi['saved_bytes'] / 1024:,.0f} KB "
        f"(full model: {full['saved_bytes'] / 1024:,.0f} KB).",
        f"- Training memory: {mem_total(lo):.1f} MB at r={lo['r']} to {mem_total(hi):.1f} MB at r={hi['r']}, against "
        f"{mem_total(full):.1f} MB for full fine-tuning. Of that, the frozen weights are {full['memory']['params'] / MB:.1f} MB "
        f"at every rank; the adapters' own weights, gradients and optimizer state are {adapter_mb(lo):.2f} MB at "
        f"r={lo['r']} and {adapter_mb(hi):.1f} MB at r={hi['r']}; the activations go from "
        f"{lo['memory']['activations'] / MB:.1f} to {hi['memory']['activations'] / MB:.1f} MB.",
        "- Median step time: " + ", ".join(f"r={r['r']} {1000 * r['median_step_s']:.0f} ms" for r in lora) + "; "
        f"full fine-tuning {1000 * full['median_step_s']:.0f} ms.",
    ]
    display(Markdown("**Read from this run:**\n\n" + "\n".join(lines)))
    '''),
    md(r'''
    The rank changes what is *proportional to the adapter*: its parameters, its gradients and
    optimizer state, its file, a little of the activations (each adapted layer keeps its
    tokens $\times\, r$ product $x A^T$ for the backward pass), and some time (two extra matrix
    products of width $r$ per layer). It does not change what is *proportional to the model*: the
    frozen weights, and the bulk of the activations.

    Scale matters here. The rank's costs grow like $r / \text{width}$. Our model is 128 wide, so
    $r = 64$ makes adapters nearly half the model's size, and they cost more memory and time than
    they save: compare the largest rank's bar with full fine-tuning's. In a 4096-wide model, $r = 64$
    is a rounding error next to the frozen weights, which is the regime LoRA was made for. (Step
    times on a shared CPU are noisy; compare their trend, not their digits.)

    Finally, the loss against what it costs:
    '''),
    code(r'''
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot([r["trainable_params"] for r in lora], [r["final_target_loss"] for r in lora], "o-", color="C3", label="LoRA")
    for r in lora:
        ax.annotate(f"r={r['r']}", (r["trainable_params"], r["final_target_loss"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=9)
    ax.plot(full["trainable_params"], full["final_target_loss"], "*", color="black", markersize=14, label="full fine-tuning")
    ax.axhline(full["base_target_loss"], color="gray", linestyle=":", label=f"base model: {full['base_target_loss']:.2f}")
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="final docs loss (nats/byte)",
           title=f"What each trainable parameter buys ({STEPS} steps)")
    ax.grid(alpha=0.3), ax.legend()
    plt.show()
    '''),
    md(r'''
    The first ranks buy the most improvement per parameter; beyond that, each 4x larger adapter
    buys less and less, and full fine-tuning spends every parameter of the model (and has more
    freedom than any rank: it also changes the embeddings, biases and layer norms) to get lower still.

    ## Summary

    - The rank sets the adapter's size (parameters, optimizer state, file) linearly, and the
      loss only up to a point: here, past a modest rank, more rank buys little.
    - The rank does not change the frozen weights or the bulk of the activations; its own costs
      grow like $r / \text{width}$, large on a tiny model and negligible on a big one.
    - Very low ranks stop keeping up: they cannot represent enough directions of the change.

    ## Exercises
    1. Add ranks 2 and 8 to the sweep (`RANKS = [1, 2, 4, 8, 16, 64]`) and run the sweep cell again:
       only the new ranks train, the others come from the cache. Where exactly does the curve bend?
    2. Fix the scale problem: run the same ranks with rsLoRA ($\alpha/\sqrt{r}$) using
       `experiments.finetune.run_finetune` with `"variant": "rslora"`. Do the high ranks gain?
    3. Spend the same parameter budget differently: LoRA on `q_proj,v_proj` only at $r = 16$
       has about as many parameters as all six layers at $r = 4$ (check it). Which learns more?
    '''),
    solution("Solution 1", r'''
    ```python
    RANKS = [1, 2, 4, 8, 16, 64]
    argv[1] = ",".join(map(str, RANKS))
    rank_sweep.main(argv)          # then re-run the cells below it
    ```
    '''),
    solution("Solution 2", r'''
    ```python
    from experiments.common import ALL_BLOCK_LINEARS, DEFAULT_LR, load_setup, make_parser, run_kwargs
    from experiments.finetune import run_finetune

    args = make_parser("rslora", str(OUT)).parse_args(argv[2:])   # the sweep's settings, minus --ranks
    base, base_key, source, target, device = load_setup(args)
    for r in RANKS:
        spec = {"method": "lora", "variant": "rslora", "r": r, "alpha": 16.0,
                "targets": ALL_BLOCK_LINEARS, "lr": DEFAULT_LR["lora"]}
        rec = run_finetune(base, base_key, spec, target, source, **run_kwargs(args, device))
        print(r, round(rec["final_target_loss"], 3))
    ```
    With $s = \alpha/\sqrt{r}$ a large rank takes larger steps than with $\alpha / r$, so the high
    ranks usually end lower; at a fixed learning rate the lowest ranks may then be the ones at a
    disadvantage. Each scaling wants its own learning rate.
    '''),
    solution("Solution 3", r'''
    Per block, all six layers cost $r\,(4 \cdot 256 + 640 + 640) = 2304\,r$, and $q, v$ only
    $2 \cdot 256\, r = 512\, r$; so $r = 4$ on all six (9,216 per block) is close to $r = 16$ on
    $q, v$ (8,192 per block; $r = 18$ would match exactly).

    ```python
    rank_sweep.main(argv[:1] + ["16"] + argv[2:] + ["--targets", "q_proj,v_proj", "--no-full",
                                                    "--out", str(OUT / "qv")])
    print(json.loads((OUT / "qv" / "records.json").read_text())[0]["final_target_loss"])
    ```
    Spreading a small rank over all the layers usually beats a large rank on a few layers, which
    is why adapting every linear layer is the common choice today.
    '''),
    code(FOOTER),
]


NOTEBOOKS = {
    "01_low_rank_intuition.ipynb": NB01,
    "02_lora_layer_from_scratch.ipynb": NB02,
    "03_finetune_gpt_with_lora.ipynb": NB03,
    "04_rank_sweep.ipynb": NB04,
}


def build(name, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": KERNEL, "language_info": {"name": "python"}}
    stem = name[:2]
    for i, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(source, id=f"nb{stem}-{i:02d}"))  # stable ids: rebuilding changes no ids
    nbformat.validate(nb)
    return nb


def execute(path, timeout=900):
    """Run a notebook top to bottom with cwd = notebooks/, write it back with its outputs, and
    return the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--execute", action="store_true", help="run the notebooks in place, saving their outputs")
    p.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    args = p.parse_args(argv)
    chosen = {n: c for n, c in NOTEBOOKS.items() if not args.only or any(n.startswith(o) for o in args.only)}
    if args.execute and os.environ.get("NOTEBOOK_FAST") == "1":
        print("note: NOTEBOOK_FAST=1 is set, so the saved outputs will be the quick mode's", file=sys.stderr)
    for name, cells in chosen.items():
        path = NB_DIR / name
        nbformat.write(build(name, cells), path)
        if args.execute:
            seconds = execute(path)
            print(f"{name}: executed in {seconds:.0f} s, {path.stat().st_size / 1024:.0f} KB")
        else:
            print(f"{name}: written ({len(cells)} cells)")


if __name__ == "__main__":
    main()
