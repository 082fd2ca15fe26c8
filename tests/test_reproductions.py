"""The reproduction experiments (issue: one experiment per LoRA claim) end to end at toy size,
and the small pieces of arithmetic their verdicts rest on."""
import copy
import json
import math

import pytest
import torch

from experiments import batch_size, learn_forget, loraplus, lr_sweep, qlora, rank_targets, variants, which_weights
from experiments.loraplus import steps_to_reach
from experiments.lr_sweep import best_lr
from experiments.lib.common import DEFAULT_LR
from experiments.learn_forget import front_rows, position, source_loss_at, versus_full_front
from experiments.lib.pareto import front_at, pareto_front
from experiments.report import Results
from experiments.lib.write_up import VERDICTS
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from experiments.which_weights import TARGET_SETS, params_per_rank, rank_for_budget
from minilora import apply_lora, count_parameters, lora_layers
from nanogpt import GPT, config_from_preset
from tests.test_experiments import TOY, is_png


def tiny_gpt():
    return GPT(config_from_preset("tiny"))


@pytest.mark.parametrize("budget", [2_048, 8_192, 20_000, 100_000])
def test_budget_matcher_is_within_one_rank_step_and_counts_match_the_model(budget):
    model = tiny_gpt()
    for name, targets in TARGET_SETS.items():
        r = rank_for_budget(model, targets, budget)
        step = params_per_rank(model, targets)
        assert r >= 1
        assert abs(r * step - budget) <= step or r == 1, (name, r, step, budget)
        if r > 1:  # no other rank comes closer
            assert abs(r * step - budget) <= min(abs((r - 1) * step - budget), abs((r + 1) * step - budget))
        adapted = apply_lora(tiny_gpt(), targets, r=r, alpha=16)
        assert count_parameters(adapted).trainable == r * step


def test_budget_matcher_on_the_tiny_gpt_matches_the_papers_pattern():
    # Budget = r=8 on q alone (4 layers x 8 x (128 + 128)); the paper's Table 5: 8 on one type,
    # 4 on two, 2 on four; the MLP's matrices are wider (128 <-> 512), so they get less.
    model = tiny_gpt()
    budget = 8 * params_per_rank(model, ["q_proj"])
    assert budget == 8_192
    ranks = {name: rank_for_budget(model, t, budget) for name, t in TARGET_SETS.items()}
    assert ranks == {"q": 8, "k": 8, "v": 8, "o": 8, "q,v": 4, "q,k,v,o": 2, "up,down": 2, "all": 1}


def test_best_lr_finds_the_vertex_of_a_parabola_in_log_rate():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    losses = [(math.log10(lr) + 2.5) ** 2 for lr in lrs]  # minimum at 10**-2.5
    lr, at_edge = best_lr(lrs, losses)
    assert not at_edge and lr == pytest.approx(10 ** -2.5, rel=1e-9)
    assert best_lr(lrs, [1.0, 2.0, 3.0, 4.0]) == (1e-4, True)  # the minimum at the grid's edge is flagged
    assert best_lr(lrs, [3.0, 2.0, 1.0, float("nan")]) == (1e-2, True)  # a diverged neighbour: no parabola


def test_source_loss_at_interpolates_along_the_trajectory():
    history = [{"target_loss": 2.0, "source_loss": 1.0}, {"target_loss": 1.6, "source_loss": 1.4},
               {"target_loss": 1.2, "source_loss": 2.2}]
    assert source_loss_at(history, 1.8) == pytest.approx(1.2)
    assert source_loss_at(history, 1.3) == pytest.approx(2.0)
    assert source_loss_at(history, 1.1) is None  # never got that low


def test_seed_spreads_and_the_confidence_interval():
    assert seed_list(5, 3) == [5, 6, 7]
    with pytest.raises(ValueError, match="--seeds must be a positive integer; got 0"):
        seed_list(5, 0)
    a = spread([1.0, 1.2, 1.4])
    assert a["mean"] == pytest.approx(1.2) and (a["min"], a["max"], a["n"]) == (1.0, 1.4, 3)
    assert a["sd"] == pytest.approx(0.2)
    assert a["ci"] == pytest.approx(4.303 * 0.2 / math.sqrt(3))  # Student's t, 2 degrees of freedom
    one = spread([2.0])
    assert math.isnan(one["ci"]) and show(one) == "2.000"
    assert show(a) == "1.200 ± 0.497"
    # A NaN or inf among the seeds (a diverged run, a measure undefined at a setting): no spread, no call
    for bad in (math.nan, math.inf):
        s = spread([1.0, bad, 1.4])
        assert math.isnan(s["mean"]) and math.isnan(s["ci"]) and s["n"] == 3
        assert not paired([1.0, 1.1, 1.2], [2.0, bad, 2.2])["called"]
    assert all(math.isnan(spread(v)[k]) for v in ([math.nan, 1.0], [1.0, math.nan]) for k in ("min", "max"))
    assert (spread([1.0, math.inf])["min"], spread([1.0, math.inf])["max"]) == (1.0, math.inf)


