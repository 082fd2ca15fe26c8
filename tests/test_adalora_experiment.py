"""experiments/adalora.py end to end at toy size, and the arithmetic its verdicts rest on."""
import json
import re

import numpy as np
import pytest

from experiments import adalora
from experiments.lib import rank_maps, verdicts
from experiments.lib.seeds import paired
from minilora import read_adapter_file
from tests.test_experiments import TOY, is_png


def test_adalora_experiment_end_to_end(tmp_path, corpora):
    out = tmp_path / "adalora"
    adalora.main([*TOY, *corpora, "--seeds", "2", "--no-pruning-control", "--out", str(out)])
    summary = json.loads((out / "adalora.json").read_text())
    names = [c["name"] for c in summary["contenders"]]
    assert names == ["AdaLoRA 12->8", "LoRA r=8", "LoRA r=12", "AdaLoRA 4->2", "LoRA r=2",
                     "AdaLoRA 12->12 (no pruning)"]
    tuning = [c["tuning"] for c in summary["contenders"]]
    assert {3e-3, 5.6e-3, 1e-2} <= set(tuning[1]["lrs"])  # LoRA: around --lora-lr (5.6e-3)
    assert {5.6e-3, 1e-2, 1.8e-2} <= set(tuning[0]["lrs"])  # AdaLoRA: around one grid step higher
    assert set(adalora.grid_neighbours(tuning[0]["best_lr"])) <= set(tuning[3]["lrs"])  # low budget: around it
    for t, c in zip(tuning, summary["contenders"]):
        assert t["best_lr"] == t["lrs"][int(np.argmin(t["losses"]))] == c["lr"]  # chosen on validation

    records = json.loads((out / "records.json").read_text())
    assert len(records) == 6 * 2  # the chosen rate's seeds, per contender
    assert all("final_target_test_loss" in r for r in records)  # the held-out test split is on
    ada = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 8 * 6]
    control = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 12 * 6]
    low = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 2 * 6]
    assert len(ada) == 2 and len(control) == 2 and len(low) == 2
    assert all(sum(r["adalora"]["final_ranks"].values()) == 12 * 6 for r in control)  # nothing pruned
    assert all(sum(r["adalora"]["final_ranks"].values()) == 2 * 6 and r["r"] == 4 for r in low)

    # gamma and the schedule: the validation best of the grid, at AdaLoRA's tuned rate, on the first seed
    search = summary["setting_search"]
    tried = search["tried"]
    assert search["lr"] == summary["contenders"][0]["lr"] and search["seed"] == summary["seeds"][0]
    assert {(s["gamma"], s["t_init"], s["t_final"]) for s in tried} == {(g, t0, t1) for g in (0.1, 0.5)
                                                                        for t0, t1 in ((0, 2), (0, 3))}
    assert search["chosen"] == int(np.argmin([s["final_target_loss"] for s in tried]))
    best = tried[search["chosen"]]
    last_mask = 6 - best["t_final"]  # the schedule shows in the reallocation steps: t_init + 1 .. 6 - t_final
    for r in [*ada, *low, *control]:  # every AdaLoRA run at the chosen schedule
        assert [a["step"] for a in r["adalora"]["allocations"]] == list(range(best["t_init"] + 1, last_mask + 1))
    assert ada[0]["final_target_loss"] == best["final_target_loss"]  # seed 1 is the grid's chosen run itself
    st = summary["settings"]
    assert (st["gamma"], st["t_init"], st["t_final"], st["low_r"], st["low_target_r"]) == (
        best["gamma"], best["t_init"], best["t_final"], 4, 2)

    matrices = {(32, 32): 4, (32, 128): 1, (128, 32): 1}  # one block: q, k, v, o; up; down
    for r in ada:
        info = r["adalora"]
        assert len(info["budget"]) == 6 and info["budget"][0] == 12 * 6 and info["budget"][-1] == 8 * 6
        assert sum(info["final_ranks"].values()) == 8 * 6  # exactly the budget
        sizes = {n: (32, 128) if "up_proj" in n else (128, 32) if "down_proj" in n else (32, 32)
                 for n in info["final_ranks"]}
        assert info["final_params"] == sum(k * (sum(sizes[n]) + 1) for n, k in info["final_ranks"].items())
        assert r["trainable_params"] == 12 * sum(c * (i + o + 1) for (i, o), c in matrices.items())

    allocation = summary["allocation"]
    assert np.array(allocation["final_ranks_per_seed"]).shape == (2, 1, 6)
    assert allocation["mlp_share_uniform"] == pytest.approx(1 / 3)
    assert allocation["top_half_share_minus_uniform"] is None  # one layer: no top half

    def test_losses(variant, r, target_r=None):
        return [x["final_target_test_loss"] for x in records if x["variant"] == variant and x["r"] == r
                and (target_r is None or x["adalora"]["budget"][-1] == target_r * 6)]
    same, low_budget = summary["comparisons"][:2]
    # the reported differences are the test losses', seed by seed
    assert same["difference"] == paired(test_losses("adalora", 12, 8), test_losses("lora", 8))
    assert low_budget["difference"] == paired(test_losses("adalora", 4), test_losses("lora", 2))
    assert "low budget" in low_budget["question"]
    row = summary["contenders"][4]
    assert row["final_target_test_loss"]["values"] == test_losses("lora", 2)
    claim1 = summary["claims"]["1_equal_budget_beats_uniform_lora"]
    assert (claim1["verdict"], claim1["detail"]) == adalora.claim1_verdict(same["difference"], low_budget["difference"])
    for name in ("budget.png", "final_ranks.png", "loss_curves.png"):
        assert is_png(out / name)
    text = (out / "results.md").read_text()
    assert "| AdaLoRA 12->8 |" in text and "| AdaLoRA 4->2 |" in text and "Claim 2, the budget goes" in text
    assert json.loads((out / "run_info.json").read_text())["runs_planned"] > 0
    from experiments.report import Results
    from experiments.lib.seeds import show_difference
    from experiments.lib.write_up import VERDICTS
    section = adalora.report(Results(str(tmp_path)))  # tmp_path/adalora holds the results
    assert section["verdict"] in VERDICTS
    assert show_difference(same["difference"]) in section["body"]
    assert show_difference(low_budget["difference"]) in section["body"]
    assert [c["question"] for c in section["comparisons"][:2]] == [
        "AdaLoRA beats LoRA at the same final rank", "AdaLoRA beats LoRA at the same final rank, low budget"]
    assert section["comparisons"][1] == verdicts.beats(low_budget["difference"], "loss",
                                                       "AdaLoRA beats LoRA at the same final rank, low budget")
    saved = [read_adapter_file(p) for p in sorted((tmp_path / "cache" / "runs").glob("*.adapter.pt"))]
    pruned = [s for s in saved if s["kind"] == "adalora" and s["config"]["target_r"] == 8]
    assert pruned and all(sum(s["ranks"].values()) == 48 for s in pruned)


