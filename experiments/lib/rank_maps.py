"""Where AdaLoRA put its rank: the final ranks as a map over layers x matrix types, the share of
the kept triplets that went to the MLP matrices and to the top half of the layers (each against
what a uniform allocation gives), and how alike the seeds' maps are. Used by experiments/adalora.py."""
import itertools
import re
import statistics

import numpy as np

from experiments.lib.seeds import spread

MATRIX_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
MLP_TYPES = ("up_proj", "down_proj")


def layer_and_type(name):
    """'blocks.3.mlp.up_proj' -> (3, 'up_proj')."""
    match = re.fullmatch(r"blocks\.(\d+)\..*\.(\w+)", name)
    if match is None or match.group(2) not in MATRIX_TYPES:
        raise ValueError(f"cannot place {name!r} in the layers x matrix-types grid")
    return int(match.group(1)), match.group(2)


def rank_grid(final_ranks, n_layer):
    """{layer name: rank} -> (n_layer, 6) array, rows = layers, columns = MATRIX_TYPES; NaN = not adapted."""
    grid = np.full((n_layer, len(MATRIX_TYPES)), np.nan)
    for name, rank in final_ranks.items():
        layer, kind = layer_and_type(name)
        grid[layer, MATRIX_TYPES.index(kind)] = rank
    return grid


def shares(grid):
    """Where the kept triplets went: the MLP's share, and the top half of the layers' share."""
    total = np.nansum(grid)
    mlp = np.nansum(grid[:, [MATRIX_TYPES.index(t) for t in MLP_TYPES]])
    top = np.nansum(grid[(grid.shape[0] + 1) // 2:])  # with an odd layer count the middle one counts as bottom
    return {"mlp_share": float(mlp / total), "top_half_share": float(top / total)}


def uniform_shares(grid):
    """The same shares if every adapted matrix kept the same rank."""
    return shares(np.where(np.isnan(grid), np.nan, 1.0))


def seed_agreement(grids):
    """How alike the seeds' rank maps are: the mean correlation over pairs of seeds (None when a
    map is constant), and the fraction of matrices whose rank is the same in every seed."""
    flat = [g[~np.isnan(g)] for g in grids]
    correlations = [float(np.corrcoef(a, b)[0, 1]) for a, b in itertools.combinations(flat, 2)
                    if a.std() > 0 and b.std() > 0]
    same = np.all([f == flat[0] for f in flat], axis=0)
    return {"mean_pairwise_correlation": statistics.fmean(correlations) if correlations else None,
            "fraction_same_in_every_seed": float(same.mean())}


def share_against_uniform(values, uniform):
    """The seeds' shares minus the uniform share: a spread whose 95% interval says the side
    ("called": it excludes zero). None when the share cannot differ from uniform (one layer)."""
    if uniform in (0.0, 1.0):
        return None
    d = spread([v - uniform for v in values])
    d["called"] = bool(d["n"] > 1 and abs(d["mean"]) > d["ci"])
    return d