def test_a_paired_difference_is_called_only_when_its_interval_excludes_zero():
    # Seed by seed, b is 0.010 to 0.012 above a: a small but consistent difference is called.
    d = paired([1.500, 1.520, 1.490], [1.511, 1.530, 1.502])
    assert d["mean"] == pytest.approx(0.011) and d["called"]
    # Marked, and beside it the smallest effect 3 seeds detect: (4.303 + 1.061) * 0.001 / sqrt(3) = 0.0031.
    assert show_difference(d) == "+0.011 ± 0.002 * (MDE 0.003)"
    # The same means with the difference's sign changing between seeds: not called.
    d = paired([1.500, 1.520, 1.490], [1.530, 1.510, 1.503])
    assert d["mean"] == pytest.approx(0.011) and not d["called"]
    assert "*" not in show_difference(d)
    assert not paired([1.0], [2.0])["called"]  # one seed: no interval, nothing called
    assert show_difference(paired([1.0], [2.0])) == "+1.000"  # and no detectable effect to show
    with pytest.raises(ValueError, match="same seeds on both sides"):
        paired([1.0, 2.0], [1.0])


def read(path):
    return json.loads(path.read_text())


def test_which_weights_end_to_end(tmp_path, corpora):
    out = tmp_path / "ww"
    which_weights.main([*TOY, *corpora, "--seeds", "2", "--workers", "1", "--out", str(out)])
    summary = read(out / "which_weights.json")
    assert [row["set"] for row in summary["rows"]] == list(TARGET_SETS)
    records = read(out / "records.json")
    assert len(records) == 2 * (len(TARGET_SETS) + 1)  # two seeds per set at its tuned rate, plus full
    for k, row in enumerate(summary["rows"]):
        assert len(row["target_loss"]["values"]) == 2
        assert abs(row["trainable_params"] - summary["budget"]) <= row["trainable_params"] / row["r"]
        tuning = row["tuning"]  # the chosen rate is the tried rate with the lowest first-seed loss
        assert len(tuning["lrs"]) >= 3 and row["lr"] == tuning["lrs"][tuning["losses"].index(min(tuning["losses"]))]
        runs = records[2 * k: 2 * k + 2]
        assert [r["lr"] for r in runs] == [row["lr"]] * 2 and [r["seed"] for r in runs] == [1337, 1338]
        assert runs[0]["final_target_loss"] == min(tuning["losses"])  # the first seed's run is the tuning run
        # the rate was chosen on validation; the row reports the test half, which no choice read
        assert row["target_loss"]["values"] == [r["final_target_test_loss"] for r in runs]
    assert summary["scored_on"] == "test"
    assert [c["winner"] for c in summary["comparisons"]] == ["q,v", "q,v", "q,k,v,o", "up,down", "all"]
    assert is_png(out / "which_weights.png")
    assert "| q,v |" in (out / "results.md").read_text()


def test_lr_sweep_end_to_end(tmp_path, corpora, capsys):
    out = tmp_path / "lr"
    lr_sweep.main([*TOY, *corpora, "--full-lrs", "1e-3,1e-2,1e-1", "--lora-lrs", "3e-3,3e-2,3e-1", "--ranks", "1,2",
                   "--seeds", "2", "--workers", "2", "--out", str(out)])
    summary = read(out / "lr_sweep.json")
    curves = summary["curves"]
    assert summary["seeds"] == [1337, 1338]
    assert [c["name"] for c in curves] == ["full fine-tuning", "LoRA r=1", "LoRA r=2"]
    assert curves[0]["ratio_to_full"] == 1.0
    assert curves[0]["lrs"] == [1e-3, 1e-2, 1e-1] and curves[1]["lrs"] == curves[2]["lrs"] == [3e-3, 3e-2, 3e-1]
    records = read(out / "records.json")
    assert len(records) == 3 * 3 * 2  # three curves, three rates, two seeds, in that order
    for k, c in enumerate(curves):
        assert len(c["losses"]) == 3 and c["lrs"][0] <= c["best_lr"] <= c["lrs"][-1]
        assert len(c["best_lr_per_seed"]) == 2
        for j, lr in enumerate(c["lrs"]):  # the curve is the seed mean of its own records
            runs = records[6 * k + 2 * j: 6 * k + 2 * j + 2]
            assert [r["lr"] for r in runs] == [lr, lr] and [r["seed"] for r in runs] == [1337, 1338]
            # reported on the test half; the rate a choice would take is read on validation
            assert c["losses"][j] == pytest.approx(sum(r["final_target_test_loss"] for r in runs) / 2)
        on_validation = [sum(r["final_target_loss"] for r in records[6 * k + 2 * j: 6 * k + 2 * j + 2])
                         for j in range(3)]
        assert c["best_grid_lr"] == c["lrs"][on_validation.index(min(on_validation))]
    row = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| LoRA r=2 |"))
    cells = [c.strip() for c in row.split("|")[2:8]]  # one column per rate, 1e-3 to 3e-1
    assert [c != "" for c in cells] == [False, True, False, True, False, True]  # LoRA ran only at its own rates
    assert is_png(out / "lr_sweep.png")
    with pytest.raises(SystemExit):
        lr_sweep.main([*TOY, *corpora, "--lora-lrs", "1e-3,abc,1e-2", "--out", str(out)])
    assert "--lora-lrs must be comma-separated positive numbers" in capsys.readouterr().err