def test_the_section_verdict_combines_both_budgets_with_claim_1_as_headline(monkeypatch):
    """The section verdict: claim 1 (both budgets through verdicts.beats, combined) heads; claim 2 follows."""
    win, lose = paired([1.50, 1.51, 1.49], [1.55, 1.56, 1.55]), paired([1.55, 1.56, 1.55], [1.50, 1.51, 1.49])
    assert adalora.claim1_verdict(win, win)[0] == "reproduced"
    assert adalora.claim1_verdict(lose, win)[0] == "partly"  # the low budget alone: partly
    assert adalora.claim1_verdict(lose, lose)[0] == "not reproduced"
    calls = []
    real = verdicts.beats
    monkeypatch.setattr(verdicts, "beats", lambda d, kind="loss", question="": calls.append(question) or real(
        d, kind, question))
    adalora.claim1_parts(win, lose)
    assert calls == ["AdaLoRA beats LoRA at the same final rank", "AdaLoRA beats LoRA at the same final rank, low budget"]


def test_the_setting_grid_and_its_choice():
    spec = {"gamma": 0.1, "t_init": 60, "t_final": 200, "r": 12}
    grid = adalora.setting_grid(spec, [0.5], 600)
    assert [(s["gamma"], s["t_init"], s["t_final"]) for s in grid] == [
        (0.1, 60, 200), (0.1, 30, 300), (0.5, 60, 200), (0.5, 30, 300)]  # the set one first, then earlier pruning
    assert all(s["r"] == 12 for s in grid)
    assert len(adalora.setting_grid(spec, [0.1], 600)) == 2  # no setting twice
    assert adalora.choose_setting(grid, [1.60, 1.58, float("nan"), 1.59]) == 1
    assert adalora.choose_setting(grid, [float("nan"), 1.62, 1.61, 1.61]) == 2  # the first of a tie


