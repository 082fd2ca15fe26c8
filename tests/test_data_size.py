"""experiments/data_size.py: the cut fine-tuning sets, the flag's errors, and the verdict its report
draws from a results folder (toy runs and hand-made summaries)."""
import argparse
import json

import pytest
import torch

from experiments import data_size
from experiments.lib import verdicts
from experiments.lib.finetune import run_key
from experiments.lib.seeds import paired, spread
from experiments.report import Results
from nanogpt.data import load_corpus
from tests.test_experiments import TOY, is_png

TEXT = "".join(f"Item {i} costs {i * i % 89} coins; it weighs {i % 7} stones.\n" for i in range(120))  # not periodic


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text(TEXT)
    return load_corpus(str(path), 16, test_split=True)


def test_a_cut_keeps_the_first_bytes_and_the_corpus_own_validation_and_test(corpus):
    cut = data_size.first_bytes(corpus, 300)
    assert torch.equal(cut.train, corpus.train[:300])
    assert cut.val is corpus.val and cut.test is corpus.test  # held-out text untouched
    assert "300" in cut.name
    assert data_size.first_bytes(corpus, len(corpus.train)) is corpus  # the whole: the corpus itself, its own key


def test_every_size_has_its_own_cache_key_and_the_same_size_the_same(corpus):
    spec = {"method": "full", "lr": 1e-3}
    keys = [run_key("base", spec, data_size.first_bytes(corpus, n), corpus, steps=4, batch_size=2, seed=0, device="cpu")
            for n in (100, 300, len(corpus.train), 300)]
    assert len(set(keys[:3])) == 3 and keys[1] == keys[3]
    shas = {data_size.first_bytes(corpus, n).sha256 for n in (100, 300)}
    assert corpus.sha256 not in shas and len(shas) == 2


def test_sizes_are_checked_against_the_training_part(corpus):
    whole = len(corpus.train)
    assert data_size.sizes_in_bytes([300, 100, "all"], corpus, 16) == [100, 300, whole]
    with pytest.raises(ValueError, match=f"{whole + 1} bytes is more than the training part .* holds \\({whole} bytes"):
        data_size.sizes_in_bytes([100, whole + 1], corpus, 16)
    with pytest.raises(ValueError, match="16 bytes is less than one training window"):
        data_size.sizes_in_bytes([16, "all"], corpus, 16)
    with pytest.raises(ValueError, match="one size only"):
        data_size.sizes_in_bytes([whole, "all"], corpus, 16)
    with pytest.raises(ValueError, match="cannot cut"):
        data_size.first_bytes(corpus, whole + 1)


def test_the_sizes_flag():
    assert data_size.parse_sizes("32768,4096,all") == [4096, 32768, "all"]
    for bad in ("4096", "4096,abc", "0,4096", "all", "4k,8k"):
        with pytest.raises(argparse.ArgumentTypeError, match="--sizes must be two or more"):
            data_size.parse_sizes(bad)


def test_a_size_beyond_the_training_text_stops_the_command_before_any_work(tmp_path, corpora, capsys):
    with pytest.raises(SystemExit):
        data_size.main([*TOY, *corpora, "--sizes", "256,99999999", "--out", str(tmp_path / "out")])
    assert "--sizes: 99999999 bytes is more than the training part" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("base-*"))  # no base model was made
    with pytest.raises(SystemExit):
        data_size.main([*TOY, *corpora, "--full-lr", "2e-3", "--out", str(tmp_path / "out")])
    assert "--full-lr 0.002 is where this experiment starts tuning" in capsys.readouterr().err