def test_lr_sweep_judges_about_ten_times_and_rank_independence_seed_by_seed():
    def curve(r, best, full=(1e-3, 1e-3, 1e-3)):
        return {"name": f"LoRA r={r}" if r else "full fine-tuning", "r": r, "best_lr_per_seed": list(best),
                "ratio_to_full_per_seed": [b / f for b, f in zip(best, full)]}
    full = curve(None, (1e-3, 1e-3, 1e-3))
    parts = lr_sweep.judge([full, curve(1, (9.5e-3, 1.05e-2, 9e-3)), curve(64, (1.2e-2, 1.3e-2, 1.1e-2))])
    assert [(p["rule"], p["kind"], p["question"]) for p in parts] == [
        ("matches", "log_ratio", "r=1: best rate about 10x full's"),
        ("matches", "log_ratio", "r=64: best rate about 10x full's"),
        ("matches", "log_ratio", "r=64's best rate the same as r=1's")]
    # log10(9.5) - 1, log10(10.5) - 1, log10(9) - 1 per seed; r=64 over r=1: 12/9.5, 13/10.5, 11/9.
    assert parts[0]["mean"] == pytest.approx((math.log10(9.5) + math.log10(10.5) + math.log10(9)) / 3 - 1)
    assert parts[2]["mean"] == pytest.approx((math.log10(12 / 9.5) + math.log10(13 / 10.5) + math.log10(11 / 9)) / 3)
    assert [p["outcome"] for p in parts] == ["reproduced"] * 3
    # 3x full's at r=1 and 12x at r=64, steadily: not about 10x at r=1, and the rate moves 4x with rank.
    parts = lr_sweep.judge([full, curve(1, (3e-3, 3.1e-3, 2.9e-3)), curve(64, (1.2e-2, 1.3e-2, 1.1e-2))])
    assert [p["outcome"] for p in parts] == ["not reproduced", "reproduced", "not reproduced"]


def test_pareto_front_keeps_exactly_the_undominated_points():
    points = [(1.0, 5.0), (2.0, 3.0), (2.5, 3.5), (3.0, 1.0), (4.0, 1.0), (3.0, 2.0), (1.5, 5.0), (2.0, 3.0)]
    # (2.5, 3.5) is beaten by (2.0, 3.0); (4.0, 1.0) and (3.0, 2.0) by (3.0, 1.0); (1.5, 5.0) by (1.0, 5.0).
    assert pareto_front(points) == [(1.0, 5.0), (2.0, 3.0), (3.0, 1.0)]
    assert pareto_front([(2.0, 2.0)]) == [(2.0, 2.0)] and pareto_front([]) == []
    assert pareto_front(points + [(0.5, math.nan), (math.inf, 0.1)]) == pareto_front(points)  # diverged runs
    front = pareto_front(points)
    for x, y in points:  # every point is on the front or dominated by a point of it
        assert (x, y) in front or any(fx <= x and fy <= y and (fx, fy) != (x, y) for fx, fy in front)
    for (x0, y0), (x1, y1) in zip(front, front[1:]):  # x rises and y falls strictly along it
        assert x1 > x0 and y1 < y0


def test_front_at_is_exact_at_the_vertices_linear_between_and_never_extrapolates():
    front = [(1.0, 5.0), (2.0, 3.0), (3.0, 1.0)]
    assert [front_at(front, x) for x, _ in front] == [5.0, 3.0, 1.0]
    assert front_at(front, 1.5) == pytest.approx(4.0) and front_at(front, 2.75) == pytest.approx(1.5)
    assert front_at(front, 0.99) is None and front_at(front, 3.01) is None
    assert front_at([(2.0, 2.0)], 2.0) == 2.0 and front_at([], 1.0) is None


def test_learn_forget_reads_lora_against_the_full_front_seed_by_seed():
    # Three seeds; full fine-tuning's front in each seed runs through (1.0, 3.0) and (2.0, 1.0).
    def row(method, r, targets, sources):
        return {"method": method, "r": r, "name": f"{method} {r}", "steps": 6, "lr": 1e-3,
                "target_loss": spread(targets), "source_loss": spread(sources)}
    rows = [row("full", None, [1.0] * 3, [3.0] * 3), row("full", None, [2.0] * 3, [1.0] * 3),
            row("full", None, [2.0, 2.1, 2.05], [2.5, 2.6, 2.55]),  # dominated in every seed
            row("lora", 1, [1.5] * 3, [2.5, 2.6, 2.55]), row("lora", 2, [1.5, 1.25, 1.75], [1.0, 1.1, 0.6]),
            row("lora", 3, [0.5, 1.5, 1.5], [1.0, 1.0, 1.0])]
    versus_full_front(rows, 3)
    above, below, outside = rows[3], rows[4], rows[5]
    assert above["full_front_source_loss"]["values"] == [2.0] * 3
    assert above["above_full_front"]["values"] == pytest.approx([0.5, 0.6, 0.55]) and above["above_full_front"]["called"]
    assert below["full_front_source_loss"]["values"] == [2.0, 2.5, 1.5]
    assert below["above_full_front"]["values"] == pytest.approx([-1.0, -1.4, -0.9]) and below["above_full_front"]["called"]
    assert outside["above_full_front"] is None  # the first seed learned more than any full run: no extrapolation
    assert [position(r["above_full_front"]) for r in rows[3:]] == ["above", "below", None]
    # On the front only by the equivalence rule (90% interval inside +-0.01); a noisy 3-seed
    # difference whose interval holds the margin is not settled, not "on".
    assert position(paired([2.0] * 3, [2.001, 2.002, 2.0015])) == "on"
    assert position(paired([2.0] * 3, [2.0, 2.03, 1.98])) == "not settled"
    fronts = front_rows(rows)
    assert [(v["target_loss"], v["source_loss"]) for v in fronts["full"]] == [(1.0, 3.0), (2.0, 1.0)]
    assert [r["on_front"] for r in rows] == [True, True, False, False, True, True]


