"""What trained adapters learned, measured (Hu et al. 2021, LoRA, Fig. 3/4 and Section 7.3): pure
functions of the adapters' tensors, used by experiments/subspace.py and experiments/update_spectrum.py.

  subspace similarity   phi(i, j) between the top directions of two A matrices, its chance level for
                        random subspaces, and the chance-corrected value (0 unrelated, 1 contained)
  amplification         how delta W = scaling * B A relates to W0: ||U^T W0 V^T||_F along delta W's
                        directions against W0's own top directions and random ones
"""
import math

import torch

from minilora.adapter_file import read_adapter_file


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


def load_adapter_tensors(path):
    """{module name: (A (r, in), B (out, r))} and the adapter's config, from an adapter file."""
    obj = read_adapter_file(path)
    tensors = obj["tensors"]
    return {m: (tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"]) for m in obj["config"]["targets"]}, obj["config"]