def test_data_size_end_to_end(tmp_path, corpora):
    out = tmp_path / "results" / "data_size"
    i = TOY.index("--eval-interval")
    toy = TOY[:i] + TOY[i + 2:]  # the default: evaluate at the start and the end only
    data_size.main([*toy, *corpora, "--sizes", "256,all", "--ranks", "2", "--seeds", "2", "--max-extra", "0",
                    "--early-stopping", "--shorter-runs", "3", "--out", str(out)])
    summary = json.loads((out / "data_size.json").read_text())
    whole = summary["whole"]
    assert summary["sizes"] == [256, whole] and summary["contenders"] == ["full", "r=2"]
    assert [(row["name"], row["size"]) for row in summary["rows"]] == [("full", 256), ("r=2", 256), ("full", whole),
                                                                      ("r=2", whole)]
    records = json.loads((out / "records.json").read_text())
    early = summary["early"]
    assert early["lengths"] == [6, 3]  # --max-iters (TOY) and --shorter-runs
    shortened = [row for row in early["rows"] if row["steps"] == 3]
    assert len(records) == 8 + 2 * len(shortened)  # 4 cells x 2 seeds, then the seeds of each shorter choice
    for k, row in enumerate(summary["rows"]):
        runs = records[2 * k:2 * k + 2]
        assert all(x["lr"] == row["lr"] for x in runs)
        assert row["test_loss"]["values"] == [x["final_target_test_loss"] for x in runs]  # reported: test
        assert row["tuning"]["losses"][row["tuning"]["lrs"].index(row["lr"])] == runs[0]["final_target_loss"]
        assert [h["step"] for h in runs[0]["history"]] == [0, 6]  # evaluated at the start and the end only
    assert records[0]["target_sha256"] != records[4]["target_sha256"]  # the 256-byte cut is its own corpus
    first = {d["size"]: d["difference"] for d in summary["differences"]}
    assert first[256]["values"] == pytest.approx([b - a for a, b in zip(summary["rows"][0]["test_loss"]["values"],
                                                                        summary["rows"][1]["test_loss"]["values"])])
    for row, fixed in zip(early["rows"], summary["rows"]):  # early stopping: the length chosen on validation
        assert (row["name"], row["size"]) == (fixed["name"], fixed["size"])
        losses = {int(k): v["loss"] for k, v in row["by_length"].items()}
        assert row["steps"] == min(losses, key=losses.get)
        assert losses[6] == min(fixed["tuning"]["losses"]) and row["by_length"][str(row["steps"])]["lr"] == row["lr"]
        runs = [x for x in records if x["steps"] == row["steps"] and x["lr"] == row["lr"]
                and x["target_sha256"] == records[0 if row["size"] == 256 else 4]["target_sha256"]
                and (x["method"] == "full") == (row["name"] == "full")]
        assert row["test_loss"]["values"] == [x["final_target_test_loss"] for x in runs]
    assert is_png(out / "data_size.png") and (out / "run_info.json").exists()
    section = data_size.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in verdicts.VERDICTS and len(section["comparisons"]) == 3  # 2 matches + 1 beats
    assert "held-out test text" in section["body"] and "**Early stopping.**" in section["body"]
    with pytest.raises(SystemExit):  # a shorter run must be shorter
        data_size.main([*toy, *corpora, "--shorter-runs", "6", "--out", str(tmp_path / "x")])


def fake_summary(gaps, sizes=(4096, 32768, 419577), ranks=(1, 16), base=1.8):
    """A data_size.json by hand: full fine-tuning's test losses, and LoRA's = full's + gaps[(r, size)] seed by seed."""
    full = [1.50, 1.52, 1.49]
    rows, differences = [], []
    for n in sizes:
        rows.append({"name": "full", "method": "full", "r": None, "size": n, "lr": 1e-3, "trainable_params": 800_000,
                     "tuning": {"lrs": [5.6e-4, 1e-3, 1.8e-3], "losses": [1.6, 1.5, 1.55], "at_grid_edge": False},
                     "test_loss": spread(full), "source_test_loss": spread([2.0] * 3),
                     "train_loss_end": spread([1.2 if n == sizes[0] else 1.45] * 3)})
        for r in ranks:
            lora = [f + g for f, g in zip(full, gaps[(r, n)])]
            rows.append({**rows[0], "name": f"r={r}", "method": "lora", "r": r, "size": n, "test_loss": spread(lora),
                         "trainable_params": 9216 * r})
            differences.append({"r": r, "size": n, "difference": paired(full, lora)})
    return {"seeds": [1, 2, 3], "steps": 300, "batch_size": 12, "block_size": 64, "bytes_drawn": 230400,
            "whole": sizes[-1], "sizes": list(sizes), "ranks": list(ranks),
            "contenders": ["full"] + [f"r={r}" for r in ranks], "max_extra": 1, "alpha": 16.0,
            "targets": ["q_proj", "v_proj"], "base_test_loss": base, "rows": rows, "differences": differences}