def test_learn_forget_end_to_end(tmp_path, corpora):
    out = tmp_path / "learn_forget"
    learn_forget.main([*TOY, *corpora, "--ranks", "1,2", "--rate-ranks", "1", "--lora-lrs", f"1e-2,{DEFAULT_LR['lora']}",
                       "--full-lrs", "1e-3,1e-2", "--short-lrs", "1e-2", "--short-steps", "3", "--seeds", "2",
                       "--out", str(out)])
    summary = read(out / "learn_forget.json")
    rows = summary["rows"]
    # Full at two rates, one short run, LoRA r=1 and r=2 at the default rate, then r=1's other rate
    # (its run at the default rate is planned twice and appears once).
    assert [(r["method"], r["r"], r["lr"], r["steps"]) for r in rows] == [
        ("full", None, 1e-3, 6), ("full", None, 1e-2, 6), ("full", None, 1e-2, 3),
        ("lora", 1, DEFAULT_LR["lora"], 6), ("lora", 2, DEFAULT_LR["lora"], 6), ("lora", 1, 1e-2, 6)]
    records = read(out / "records.json")
    assert len(records) == 2 * len(rows) and [r["seed"] for r in records[:2]] == [1337, 1338]
    assert [r["steps"] for r in records[4:6]] == [3, 3]
    for k, row in enumerate(rows):  # each row is the seed spread of its own two records: test reported, validation kept
        assert row["target_loss"]["values"] == [r["final_target_test_loss"] for r in records[2 * k:2 * k + 2]]
        assert row["val_target_loss"]["values"] == [r["final_target_loss"] for r in records[2 * k:2 * k + 2]]
        assert row["target_loss"]["values"] != row["val_target_loss"]["values"]
    full_front = pareto_front([(r["target_loss"]["mean"], r["source_loss"]["mean"]) for r in rows[:3]])
    assert [(v["target_loss"], v["source_loss"]) for v in summary["fronts"]["full"]] == full_front
    # the tuned full run: full-length runs only, chosen on validation, never on the test half reported
    full = min(rows[:2], key=lambda r: r["val_target_loss"]["mean"])
    assert summary["full_tuned"] == full["name"]
    heads = summary["headline"]
    assert [(h["r"], h["rates_tried"]) for h in heads] == [(1, sorted({1e-2, DEFAULT_LR["lora"]})),
                                                           (2, [DEFAULT_LR["lora"]])]
    r1 = min([r for r in rows if r["r"] == 1], key=lambda r: r["val_target_loss"]["mean"])
    assert heads[0]["lora"] == r1["name"]
    assert heads[0]["learned_less"]["values"] == pytest.approx(
        [a - b for a, b in zip(r1["target_loss"]["values"], full["target_loss"]["values"])])
    for row in rows[3:]:
        assert row["position"] in ("above", "on", "below", None)
        assert (row["above_full_front"] is None) == (row["position"] is None)
    assert is_png(out / "learn_forget.png") and (out / "run_info.json").exists()
    assert "| LoRA r=2, lr " in (out / "results.md").read_text()
    assert "Losses on test text; best rates chosen on validation" in (out / "results.md").read_text()
    section = learn_forget.report(Results(str(tmp_path)))  # from the files just written
    assert section["verdict"] in VERDICTS and "![learning vs forgetting]" in section["body"]


