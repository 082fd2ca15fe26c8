"""Experiment 3, what the rank buys: subspace similarity and amplification, checked against what
they must give by construction, and the experiment end to end at toy size."""
import json

import pytest
import torch

from experiments import subspace
from experiments.subspace import (amplification, delta_weight, random_similarity, right_singular_basis,
                                  subspace_similarity)
from tests.test_experiments import TOY, is_png


def test_right_singular_basis_is_orthonormal_and_spans_the_rows():
    A = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    U = right_singular_basis(A)
    assert U.shape == (20, 5) and U.dtype == torch.float64
    torch.testing.assert_close(U.T @ U, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(A.double() @ U @ U.T, A.double())  # projecting A's rows onto U changes nothing
    # Ordered by singular value: the first column carries the most of A.
    gains = (A.double() @ U).norm(dim=0)
    assert torch.all(gains[:-1] >= gains[1:])


def test_similarity_is_one_for_the_same_row_space_and_zero_for_orthogonal_ones():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 32, generator=g)
    phi = subspace_similarity(A, A)
    assert phi.shape == (6, 6)
    torch.testing.assert_close(phi, torch.ones(6, 6, dtype=torch.float64))  # the top-i lie in the top-j
    M = torch.randn(6, 6, generator=g) + 3 * torch.eye(6)  # invertible: mixes rows, keeps the row space
    assert subspace_similarity(A, M @ A)[-1, -1].item() == pytest.approx(1.0, abs=1e-10)
    assert subspace_similarity(A, 7.0 * A)[-1, -1].item() == pytest.approx(1.0, abs=1e-10)
    # Rows in disjoint coordinates: orthogonal subspaces.
    A1, A2 = torch.zeros(3, 32), torch.zeros(4, 32)
    A1[:, :3] = torch.randn(3, 3, generator=g)
    A2[:, 10:14] = torch.randn(4, 4, generator=g)
    assert subspace_similarity(A1, A2).abs().max().item() < 1e-12


def test_similarity_matches_the_definition_term_by_term():
    g = torch.Generator().manual_seed(2)
    A1, A2 = torch.randn(4, 16, generator=g), torch.randn(7, 16, generator=g)
    U1, U2 = right_singular_basis(A1), right_singular_basis(A2)
    phi = subspace_similarity(A1, A2)
    for i in range(1, 5):
        for j in range(1, 8):
            expected = torch.linalg.matrix_norm(U1[:, :i].T @ U2[:, :j]) ** 2 / min(i, j)
            assert phi[i - 1, j - 1].item() == pytest.approx(expected.item(), abs=1e-12)
    assert phi.min() >= 0 and phi.max() <= 1 + 1e-12


def test_similarity_of_random_subspaces_is_max_i_j_over_d_in_expectation():
    d, r1, r2, draws = 64, 4, 16, 200
    g = torch.Generator().manual_seed(3)
    phis = torch.stack([subspace_similarity(torch.randn(r1, d, generator=g), torch.randn(r2, d, generator=g))
                        for _ in range(draws)])  # (draws, r1, r2)
    expected = random_similarity(r1, r2, d)
    assert expected[0, r2 - 1].item() == r2 / d and expected[r1 - 1, 0].item() == r1 / d  # j/d for i <= j
    mean, stderr = phis.mean(0), phis.std(0) / draws ** 0.5
    assert torch.all((mean - expected).abs() < 4 * stderr + 1e-3), (mean - expected).abs().max()
    # Sharp enough to tell max(i, j)/d from a wrong closed form, e.g. min(i, j)/d: 0.25 vs 0.016 at (1, 16).
    assert stderr.max() < 0.01 and abs(mean[0, r2 - 1].item() - 1 / d) > 0.1


def test_amplification_along_w0s_own_top_directions():
    g = torch.Generator().manual_seed(4)
    w0 = torch.randn(12, 10, generator=g, dtype=torch.float64)
    U0, S0, Vh0 = torch.linalg.svd(w0, full_matrices=False)
    r = 3
    delta = U0[:, :r] @ torch.diag(torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)) @ Vh0[:r]  # (12, 10)
    a = amplification(delta, w0, r)
    assert abs(a["projection_delta_w"] - a["projection_w0_top"]) < 1e-10
    assert abs(a["projection_w0_top"] - S0[:r].pow(2).sum().sqrt().item()) < 1e-10
    hand = (0.5 ** 2 + 0.2 ** 2 + 0.1 ** 2) ** 0.5 / S0[:r].pow(2).sum().sqrt().item()
    assert a["amplification"] == pytest.approx(hand, rel=1e-10)
    assert a["delta_w_norm"] == pytest.approx((0.5 ** 2 + 0.2 ** 2 + 0.1 ** 2) ** 0.5, rel=1e-12)
    assert a["w0_norm"] == pytest.approx(torch.linalg.matrix_norm(w0).item(), rel=1e-12)
    assert a["projection_random"] < a["projection_w0_top"]  # W0's top directions are its largest projection
    # Along W0's weakest directions instead: the projection is the smallest singular values.
    weak = U0[:, -r:] @ Vh0[-r:]
    assert amplification(weak, w0, r)["projection_delta_w"] == pytest.approx(S0[-r:].pow(2).sum().sqrt().item())


def test_delta_weight_scaling():
    A, B = torch.randn(4, 6), torch.randn(5, 4)
    torch.testing.assert_close(delta_weight(A, B, {"alpha": 8}), 2.0 * (B.double() @ A.double()))
    torch.testing.assert_close(delta_weight(A, B, {"alpha": 8, "rslora": True}), 4.0 * (B.double() @ A.double()))


def test_subspace_end_to_end(tmp_path, corpora):
    out = tmp_path / "subspace"
    subspace.main([*TOY, *corpora, "--ranks", "1,2", "--seeds", "2", "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    assert [(r["r"], r["seed"]) for r in records] == [(1, 1337), (2, 1337), (1, 1338)]
    result = json.loads((out / "subspace.json").read_text())
    assert len(result["modules"]) == 6  # one block, six linears
    q = result["modules"]["blocks.0.attn.q_proj"]
    assert 0 <= q["similarity_ranks"]["phi_1_1"] <= 1
    assert q["similarity_ranks"]["phi_1_1_random"] == pytest.approx(1 / 32)
    assert set(q["amplification"]) == {"1", "2", "2_top1"} and q["amplification"]["2_top1"]["r"] == 1
    assert set(result["by_layer_type"]["amplification"]["1"]) == set(subspace.LAYER_TYPES)
    for name in ("similarity_heatmaps.png", "amplification.png"):
        assert is_png(out / name)
    assert "| q_proj |" in (out / "results.md").read_text()