class Fake:
    def __init__(self, summary):
        self.summary = summary

    def json(self, experiment, name):
        assert (experiment, name) == ("data_size", "data_size.json")
        return self.summary


SAME = [0.001, -0.001, 0.0]  # a match: the 90% interval well inside +-0.01
BEHIND = [0.05, 0.06, 0.055]  # called, above delta


def test_the_claim_as_the_paper_tells_it_is_reproduced():
    gaps = {(1, 4096): SAME, (16, 4096): SAME, (1, 32768): BEHIND, (16, 32768): SAME,
            (1, 419577): BEHIND, (16, 419577): BEHIND}
    summary = fake_summary(gaps)
    verdict, parts, judged, points = data_size.judge(summary)
    assert parts == [verdicts.REPRODUCED] * 3 and verdict == verdicts.REPRODUCED
    assert points == {1: 4096, 16: 32768}  # r=16 keeps up to the middle size
    for d in summary["differences"]:  # every comparison is the shared rule's
        assert judged[("matches", d["r"], d["size"])] == verdicts.matches(
            d["difference"], "loss", f"LoRA r={d['r']} matches full fine-tuning on {data_size.kib(d['size'])}")
    assert judged[("beats", 1, 419577)]["outcome"] == verdicts.REPRODUCED
    section = data_size.report(Fake(summary))
    assert section["verdict"] == verdicts.REPRODUCED and len(section["comparisons"]) == 6 + 2
    assert "r=1: up to 4 KB; r=16: up to 32 KB" in section["body"]
    assert ("on q_proj, v_proj, alpha 16; full fine-tuning: 800,000 trainable parameters, LoRA r=1: 9,216"
            in section["body"])
    assert "Not past the start" in section["body"]  # full ends below the base model on every set


def test_lora_behind_everywhere_is_not_a_match_and_overfitting_is_said():
    gaps = {(r, n): BEHIND for r in (1, 16) for n in (4096, 32768, 419577)}
    summary = fake_summary(gaps, base=1.45)  # full ends above the base model's test loss
    verdict, parts, _, points = data_size.judge(summary)
    assert parts == [verdicts.NOT_REPRODUCED, verdicts.REPRODUCED, verdicts.NOT_REPRODUCED]
    assert verdict == verdicts.PARTLY and points == {1: None, 16: None}
    section = data_size.report(Fake(summary))
    assert "r=1: at no size; r=16: at no size" in section["body"]
    assert "Yes, past the start: on 4 KB, 32 KB, 409.7 KB" in section["body"]


def test_a_wide_interval_at_the_small_set_is_not_settled():
    wide = [0.02, -0.015, 0.0]  # mean near 0, but the 90% interval crosses the margin
    gaps = {(1, 4096): wide, (16, 4096): wide, (1, 419577): BEHIND, (16, 419577): BEHIND}
    verdict, parts, _, _ = data_size.judge(fake_summary(gaps, sizes=(4096, 419577)))
    assert parts[0] == verdicts.NOT_SETTLED and parts[2] == verdicts.NOT_SETTLED
    assert verdict == verdicts.PARTLY


