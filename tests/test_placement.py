"""experiments/placement.py: the matched ranks, its flags, the command end to end at toy size, and
the section's verdicts drawn by the shared rules (experiments/lib/verdicts.py)."""
import copy
import json
import shutil

import pytest
import torch

import minilora
from experiments import placement
from experiments.lib import verdicts
from experiments.lib.seeds import spread
from experiments.report import ROOT, Results
from nanogpt import GPT, config_from_preset
from tests.test_experiments import TOY, is_png


def counted(model, targets, r):
    """The trainable parameters of LoRA r on targets, by minilora's own count (not the plan's)."""
    return minilora.count_parameters(minilora.apply_lora(copy.deepcopy(model), targets, r=r, alpha=16)).trainable


def test_the_rank_plan_matches_the_counts_of_the_tiny_gpt():
    with torch.device("meta"):
        model = GPT(config_from_preset("tiny"))
    plan = placement.rank_plan(model, [1, 4, 16])
    # per layer: attention 4 * r * (128 + 128) = 1024 r, the MLP 2 * r * (128 + 512) = 1280 r, all six 2304 r
    assert [{name: cell["r"] for name, cell in b["cells"].items()} for b in plan] == [
        {"attention": 2, "mlp": 2, "all": 1}, {"attention": 9, "mlp": 7, "all": 4},
        {"attention": 36, "mlp": 29, "all": 16}]
    assert [b["budget"] for b in plan] == [4 * 2304 * r for r in (1, 4, 16)]
    for b in plan:
        assert b["budget"] == counted(model, placement.TARGET_SETS["all"], b["budget_r"])
        for name, cell in b["cells"].items():
            targets = placement.TARGET_SETS[name]
            assert cell["params"] == counted(model, targets, cell["r"])
            # no other rank lands closer to the budget
            for other in (cell["r"] - 1, cell["r"] + 1):
                if other >= 1:
                    assert abs(cell["params"] - b["budget"]) <= abs(counted(model, targets, other) - b["budget"])