def test_batch_size_end_to_end_at_equal_sequences(tmp_path, corpora, capsys):
    out = tmp_path / "batch_size"
    batch_size.main([*TOY, *corpora, "--batch-sizes", "2,8", "--sequences", "32", "--seeds", "2", "--out", str(out)])
    records = read(out / "records.json")
    fixed = [(r["method"], r["batch_size"], r["steps"], r["seed"]) for r in records[:8]]
    assert fixed == [(m, b, 32 // b, s) for b in (2, 8) for m in ("full", "lora") for s in (1337, 1338)]
    assert {r["steps"] * r["batch_size"] for r in records} == {32}  # the same sequences seen by every run
    assert len({r["base_target_loss"] for r in records}) == 1  # and the same validation batches
    assert {r["eval_batch_size"] for r in records} == {12}
    summary = read(out / "batch_size.json")
    rows = summary["fixed"]
    assert [(row["batch_size"], row["steps"], row["sequences"]) for row in rows] == [(2, 16, 32), (8, 4, 32)]
    assert rows[0]["gap"]["values"] == pytest.approx(
        [lo["final_target_test_loss"] - fu["final_target_test_loss"] for fu, lo in zip(records[0:2], records[2:4])])
    assert summary["scored_on"] == "test"  # the rates at the extremes are chosen on validation (below)
    assert rows[0]["full"]["lr"] == DEFAULT_LR["full"] and rows[0]["lora"]["lr"] == DEFAULT_LR["lora"]
    # At the extremes each method gets its own rate: the lowest first-seed loss among the rates it tried.
    assert [row["batch_size"] for row in summary["tuned"]] == [2, 8]
    for row in summary["tuned"]:
        for m in ("full", "lora"):
            t = summary["tuning"][f"{m} b={row['batch_size']}"]
            assert row[m]["lr"] == t["lrs"][t["losses"].index(min(t["losses"]))]
    change = summary["gap_change_fixed"]
    assert change["values"] == pytest.approx([b - a for a, b in zip(rows[0]["gap"]["values"], rows[1]["gap"]["values"])])
    assert is_png(out / "batch_size.png") and (out / "run_info.json").exists()
    assert "| 8 | 4 | 32 |" in (out / "results.md").read_text()
    section = batch_size.report(Results(str(tmp_path)))
    assert section["verdict"] in VERDICTS and section["title"] == "Batch size"
    with pytest.raises(SystemExit):
        batch_size.main([*TOY, *corpora, "--batch-sizes", "4,64", "--sequences", "7200", "--out", str(out)])
    assert "--sequences 7200 is not a multiple of batch size(s) [64]" in capsys.readouterr().err


def test_an_evaluation_batch_equal_to_the_training_batch_keeps_the_old_cache_key():
    from types import SimpleNamespace

    from experiments.lib.finetune import run_key

    corpus = SimpleNamespace(sha256="abc")
    key = dict(base_key="b", spec={"method": "full", "lr": 1e-3}, target=corpus, source=corpus, steps=6, seed=1,
               device="cpu")
    assert run_key(**key, batch_size=12, eval_batch_size=12) == run_key(**key, batch_size=12)
    assert run_key(**key, batch_size=96, eval_batch_size=12) != run_key(**key, batch_size=96)


def test_batch_size_default_sequences_divide_evenly_into_every_default_batch():
    steps = batch_size.steps_for(7200, [6, 12, 24, 48, 96])
    assert steps == {6: 1200, 12: 600, 24: 300, 48: 150, 96: 75}
    assert all(s * b == 7200 for b, s in steps.items())


def test_variants_end_to_end(tmp_path, corpora):
    out = tmp_path / "var"
    variants.main([*TOY, *corpora, "--r", "2", "--high-r", "4", "--seeds", "2", "--out", str(out)])
    summary = read(out / "variants.json")
    names = [g["name"] for g in summary["groups"]]
    assert names == ["LoRA r=2", "rsLoRA r=2", "LoRA r=4", "rsLoRA r=4", "DoRA r=2", "PiSSA r=2",
                     "LoRA r=2, B's rate x sqrt(2)", "LoRA r=4, B's rate x sqrt(4)", "full fine-tuning"]
    by_name = {g["name"]: g for g in summary["groups"]}
    # Same rank, same parameters, except DoRA's magnitude vector (one per output feature).
    assert by_name["rsLoRA r=2"]["trainable_params"] == by_name["LoRA r=2"]["trainable_params"]
    assert by_name["DoRA r=2"]["trainable_params"] > by_name["LoRA r=2"]["trainable_params"]
    for g in summary["groups"][:6]:  # each variant at the rate its own tuning chose
        assert g["lr"] == g["tuning"]["lrs"][g["tuning"]["losses"].index(min(g["tuning"]["losses"]))]
    # The identity runs use rsLoRA's tuned rate, with B's rate sqrt(r) times A's.
    assert by_name["LoRA r=4, B's rate x sqrt(4)"]["lr"] == by_name["rsLoRA r=4"]["lr"]
    records = read(out / "records.json")
    identity = [r for r in records if r["variant"] == "loraplus"]
    assert len(identity) == 4 and all(r["lr"] in (by_name["rsLoRA r=2"]["lr"], by_name["rsLoRA r=4"]["lr"])
                                      for r in identity)
    assert [c["question"] for c in summary["comparisons"]] == [
        "rsLoRA beats LoRA at r=2", "rsLoRA beats LoRA at r=4", "LoRA: r=4 beats r=2", "rsLoRA: r=4 beats r=2",
        "DoRA beats LoRA at r=2", "PiSSA beats LoRA at r=2"]
    assert all(i["largest_gap"] < 0.05 for i in summary["identity"])  # the same training, up to clipping
    # Rates chosen on validation (above); the table reports the test half.
    dora = [r for r in records if r["variant"] == "dora"]
    assert summary["scored_on"] == "test"
    assert by_name["DoRA r=2"]["target_loss"]["values"] == [r["final_target_test_loss"] for r in dora]
    assert is_png(out / "variants.png")
    (tmp_path / "results").mkdir()
    out.rename(tmp_path / "results" / "variants")
    section = variants.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in VERDICTS
    for question in ("rsLoRA beats LoRA at r=4", "DoRA beats LoRA at r=2", "PiSSA beats LoRA at r=2"):
        d = next(c["difference"] for c in summary["comparisons"] if c["question"] == question)
        assert show_difference(d) in section["body"]


def test_a_variant_claim_holds_only_when_its_gain_is_called_and_large_enough():
    gain = {"mean": 0.03, "ci": 0.01, "n": 3, "called": True}  # 95% interval 0.02 to 0.04: clear of 0 and of 0.01
    assert variants.claim_verdict(gain)["outcome"] == "reproduced"
    assert variants.claim_verdict({**gain, "mean": -0.03})["outcome"] == "not reproduced"
    # An interval that holds both 0 and the minimum: three seeds cannot tell.
    assert variants.claim_verdict({**gain, "ci": 0.05, "called": False})["outcome"] == "not settled: needs 5 seeds"


def test_qlora_end_to_end(tmp_path, corpora, capsys):
    out = tmp_path / "qlora"
    qlora.main([*TOY, *corpora, "--seeds", "2", "--gaussian-values", "8192", "--workers", "1", "--out", str(out)])
    records = read(out / "records.json")
    assert [(r["method"], r["quantize"]) for r in records[::2]] == [
        ("full", None), ("lora", None), ("lora", "nf4"), ("lora", "fp4"), ("lora", "int4")]
    assert [r["seed"] for r in records[:2]] == [1337, 1338]
    full, lora, nf4 = records[0], records[2], records[4]
    assert nf4["lr"] == lora["lr"] != full["lr"]  # QLoRA trains at LoRA's rate
    # The 4-bit base shrinks the weights; the adapter's gradients and optimizer state are LoRA's.
    assert nf4["memory"]["params"] < lora["memory"]["params"]
    assert (nf4["memory"]["grads"], nf4["memory"]["optimizer"]) == (lora["memory"]["grads"], lora["memory"]["optimizer"])
    assert nf4["memory"]["params"] == nf4["memory"]["analytic"]["params"]
    # the same adapter tensors; both files' configs record the base storage (quantize "nf4" or None)
    assert 0 <= nf4["saved_bytes"] - lora["saved_bytes"] < 256
    summary = read(out / "qlora.json")
    base = summary["base_losses_after_quantization"]
    assert list(base) == ["fp32 (no quantization)", "NF4", "NF4 + double quantization", "FP4",
                          "FP4 + double quantization", "Int4", "Int4 + double quantization"]
    # A QLoRA run starts from the quantized base (B = 0) and an unloaded QLoRA model computes the same,
    # all scored on the test half the tables report.
    assert summary["scored_on"] == "test"
    for record in records[4:]:
        name = {"nf4": "NF4", "fp4": "FP4", "int4": "Int4"}[record["quantize"]] + " + double quantization"
        assert record["base_target_test_loss"] == pytest.approx(base[name]["target"], abs=1e-4)
        final = record["final_eval"]
        assert final["unloaded"]["target"] == pytest.approx(record["final_target_test_loss"], abs=1e-4)
        assert set(final) == {"on_full_precision_base", "unloaded", "merged_into_4bit", "requantization"}
        assert 0 <= final["requantization"]["unchanged"] <= 1
    assert lora["base_target_test_loss"] == pytest.approx(base["fp32 (no quantization)"]["target"], abs=1e-6)
    bits = summary["claim_3_double_quant_bits"]
    assert bits["plain"] == 4.5 and bits["double_quant"] < 4.5 and bits["paper_saving"] == pytest.approx(0.373, abs=1e-3)
    errors = summary["quantization_errors"]
    assert set(errors) == {n for n, p in GPT(config_from_preset("tiny", n_layer=1, n_embd=32, n_head=2,
                                                                block_size=16)).named_parameters()
                           if p.dim() == 2} | {"N(0, 1) data"}
    claim = summary["claim_1_quantization_error"]
    assert claim["model_weights"] == len(errors) - 1 and claim["nf4_lowest_on_gaussian"]
    claim = summary["claim_2_qlora_matches_lora"]
    assert claim["qlora_nf4"]["values"] == [r["final_target_test_loss"] for r in records[4:6]]
    assert claim["qlora_minus_lora"]["values"] == pytest.approx(
        [q["final_target_test_loss"] - p["final_target_test_loss"] for p, q in zip(records[2:4], records[4:6])])
    assert isinstance(claim["qlora_minus_lora"]["called"], bool)
    assert (out / "run_info.json").exists()
    for name in ("levels.png", "quant_error.png", "memory.png"):
        assert is_png(out / name)
    assert "| QLoRA NF4 r=8 |" in (out / "results.md").read_text()
    (tmp_path / "results").mkdir()
    (out).rename(tmp_path / "results" / "qlora")
    section = qlora.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in VERDICTS and show_difference(claim["qlora_minus_lora"]) in section["body"]
    with pytest.raises(SystemExit):
        qlora.main([*TOY, *corpora, "--seeds", "0", "--out", str(out)])
    assert "--seeds must be a positive integer like 3; got '0'" in capsys.readouterr().err


def test_qlora_claims_follow_the_numbers():
    summary = {"claim_1_quantization_error": {"nf4_lowest_on_gaussian": True, "nf4_lowest_on_weights": 24,
                                              "model_weights": 24},
               # 90% interval -0.0048 to +0.0088: inside the margin of 0.01, so QLoRA matches LoRA.
               "claim_2_qlora_matches_lora": {"qlora_minus_lora": {"mean": 0.002, "ci": 0.01, "n": 3, "called": False}},
               "claim_3_double_quant_bits": {"saving": 0.3725, "paper_saving": 4.5 - (4 + 8 / 64 + 32 / 16384)}}
    assert qlora.claim_verdicts(summary) == ("reproduced", "reproduced", "reproduced")
    worse = copy.deepcopy(summary)
    worse["claim_1_quantization_error"]["nf4_lowest_on_weights"] = 20
    worse["claim_2_qlora_matches_lora"]["qlora_minus_lora"] = {"mean": 0.02, "ci": 0.01, "n": 3, "called": True}
    worse["claim_3_double_quant_bits"]["saving"] = 0.30
    assert qlora.claim_verdicts(worse) == ("partly", "not reproduced", "partly")
    # Not called is no match: the same mean with a wide interval (it holds the margin) is not settled.
    wide = copy.deepcopy(summary)
    wide["claim_2_qlora_matches_lora"]["qlora_minus_lora"] = {"mean": 0.002, "ci": 0.03, "n": 3, "called": False}
    assert qlora.claim_verdicts(wide)[1] == "not settled: needs 5 seeds"
    # (4), QLoRA against full fine-tuning, where the rows hold the per-seed losses.
    rows = [{"key": "full", "final_target_loss": spread([1.40, 1.39, 1.41])},
            {"key": "nf4", "final_target_loss": spread([1.52, 1.53, 1.52])}]
    assert qlora.claim_verdicts({**summary, "rows": rows})[3] == "not reproduced"
    same = [rows[0], {"key": "nf4", "final_target_loss": spread([1.401, 1.392, 1.409])}]
    assert qlora.claim_verdicts({**summary, "rows": same})[3] == "reproduced"


def test_qlora_final_evaluation_can_be_sent_to_a_worker_process():
    """run_all sends each run's arguments to a spawned process, so final_eval must pickle."""
    import functools
    import pickle

    base = GPT(config_from_preset("tiny", n_layer=1, n_embd=32, n_head=2, block_size=16))
    batches = {"target": [(torch.zeros(2, 16, dtype=torch.long),) * 2], "source": [(torch.ones(2, 16, dtype=torch.long),) * 2]}
    fn = pickle.loads(pickle.dumps(functools.partial(qlora.qlora_final_eval, base, batches, "cpu")))
    model = apply_lora(copy.deepcopy(base), ["q_proj", "up_proj"], r=2, alpha=4, quantize="nf4")
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B, std=0.01)  # as if trained: delta W != 0
    result = fn(model)
    assert result["unloaded"]["target"] == pytest.approx(result["on_full_precision_base"]["target"], abs=0.05)
    assert set(result["requantization"]) == {"lost", "kept", "unchanged"}


def test_loraplus_end_to_end(tmp_path, corpora):
    out = tmp_path / "lp"
    loraplus.main([*TOY, *corpora, "--ratios", "1,4", "--ranks", "2", "--seeds", "2", "--out", str(out)])
    rows = read(out / "loraplus.json")["rows"]
    assert [(row["r"], row["ratio"]) for row in rows] == [(2, 1.0), (2, 4.0)]
    # "faster" reads the validation curves, so its goal is plain LoRA's validation loss; the table reports test
    assert rows[0]["vs_plain"]["mean"] == 0 and rows[0]["target"] == rows[0]["val_target_loss"]["mean"]
    records = read(out / "records.json")
    assert rows[1]["target_loss"]["values"] == [r["final_target_test_loss"] for r in records[2:]]
    assert rows[1]["val_target_loss"]["values"] == [r["final_target_loss"] for r in records[2:]]
    assert [r["variant"] for r in records] == ["lora", "lora", "loraplus", "loraplus"]  # lambda 1 is plain LoRA
    assert is_png(out / "loraplus.png")
    (tmp_path / "results").mkdir()
    out.rename(tmp_path / "results" / "loraplus")
    section = loraplus.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in VERDICTS and show_difference(rows[1]["vs_plain"]) in section["body"]
    with pytest.raises(SystemExit):
        loraplus.main([*TOY, *corpora, "--ratios", "0.5,4", "--out", str(out)])


def test_steps_to_reach_interpolates_between_evaluations():
    history = [{"step": 0, "target_loss": 2.0}, {"step": 100, "target_loss": 1.6}, {"step": 200, "target_loss": 1.4}]
    assert steps_to_reach(history, 1.5) == pytest.approx(150)
    assert steps_to_reach(history, 1.6) == pytest.approx(100)
    assert steps_to_reach(history, 1.3) is None


def test_rank_targets_end_to_end(tmp_path, corpora):
    out = tmp_path / "rt"
    rank_targets.main([*TOY, *corpora, "--ranks", "1,4", "--tune-r", "4", "--seeds", "2", "--out", str(out)])
    summary = read(out / "rank_targets.json")
    assert [(row["set"], row["r"]) for row in summary["rows"]] == [
        ("q", 1), ("q", 4), ("q,v", 1), ("q,v", 4), ("q,k,v,o", 1), ("q,k,v,o", 4)]
    for row in summary["rows"]:  # every rank of a set at the rate tuned for it at --tune-r
        assert row["lr"] == summary["tuning"][row["set"]]["best_lr"]
    assert [(g["set"], g["r"], g["versus_r"]) for g in summary["gaps_to_top_rank"]] == [
        ("q", 1, 4), ("q,v", 1, 4), ("q,k,v,o", 1, 4)]
    records = read(out / "records.json")  # rates are chosen on validation; the table reads the test half
    qv_r1 = [r for r in records if r["targets"] == ["q_proj", "v_proj"] and r["r"] == 1]
    assert summary["rows"][2]["target_loss"]["values"] == [r["final_target_test_loss"] for r in qv_r1]
    assert summary["scored_on"] == "test"
    assert is_png(out / "rank_targets.png")
    (tmp_path / "results").mkdir()
    out.rename(tmp_path / "results" / "rank_targets")
    section = rank_targets.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in VERDICTS
    assert show_difference(summary["gaps_to_top_rank"][1]["difference"]) in section["body"]


def test_rank_targets_verdict_needs_a_small_rank_that_matches_and_a_larger_gap_for_q_alone():
    def gap(name, r, values):
        return {"set": name, "r": r, "difference": paired([0.0] * len(values), values)}
    # q,v at r=2 within 0.002 of the top rank in every seed (matches); q alone 0.03-0.05 behind (beats q,v's gap).
    claim_holds = [gap("q", 1, [0.05, 0.051, 0.049]), gap("q", 2, [0.03, 0.031, 0.029]),
                   gap("q,v", 1, [0.02, 0.021, 0.019]), gap("q,v", 2, [0.001, 0.002, 0.0015])]
    verdict, competitive, q_needs_more, judged = rank_targets.judge(claim_holds)
    assert (verdict, competitive, q_needs_more) == ("reproduced", "reproduced", "reproduced")
    assert [c["rule"] for c in judged] == ["matches", "matches", "beats", "beats"]
    far = claim_holds[:3] + [gap("q,v", 2, [0.015, 0.016, 0.014])]  # no small rank within 0.01 of the top
    assert rank_targets.judge(far)[:3] == ("partly", "not reproduced", "reproduced")
    qv_worse = [gap("q", 1, [0.01] * 3), gap("q", 2, [0.01] * 3), gap("q,v", 1, [0.05, 0.051, 0.049]),
                gap("q,v", 2, [0.06, 0.061, 0.059])]
    assert rank_targets.judge(qv_worse)[:3] == ("not reproduced", "not reproduced", "not reproduced")


def test_tuning_widens_the_grid_while_the_best_rate_is_at_its_edge(tmp_path, corpora):
    """Six steps are far too few for any rate to overshoot, so the loss falls with the rate: the tuner
    must walk up the grid one rate per stage, max_extra times, and say the best is at the edge."""
    from experiments.lib.common import load_setup, make_parser, run_kwargs
    from experiments.lib.tuning import LR_GRID, grid_neighbours, tune

    args = make_parser("t", str(tmp_path / "out")).parse_args([*TOY, *corpora])
    base, base_key, source, target, device = load_setup(args)
    entry = dict(base=base, base_key=base_key, spec={"method": "full"}, target=target, source=source,
                 **run_kwargs(args, device))
    assert grid_neighbours(1.8e-4) == [1e-4, 1.8e-4, 3e-4]
    result = tune({"full": (entry, [1e-4, 1.8e-4, 3e-4])}, [1337, 1338], max_extra=2, progress=False)["full"]
    start = LR_GRID.index(1e-4)
    assert result["lrs"] == list(LR_GRID[start:start + 5]) and result["best_lr"] == 1e-3 and result["at_grid_edge"]
    assert result["losses"] == sorted(result["losses"], reverse=True)
    assert [r["seed"] for r in result["records"]] == [1337, 1338]
    assert all(r["lr"] == 1e-3 for r in result["records"])
    with pytest.raises(ValueError, match="not on the tuning grid"):
        grid_neighbours(2e-3)
    # --force retrains each run once, not once per stage that reads it back.
    from experiments.lib import runs
    runs.reset_counts()
    again = tune({"full": ({**entry, "force": True}, [1e-4, 1.8e-4, 3e-4])}, [1337, 1338], max_extra=2,
                 progress=False)["full"]
    assert runs.COUNTS["trained"] == 5 + 1  # five rates on the first seed, the chosen one on the second
    assert runs.COUNTS["planned"] == 5 + 1  # each stage plans the earlier rates again: counted once
    assert runs.COUNTS["sequences_planned"] == 6 * entry["steps"] * entry["batch_size"]  # what the six train
    assert again["losses"] == result["losses"]