def test_lora_ahead_on_a_small_set_is_said_and_is_no_match():
    gaps = {(1, 4096): [-0.05, -0.06, -0.055], (16, 4096): SAME, (1, 419577): BEHIND, (16, 419577): BEHIND}
    summary = fake_summary(gaps, sizes=(4096, 419577))
    _, parts, judged, _ = data_size.judge(summary)
    assert judged[("matches", 1, 4096)]["outcome"] == verdicts.NOT_REPRODUCED and parts[0] == verdicts.REPRODUCED
    body = data_size.report(Fake(summary))["body"]
    assert "LoRA ends ahead of full fine-tuning, a called negative gap, at r=1 on 4 KB (-0.055" in body
    assert "at no size" in data_size.ahead(fake_summary({k: BEHIND for k in gaps}, sizes=(4096, 419577)))


def test_a_rate_at_the_low_edge_and_a_loss_above_the_base_are_said():
    summary = fake_summary({(r, n): BEHIND for r in (1, 16) for n in (4096, 419577)}, sizes=(4096, 419577), base=1.51)
    summary["rows"][0] = {**summary["rows"][0], "lr": 5.6e-4,
                          "tuning": {"lrs": [5.6e-4, 1e-3, 1.8e-3], "losses": [1.4, 1.5, 1.6], "at_grid_edge": True}}
    note = data_size.edge_note(summary)
    assert note.startswith("The tuned rate of full fine-tuning on 4 KB sat at the lowest rate tried")
    assert "LoRA r=16 on 409.7 KB end worse on test than the base model (1.510)" in note  # LoRA means 1.562 > 1.51
    assert "Full fine-tuning on 4 KB" not in note  # full's 1.503 is below the base
    assert "1 of 6 tuned rates at the edge" in data_size.report(Fake(summary))["detail"]


def test_the_gap_by_rank_is_described_where_every_rank_is_behind():
    gaps = {(1, 4096): SAME, (16, 4096): SAME, (1, 419577): BEHIND, (16, 419577): [0.02, 0.021, 0.019]}
    text = data_size.behind(fake_summary(gaps, sizes=(4096, 419577)))
    assert text.endswith("rests on it): 409.7 KB: r=1 +0.055, r=16 +0.020.")


def test_the_section_names_the_command_that_wrote_it():
    """REPRODUCTIONS' run adds two seeds to the default three: the section must say so."""
    assert data_size.command_of({"seeds": [1337, 1338, 1339]}) == "python -m experiments.data_size"
    assert data_size.command_of({"seeds": list(range(1337, 1342))}) == "python -m experiments.data_size --seeds 5"
    assert (data_size.command_of({"seeds": list(range(1337, 1342)), "early": {"rows": []}})
            == "python -m experiments.data_size --seeds 5 --early-stopping")


def test_a_match_between_runs_that_barely_learned_is_not_tested_in_the_claims_regime():
    gaps = {(1, 4096): SAME, (16, 4096): SAME, (1, 419577): BEHIND, (16, 419577): BEHIND}
    summary = fake_summary(gaps, sizes=(4096, 419577), base=1.53)  # full ends 0.027 below the base on 4 KB
    for row in summary["rows"]:
        if row["size"] == 4096:  # every 4 KB run at the lowest rate tried, at the grid's edge
            row.update(lr=5.6e-4, tuning={**row["tuning"], "at_grid_edge": True})
    verdict, parts, judged, _ = data_size.judge(summary)
    assert judged[("matches", 1, 4096)]["outcome"] == verdicts.REPRODUCED  # the rule alone would call a match
    assert parts[0] == verdicts.REGIME and verdict == verdicts.PARTLY
    body = data_size.report(Fake(summary))["body"]
    assert "too little to test whether a low rank holds what full fine-tuning learns" in body
    summary["base_test_loss"] = 1.60  # moved 0.1: the runs learned, so the match counts
    assert data_size.judge(summary)[1][0] == verdicts.REPRODUCED
