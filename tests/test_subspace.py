"""Experiment: what the rank buys. Subspace similarity, its chance correction, the independent-seed
pairing and amplification, checked against what they must give by construction; the shared-init
bug the pairing avoids; and the experiment end to end at toy size, report included."""
import json
import math

import pytest
import torch

from experiments import subspace
from experiments.lib import subspace_report
from experiments.report import Results
from experiments.lib.subspace_math import (amplification, chance_corrected, cross_seed_pairs, delta_weight,
                                           direction_overlaps, random_projection_norm, random_similarity,
                                           right_singular_basis, similarity_numbers, subspace_similarity)
from experiments.lib.write_up import VERDICTS
from experiments.subspace import initial_A
from nanogpt import GPT, GPTConfig
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
    # The per-direction overlaps are the pieces phi sums: row a, first j columns = A1's a-th
    # direction inside A2's top j; all r2 columns of a row sum to at most 1 (a unit vector).
    overlap = direction_overlaps(A1, A2)
    assert phi[2, 5].item() == pytest.approx(overlap[:3, :6].sum().item() / 3, abs=1e-12)
    assert torch.all(overlap.sum(1) <= 1 + 1e-12)


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


def test_chance_correction_maps_chance_to_zero_and_containment_to_one():
    assert chance_corrected(1 / 128, 1 / 128) == 0
    assert chance_corrected(1.0, 1 / 128) == 1
    assert chance_corrected(0.5, 0.5) == 0 and chance_corrected(0.0, 0.25) == pytest.approx(-1 / 3)
    # On random subspaces every corrected number averages to 0 (within sampling error).
    d, draws = 48, 300
    g = torch.Generator().manual_seed(5)
    numbers = [similarity_numbers(torch.randn(4, d, generator=g), torch.randn(12, d, generator=g), 4)
               for _ in range(draws)]
    for key in ("top", "rest", "span"):
        values = torch.tensor([n[f"{key}_corrected"] for n in numbers])
        assert abs(values.mean().item()) < 4 * values.std().item() / draws ** 0.5 + 1e-3, key
    assert numbers[0]["top_chance"] == 1 / d and numbers[0]["rest_chance"] == 4 / d
    assert numbers[0]["span_chance"] == 12 / d


def test_similarity_numbers_of_contained_subspaces_are_one():
    g = torch.Generator().manual_seed(6)
    A = torch.randn(8, 40, generator=g)
    same = similarity_numbers(A, A, 8)
    for key in ("top", "rest", "span"):
        assert same[key] == pytest.approx(1.0, abs=1e-10) and same[f"{key}_corrected"] == pytest.approx(1.0, abs=1e-10)
    # A inside a bigger A2 (A's rows first, then others): all of A's top k lie in A2 (span = 1),
    # which is what a shared initialisation does before training.
    A2 = torch.cat([A[:3], torch.randn(9, 40, generator=g)])
    assert similarity_numbers(A[:3], A2, 3)["span"] == pytest.approx(1.0, abs=1e-10)


def test_cross_seed_pairs_never_pair_a_run_with_its_own_seed():
    for seeds in ([1, 2], [1337, 1338, 1339], [5, 6, 7, 8, 9]):
        pairs = cross_seed_pairs(seeds)
        assert len(pairs) == len(seeds)
        assert all(a != b for a, b in pairs)
        # Each seed is the first of one pair and the second of one pair: across two groups of runs
        # (two ranks) every run is used once, so the pairs share no run.
        assert sorted(a for a, _ in pairs) == sorted(seeds) == sorted(b for _, b in pairs)
    assert cross_seed_pairs([1337, 1338, 1339]) == [(1337, 1338), (1338, 1339), (1339, 1337)]
    with pytest.raises(ValueError, match="at least 2 seeds"):
        cross_seed_pairs([1337])


def test_one_seed_gives_two_ranks_the_same_first_rows_of_A_in_the_first_module():
    """The bug the pairing avoids: A is drawn module after module from one random stream, so with
    one seed the first module's A at r=8 is the first 8 rows of its A at r=64; later modules differ."""
    base = GPT(GPTConfig(block_size=16, vocab_size=256, n_layer=2, n_head=2, n_embd=32))

    def spec(r):
        return {"method": "lora", "variant": "lora", "r": r, "alpha": 16, "targets": ["q_proj", "v_proj"], "lr": 1e-3}
    low, high, other = initial_A(base, spec(2), 1337), initial_A(base, spec(8), 1337), initial_A(base, spec(8), 1338)
    modules = list(low)
    assert modules[0] == "blocks.0.attn.q_proj"
    assert torch.equal(low[modules[0]], high[modules[0]][:2])
    assert not any(torch.equal(low[m], high[m][:2]) for m in modules[1:])
    assert not torch.equal(low[modules[0]], other[modules[0]][:2])  # another seed: another start
    assert similarity_numbers(low[modules[0]], high[modules[0]], 2)["span"] == pytest.approx(1.0, abs=1e-10)


