"""experiments/adalora.py end to end at toy size, and the arithmetic its verdicts rest on."""
import json
import re

import numpy as np
import pytest

from experiments import adalora
from experiments.lib import rank_maps
from experiments.lib.seeds import paired
from minilora import read_adapter_file
from tests.test_experiments import TOY, is_png


def test_adalora_experiment_end_to_end(tmp_path, corpora):
    out = tmp_path / "adalora"
    adalora.main([*TOY, *corpora, "--seeds", "2", "--no-pruning-control", "--out", str(out)])
    summary = json.loads((out / "adalora.json").read_text())
    names = [c["name"] for c in summary["contenders"]]
    assert names == ["AdaLoRA 12->8", "LoRA r=8", "LoRA r=12", "AdaLoRA 12->12 (no pruning)"]
    tuning = [c["tuning"] for c in summary["contenders"]]
    assert {3e-3, 5.6e-3, 1e-2} <= set(tuning[1]["lrs"])  # LoRA: around --lora-lr (5.6e-3)
    assert {5.6e-3, 1e-2, 1.8e-2} <= set(tuning[0]["lrs"])  # AdaLoRA: around one grid step higher
    for t, c in zip(tuning, summary["contenders"]):
        assert t["best_lr"] == t["lrs"][int(np.argmin(t["losses"]))] == c["lr"]

    records = json.loads((out / "records.json").read_text())
    assert len(records) == 4 * 2  # the chosen rate's seeds, per contender
    ada = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 8 * 6]
    control = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 12 * 6]
    assert len(ada) == 2 and len(control) == 2
    assert all(sum(r["adalora"]["final_ranks"].values()) == 12 * 6 for r in control)  # nothing pruned
    matrices = {(32, 32): 4, (32, 128): 1, (128, 32): 1}  # one block: q, k, v, o; up; down
    for r in ada:
        info = r["adalora"]
        assert len(info["budget"]) == 6 and info["budget"][0] == 12 * 6 and info["budget"][-1] == 8 * 6
        assert [a["step"] for a in info["allocations"]] == [1, 2, 3, 4]  # t_init 0, delta_t 1, final at 6 - 2
        assert sum(info["final_ranks"].values()) == 8 * 6  # exactly the budget
        sizes = {n: (32, 128) if "up_proj" in n else (128, 32) if "down_proj" in n else (32, 32)
                 for n in info["final_ranks"]}
        assert info["final_params"] == sum(k * (sum(sizes[n]) + 1) for n, k in info["final_ranks"].items())
        assert r["trainable_params"] == 12 * sum(c * (i + o + 1) for (i, o), c in matrices.items())

    allocation = summary["allocation"]
    assert np.array(allocation["final_ranks_per_seed"]).shape == (2, 1, 6)
    assert allocation["mlp_share_uniform"] == pytest.approx(1 / 3)
    assert allocation["top_half_share_minus_uniform"] is None  # one layer: no top half
    first = summary["comparisons"][0]
    assert first["difference"] == paired([r["final_target_loss"] for r in ada],
                                         [r["final_target_loss"] for r in records if r["variant"] == "lora"
                                          and r["r"] == 8])
    claim1 = summary["claims"]["1_equal_budget_beats_uniform_lora"]
    assert (claim1["verdict"], claim1["detail"]) == adalora.claim1_verdict(first["difference"])
    for name in ("budget.png", "final_ranks.png", "loss_curves.png"):
        assert is_png(out / name)
    text = (out / "results.md").read_text()
    assert "| AdaLoRA 12->8 |" in text and "Claim 2, the budget goes" in text
    assert json.loads((out / "run_info.json").read_text())["runs_planned"] > 0
    from experiments.report import Results
    from experiments.lib.seeds import show_difference
    from experiments.lib.write_up import VERDICTS
    section = adalora.report(Results(str(tmp_path)))  # tmp_path/adalora holds the results
    assert section["verdict"] in VERDICTS and show_difference(first["difference"]) in section["body"]
    saved = [read_adapter_file(p) for p in sorted((tmp_path / "cache" / "runs").glob("*.adapter.pt"))]
    pruned = [s for s in saved if s["kind"] == "adalora" and s["config"]["target_r"] == 8]
    assert pruned and all(sum(s["ranks"].values()) == 48 for s in pruned)


@pytest.mark.parametrize("flags, message", [
    (["--t-init", "3", "--t-final", "3"], "--t-init \\+ --t-final = 3 \\+ 3 must be less than --max-iters=6"),
    (["--target-r", "13"], "--target-r=13 must be in 1..--init-r=12"),
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
    assert adalora.claim1_verdict(paired([1.50, 1.51, 1.49], [1.55, 1.56, 1.55]))[0] == "reproduced"
    assert adalora.claim1_verdict(paired([1.55, 1.56, 1.55], [1.50, 1.51, 1.49])) == (
        "not reproduced", "uniform LoRA's final docs loss is lower")
    assert adalora.claim1_verdict(paired([1.50, 1.56, 1.52], [1.53, 1.51, 1.54]))[1].startswith("no difference")
    below = rank_maps.share_against_uniform([0.2, 0.21, 0.22], 1 / 3)
    assert adalora.claim2_verdict(above, above)[0] == "reproduced"
    assert adalora.claim2_verdict(above, None)[0] == "partly"
    assert adalora.claim2_verdict(below, below)[0] == "not reproduced"
    same = rank_maps.seed_agreement([grid, grid.copy()])
    assert same == {"mean_pairwise_correlation": pytest.approx(1.0), "fraction_same_in_every_seed": 1.0}
    assert adalora.next_grid_rate(5.6e-3) == 1e-2