@pytest.mark.parametrize("flags, message", [
    (["--t-init", "3", "--t-final", "3"], "--t-init \\+ --t-final = 3 \\+ 3 must be less than --max-iters=6"),
    (["--target-r", "13"], "--target-r=13 must be in 1..--init-r=12"),
    (["--low-target-r", "5"], "--low-target-r=5 must be in 1..--low-init-r=4"),
    (["--gammas", "0.5,x"], "expected a finite number >= 0, got 'x'"),
    (["--beta1", "1"], "expected a number in \\[0, 1\\), got '1'"),
    (["--gamma", "-0.5"], "expected a finite number >= 0, got '-0.5'"),
    (["--gamma", "inf"], "expected a finite number >= 0, got 'inf'"),
    (["--adalora-lr", "0.02"], "--adalora-lr=0.02 is not on the tuning grid"),
])
def test_bad_flags_stop_before_any_work(tmp_path, corpora, capsys, flags, message):
    with pytest.raises(SystemExit):
        adalora.main([*TOY, *corpora, *flags, "--out", str(tmp_path / "out")])
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()  # no base model was trained


def test_shares_and_verdicts():
    grid = np.array([[4, 4, 4, 4, 10, 10], [8, 8, 8, 8, 12, 12]], dtype=float)  # 2 layers
    s = rank_maps.shares(grid)
    assert s["mlp_share"] == pytest.approx(44 / 92) and s["top_half_share"] == pytest.approx(56 / 92)
    assert rank_maps.uniform_shares(grid) == {"mlp_share": pytest.approx(1 / 3), "top_half_share": 0.5}
    above = rank_maps.share_against_uniform([0.45, 0.47, 0.46], 1 / 3)
    assert above["called"] and above["mean"] == pytest.approx(0.46 - 1 / 3)
    assert not rank_maps.share_against_uniform([0.2, 0.5, 0.35], 1 / 3)["called"]
    assert rank_maps.share_against_uniform([1.0, 1.0], 1.0) is None
    win = paired([1.50, 1.51, 1.49], [1.55, 1.56, 1.55])
    assert adalora.claim1_verdict(win, win)[0] == "reproduced"
    assert adalora.claim1_verdict(paired([1.55, 1.56, 1.55], [1.50, 1.51, 1.49]), win) == (
        "partly", "at the paper's budget: not reproduced, uniform LoRA's final docs loss is lower; "
                  "at the low budget: reproduced, AdaLoRA's final docs loss is lower")
    assert "no difference" in adalora.claim1_verdict(paired([1.50, 1.56, 1.52], [1.53, 1.51, 1.54]), win)[1]
    below = rank_maps.share_against_uniform([0.2, 0.21, 0.22], 1 / 3)
    assert adalora.claim2_verdict(above, above)[0] == "reproduced"
    assert adalora.claim2_verdict(above, None)[0] == "partly"
    assert adalora.claim2_verdict(below, below)[0] == "not reproduced"
    same = rank_maps.seed_agreement([grid, grid.copy()])
    assert same == {"mean_pairwise_correlation": pytest.approx(1.0), "fraction_same_in_every_seed": 1.0}
    assert adalora.next_grid_rate(5.6e-3) == 1e-2