def test_random_projection_norm_is_the_root_mean_square_over_random_subspaces():
    g = torch.Generator().manual_seed(7)
    w0 = torch.randn(12, 20, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 20, dtype=torch.float64)
    r, draws = 3, 4000

    def orthonormal(n):
        return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    squares = torch.tensor([torch.linalg.matrix_norm(orthonormal(12).T @ w0 @ orthonormal(20)).item() ** 2
                            for _ in range(draws)])
    expected = random_projection_norm(w0, r) ** 2
    assert abs(squares.mean().item() - expected) < 4 * squares.std().item() / draws ** 0.5
    assert expected == pytest.approx(torch.linalg.matrix_norm(w0).item() ** 2 * r * r / (12 * 20), rel=1e-12)


def test_amplification_along_w0s_own_top_directions():
    g = torch.Generator().manual_seed(4)
    w0 = torch.randn(12, 10, generator=g, dtype=torch.float64)
    U0, S0, Vh0 = torch.linalg.svd(w0, full_matrices=False)
    r = 3
    delta = U0[:, :r] @ torch.diag(torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64)) @ Vh0[:r]  # (12, 10)
    a = amplification(delta, w0, r)
    assert abs(a["projection_delta_w"] - a["projection_w0_top"]) < 1e-10
    assert a["of_w0_top"] == pytest.approx(1.0, abs=1e-10)
    assert abs(a["projection_w0_top"] - S0[:r].pow(2).sum().sqrt().item()) < 1e-10
    hand = (0.5 ** 2 + 0.2 ** 2 + 0.1 ** 2) ** 0.5 / S0[:r].pow(2).sum().sqrt().item()
    assert a["amplification"] == pytest.approx(hand, rel=1e-10)
    assert a["delta_w_norm"] == pytest.approx((0.5 ** 2 + 0.2 ** 2 + 0.1 ** 2) ** 0.5, rel=1e-12)
    assert a["w0_norm"] == pytest.approx(torch.linalg.matrix_norm(w0).item(), rel=1e-12)
    assert a["projection_random"] < a["projection_w0_top"]  # W0's top directions are its largest projection
    assert a["over_random"] == pytest.approx(a["projection_delta_w"] / a["projection_random"], rel=1e-12)
    # Along W0's weakest directions instead: the projection is the smallest singular values.
    weak = U0[:, -r:] @ Vh0[-r:]
    assert amplification(weak, w0, r)["projection_delta_w"] == pytest.approx(S0[-r:].pow(2).sum().sqrt().item())


def test_delta_weight_scaling():
    A, B = torch.randn(4, 6), torch.randn(5, 4)
    torch.testing.assert_close(delta_weight(A, B, {"alpha": 8}), 2.0 * (B.double() @ A.double()))
    torch.testing.assert_close(delta_weight(A, B, {"alpha": 8, "rslora": True}), 4.0 * (B.double() @ A.double()))


def test_judge_averages_over_modules_per_unit_and_applies_the_shared_rules():
    """Hand-made: two modules, three pairs (similarity) and three seeds (amplification)."""
    def module(top, rest, over_random, of_top, factor):
        return {"ranks": {"top_corrected": {"values": top}, "rest_corrected": {"values": rest}},
                "amplification": {"8": {"over_random": {"values": over_random}, "of_w0_top": {"values": of_top},
                                        "amplification": {"values": factor}}}}
    analysis = {"modules": {
        "a": module([0.7, 0.6, 0.65], [0.02, 0.0, 0.04], [4.0, 4.0, 4.0], [0.1, 0.1, 0.1], [21.5, 20.0, 23.0]),
        "b": module([0.5, 0.6, 0.55], [0.0, 0.02, -0.02], [2.5, 2.5, 2.5], [0.2, 0.2, 0.2], [21.5, 23.0, 20.0])}}
    similarity, amplification = subspace_report.judge(analysis, [8, 64])
    top, rest = similarity
    assert top["rule"] == "beats" and top["kind"] == "similarity" and top["n"] == 3
    assert top["mean"] == pytest.approx(0.6) and top["outcome"] == "reproduced"  # pairs 0.6, 0.6, 0.6
    assert rest["rule"] == "matches" and rest["mean"] == pytest.approx(0.01) and rest["outcome"] == "reproduced"
    above, below, size = amplification
    # log10 averaged over the modules, per seed: (log10 4 + log10 2.5) / 2 = log10(sqrt(10)) = 0.5.
    assert above["mean"] == pytest.approx(0.5) and above["outcome"] == "reproduced"
    assert below["mean"] == pytest.approx(-(math.log10(0.1) + math.log10(0.2)) / 2) and below["outcome"] == "reproduced"
    assert size["rule"] == "matches" and size["outcome"] == "reproduced"  # about the paper's 21.5, per seed
    assert [c["question"] for c in similarity + amplification] == [
        "top direction shared beyond chance", "directions 2-8 at chance", "W0 along delta W above random",
        "W0 along delta W short of W0's top", "factor at r=8 about the paper's 21.5"]
    # Directions 2-8 well inside the other's top 8 (0.35 beyond chance) are no match to chance; a
    # factor of 5 is not about 21.5 (log10 of 5 / 21.5 = -0.63).
    analysis["modules"]["a"]["ranks"]["rest_corrected"]["values"] = [0.7, 0.68, 0.72]
    for m in analysis["modules"].values():
        m["amplification"]["8"]["amplification"]["values"] = [5.0, 5.2, 4.8]
    similarity, amplification = subspace_report.judge(analysis, [8, 64])
    assert similarity[1]["why"] == "differs by more than 0.1" and amplification[2]["why"] == "differs by more than 0.3"