@pytest.mark.parametrize("flags, message", [
    (["--budget-ranks", "0"], "--budget-ranks must be comma-separated positive integers like 1,2,4; got '0'"),
    (["--budget-ranks", "4,x"], "--budget-ranks must be comma-separated positive integers like 1,2,4; got '4,x'"),
    (["--max-extra", "-1"], "--max-extra"),
    (["--seeds", "0"], "--seeds"),
    # 32-dimensional toy blocks: all six at r=16 is matched by attention at r=36, more than q_proj's 32 dims
    (["--budget-ranks", "16"], "a planned run cannot be made (LoRA r=36 on 'q_proj,k_proj,v_proj,o_proj'): r=36 is "
                               "not a valid rank"),
    (["--lora-lr", "0.004"], "--lora-lr 0.004 is where this experiment starts tuning"),
])
def test_bad_flags_stop_before_any_work(tmp_path, corpora, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        placement.main([*TOY, *corpora, *flags, "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("base-*"))  # no base model pretrained


def test_placement_end_to_end_reports_test_losses(tmp_path, corpora):
    out = tmp_path / "placement"
    placement.main([*TOY, *corpora, "--budget-ranks", "1", "--seeds", "2", "--max-extra", "0", "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    summary = json.loads((out / "placement.json").read_text())
    assert summary["plan"][0]["cells"] == {"attention": {"r": 2, "params": 512}, "mlp": {"r": 2, "params": 640},
                                           "all": {"r": 1, "params": 576}}  # 1 block of 32 dims, MLP 128
    assert [(row["set"], row["r"]) for row in summary["rows"]] == [("attention", 2), ("mlp", 2), ("all", 1)]
    assert len(records) == 6
    for k, row in enumerate(summary["rows"]):
        runs = records[2 * k: 2 * k + 2]
        assert [x["trainable_params"] for x in runs] == [row["trainable_params"]] * 2
        assert {x["lr"] for x in runs} == {row["lr"]}
        assert row["lr"] in row["tuning"]["lrs"] and len(row["tuning"]["lrs"]) == 3
        # reported: the test half; the rates were chosen on validation (the tuner's losses)
        assert row["test_loss"]["values"] == [x["final_target_test_loss"] for x in runs]
        assert row["tuning"]["losses"][row["tuning"]["lrs"].index(row["lr"])] == runs[0]["final_target_loss"]
    assert [c["question"] for c in summary["comparisons"]] == [q for _, q, _, _ in placement.CLAIMS]
    assert is_png(out / "placement.png")
    assert "| 576 (r=1) | all six | 1 | 576 |" in (out / "results.md").read_text()
    section = placement.report(Results(str(tmp_path)))
    assert section["verdict"] in verdicts.VERDICTS and "![placement]" in section["body"]
    assert len(section["comparisons"]) == 3


def fake_summary(losses, n_seeds=3):
    """A placement.json from hand-made test losses: {(budget_r, set): [loss per seed]}."""
    with torch.device("meta"):
        model = GPT(config_from_preset("tiny"))
    plan = placement.rank_plan(model, sorted({b for b, _ in losses}))
    rows = []
    for b in plan:
        for name, cell in b["cells"].items():
            rows.append({"budget_r": b["budget_r"], "budget": b["budget"], "set": name, "r": cell["r"],
                         "trainable_params": cell["params"], "lr": 5.6e-3,
                         "tuning": {"lrs": [3e-3, 5.6e-3, 1e-2], "losses": [1.7, 1.6, 1.65], "at_grid_edge": False},
                         "test_loss": spread(losses[(b["budget_r"], name)]), "source_test_loss": spread([2.0] * n_seeds)})
    return {"seeds": list(range(n_seeds)), "steps": 300, "n_layer": 4, "base_target_test_loss": 1.8, "plan": plan,
            "rows": rows, "comparisons": placement.comparisons(rows)}


def write_fake(tmp_path, summary, which_weights=False):
    (tmp_path / "placement").mkdir()
    (tmp_path / "placement" / "placement.json").write_text(json.dumps(summary))
    if which_weights:
        shutil.copytree(f"{ROOT}/results/which_weights", tmp_path / "which_weights")
    return Results(str(tmp_path))


def test_the_report_draws_its_verdicts_by_the_shared_rules(tmp_path):
    noise = [0.0, 0.002, -0.002]
    losses = {}
    for b in (1, 4):
        losses[(b, "attention")] = [1.60 + e for e in noise]
        losses[(b, "all")] = [1.55 + e for e in noise[::-1]]
        losses[(b, "mlp")] = [1.551 + e for e in noise[::-1]]
    summary = fake_summary(losses)
    section = placement.report(write_fake(tmp_path, summary, which_weights=True))
    # every comparison is the shared rule's answer on the paired difference, and is listed
    expected = []
    for c in summary["comparisons"]:
        rule = verdicts.beats if c["rule"] == "beats" else verdicts.matches
        expected.append(rule(c["difference"], "loss")["outcome"])
    assert [j["outcome"] for j in section["comparisons"]] == expected
    assert expected == [verdicts.REPRODUCED] * 6  # all six and the MLP ahead by 0.05, the MLP within 0.001 of all
    assert section["verdict"] == verdicts.REPRODUCED
    assert "**Verdict: reproduced.**" in section["body"]
    assert "the MLP +25.0%" in section["body"]  # section 3's over-budget MLP, read from its records
    assert "Every loss below is on the test half" in section["body"]


def test_attention_ahead_is_not_reproduced_and_a_small_gap_is_not_settled(tmp_path):
    noise = [0.0, 0.002, -0.002]
    losses = {(1, "attention"): [1.55 + e for e in noise], (1, "all"): [1.60 + e for e in noise],
              (1, "mlp"): [1.603 + e for e in noise]}
    section = placement.report(write_fake(tmp_path, fake_summary(losses)))
    assert [j["outcome"] for j in section["comparisons"]] == [verdicts.NOT_REPRODUCED, verdicts.NOT_REPRODUCED,
                                                               verdicts.REPRODUCED]
    assert section["verdict"] == verdicts.NOT_REPRODUCED  # the headline part fails: so does the section
    assert "has no results to compare with" in section["body"]
    small = {(1, "attention"): [1.604, 1.606, 1.602], (1, "all"): [1.600, 1.600, 1.600],
             (1, "mlp"): [1.600, 1.601, 1.599]}
    (tmp_path / "placement" / "placement.json").write_text(json.dumps(fake_summary(small)))
    section = placement.report(Results(str(tmp_path)))
    assert section["comparisons"][0]["outcome"] == verdicts.NOT_SETTLED  # 0.004 ahead: within delta of 0
    assert section["verdict"] == verdicts.NOT_SETTLED
