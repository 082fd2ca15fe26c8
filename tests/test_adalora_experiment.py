"""experiments/adalora.py end to end at toy size, and the arithmetic its verdicts rest on."""
import json
import re

import numpy as np
import pytest

from experiments import adalora
from minilora import read_adapter_file
from tests.test_experiments import TOY, is_png


def test_adalora_experiment_end_to_end(tmp_path, corpora):
    out = tmp_path / "adalora"
    adalora.main([*TOY, *corpora, "--seeds", "2", "--no-pruning-control", "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    assert len(records) == 4 * 3 * 2  # contenders x rates x seeds
    ada = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 8 * 6]
    control = [r for r in records if r["variant"] == "adalora" and r["adalora"]["budget"][-1] == 12 * 6]
    assert len(ada) == 6 and len(control) == 6
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
    summary = json.loads((out / "adalora.json").read_text())
    assert [c["name"] for c in summary["contenders"]] == ["AdaLoRA 12->8", "LoRA r=8", "LoRA r=12",
                                                          "AdaLoRA 12->12 (no pruning)"]
    assert [s["lrs"] for s in summary["sweep"]] == [[0.003, 0.01, 0.03], [0.001, 0.003, 0.01],
                                                    [0.001, 0.003, 0.01], [0.003, 0.01, 0.03]]
    for sweep in summary["sweep"]:
        assert sweep["best_lr"] == sweep["lrs"][int(np.argmin(sweep["mean_final_target_loss"]))]
    allocation = summary["allocation"]
    assert np.array(allocation["final_ranks_per_seed"]).shape == (2, 1, 6)
    assert allocation["mlp_share_uniform"] == pytest.approx(1 / 3)
    assert allocation["top_half_side"] == "n/a"  # one layer: no top half
    claim1 = summary["claims"]["1_equal_budget_beats_uniform_lora"]
    assert claim1["verdict"] == adalora.claim1_verdict(claim1["adalora"], claim1["lora_same_budget"])
    for name in ("budget.png", "final_ranks.png", "loss_curves.png"):
        assert is_png(out / name)
    assert "| AdaLoRA 12->8 |" in (out / "results.md").read_text()
    adapter_files = sorted((tmp_path / "cache" / "runs").glob("*.adapter.pt"))
    saved = [read_adapter_file(p) for p in adapter_files]
    pruned = [s for s in saved if s["config"].get("adalora")]
    assert sorted(sum(s["config"]["ranks"].values()) for s in pruned) == [48] * 6 + [72] * 6


@pytest.mark.parametrize("flags, message", [
    (["--t-init", "3", "--t-final", "3"], "--t-init \\+ --t-final = 3 \\+ 3 must be less than --max-iters=6"),
    (["--target-r", "13"], "--target-r=13 must be in 1..--init-r=12"),
    (["--beta1", "1"], "expected a number in \\[0, 1\\), got '1'"),
    (["--gamma", "-0.5"], "expected a number >= 0, got '-0.5'"),
])
def test_bad_flags_stop_before_any_work(tmp_path, corpora, capsys, flags, message):
    with pytest.raises(SystemExit):
        adalora.main([*TOY, *corpora, *flags, "--out", str(tmp_path / "out")])
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "cache").exists()  # no base model was trained


def test_shares_and_verdicts():
    grid = np.array([[4, 4, 4, 4, 10, 10], [8, 8, 8, 8, 12, 12]], dtype=float)  # 2 layers
    s = adalora.shares(grid)
    assert s["mlp_share"] == pytest.approx(44 / 92) and s["top_half_share"] == pytest.approx(56 / 92)
    assert adalora.uniform_shares(grid) == {"mlp_share": pytest.approx(1 / 3), "top_half_share": 0.5}
    assert adalora.side_of([0.4, 0.5], 1 / 3) == "above"
    assert adalora.side_of([0.2, 0.5], 1 / 3) == "mixed"
    assert adalora.side_of([0.2, 0.3], 1 / 3) == "below"
    low, high = {"mean": 1.50, "min": 1.49, "max": 1.51}, {"mean": 1.55, "min": 1.54, "max": 1.56}
    assert adalora.claim1_verdict(low, high) == "reproduced"
    assert adalora.claim1_verdict(high, low).startswith("not reproduced")
    assert adalora.claim1_verdict(low, {"mean": 1.51, "min": 1.50, "max": 1.52}).startswith("no difference")
    assert adalora.claim2_verdict("above", "above").startswith("reproduced")
    assert adalora.claim2_verdict("above", "mixed").startswith("partly")
    assert adalora.claim2_verdict("below", "n/a").startswith("not reproduced")
    same = adalora.seed_agreement([grid, grid.copy()])
    assert same == {"mean_pairwise_correlation": pytest.approx(1.0), "fraction_same_in_every_seed": 1.0}