def test_subspace_end_to_end(tmp_path, corpora):
    out = tmp_path / "results" / "subspace"
    subspace.main([*TOY, *corpora, "--ranks", "2,4", "--seeds", "3", "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    # Two target sets (q, v as the paper; all six), two ranks, three seeds.
    assert [(len(r["targets"]), r["r"], r["seed"]) for r in records] == [
        (t, r, s) for t in (2, 6) for r in (2, 4) for s in (1337, 1338, 1339)]
    assert all("adapter_path" not in r for r in records)  # no machine-specific paths in the results
    result = json.loads((out / "subspace.json").read_text())
    assert result["pairs"] == [[1337, 1338], [1338, 1339], [1339, 1337]]
    paper, six = result["sets"]["q_proj, v_proj"], result["sets"]["q_proj, k_proj, v_proj, o_proj, up_proj, down_proj"]
    assert list(paper["modules"]) == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj"] and len(six["modules"]) == 6
    q = paper["modules"]["blocks.0.attn.q_proj"]
    assert q["ranks"]["pairs"] == result["pairs"] and q["ranks_same_seed"]["pairs"] == [[s, s] for s in result["seeds"]]
    assert q["ranks"]["top"]["n"] == 3 and 0 <= q["ranks"]["top"]["mean"] <= 1
    # One rate, nothing chosen: the losses reported are on the test half the runs held out.
    assert result["scored_on"] == "test"
    assert paper["final_target_loss"]["4"]["values"] == [r["final_target_test_loss"] for r in records[3:6]]
    assert q["ranks"]["top_chance"] == pytest.approx(1 / 32)
    # The control shows the bug in the first module only: before training, the same seed puts
    # all of r=2's A inside r=4's there.
    assert q["at_init_same_seed"]["span"]["min"] == pytest.approx(1.0, abs=1e-9)
    assert paper["modules"]["blocks.0.attn.v_proj"]["at_init_same_seed"]["span"]["max"] < 0.99
    assert q["amplification"]["2"]["amplification"]["n"] == 3 and q["amplification"]["4_top2"]["r"] == 2
    assert set(paper["claims"]) >= {"top_above_half", "rest_near_chance", "more_than_random", "factor_low_range"}
    assert list(result["heatmaps"]) == ["q_proj, v_proj"]  # the plotted set
    assert len(result["heatmaps"]["q_proj, v_proj"]["blocks.0.attn.q_proj"]) == 2  # r_low rows
    for name in ("similarity_heatmaps.png", "similarity_per_module.png", "amplification.png"):
        assert is_png(out / name)
    assert "| blocks.0.attn.q_proj |" in (out / "results.md").read_text()
    assert json.loads((out / "run_info.json").read_text())["runs_planned"] == 12

    section = subspace.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in VERDICTS
    parts = section["comparisons"]  # two for the similarity, three for the amplification, on the paper's set
    assert [p["rule"] for p in parts] == ["beats", "matches", "beats", "beats", "matches"]
    assert all(p["n"] == 3 for p in parts)
    assert "![subspace similarity per module](../results/subspace/similarity_per_module.png)" in section["body"]
    assert section["body"].count("| blocks.0.attn.q_proj |") == 2  # one table per target set
    assert "nan" not in section["body"] and "nan" not in section["detail"]


def test_bad_ranks_and_seeds_are_clear_errors(tmp_path, corpora, capsys):
    for flags, message in ((["--ranks", "8"], "--ranks needs a low and a high rank"),
                           (["--ranks", "64,8"], "--ranks needs a low and a high rank"),
                           (["--seeds", "1"], "--seeds must be at least 2"),
                           (["--ranks", "1,8"], "the low rank must be at least 2, got 1"),
                           (["--paper-targets", "q_proj,w_proj"], "a planned run cannot be made"),
                           (["--ranks", "8,64"], "r=64")):  # r=64 does not fit the toy model's 32 dimensions
        with pytest.raises(SystemExit):
            subspace.main([*TOY, *corpora, *flags, "--out", str(tmp_path / "x")])
        assert message in capsys.readouterr().err
