"""experiments/exact_match.py: the task's data, the exact-match scorer, distinct-n, and the report."""
import math

import pytest
import torch

from experiments.lib import exact_match_report as em_report
from experiments.lib import verdicts
from experiments.lib.format_task import (example_lines, fits, is_example, majority_share, make_task, pair_text,
                                         task_corpus, value_type)
from experiments.lib.seeds import paired, spread
from experiments.lib.task_metrics import distinct_n, exact_match, greedy_lines, task_eval
from nanogpt.data import python_code_bytes
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import decode


@pytest.mark.parametrize("line, answer", [
    ("x = 1", "int"), ("x = (1)", "int"), ("x = -1", "int"), ("x = 0x1f", "int"), ("x = (1,)", "tuple"),
    ("x = ()", "tuple"), ("x = {}", "dict"), ("x = {1}", "set"), ("x = {'a': 1}", "dict"), ("x = 1.0", "float"),
    ("x = 1e3", "float"), ("x = 'a'", "str"), ("x = b''", "bytes"), ("x = None", "NoneType"), ("x = True", "bool"),
    ("x = [f]", None), ("x = foo(1)", None), ("x = y", None), ("x == 1", None)])
def test_the_rule_is_the_type_python_gives_the_literal(line, answer):
    assert value_type(line) == answer


@pytest.mark.parametrize("line, ok", [
    ("x = 1", True), ("self._pos = (0, 0)", True), ("n = [1, 2]  # two", True),
    ("x = y = 0", False),  # two targets
    ("x += 1", False), ("x[0] = 1", False), ("a, b = 1, 2", False),  # not a single (dotted) name
    ("x = {", False),  # not a complete statement
    ("x = foo(1)", False),  # not a literal
    ("x = 'é'", False), ("x=1", False), (" x = 1", False), ("x =  1", False), ("x", False)])
def test_is_example_takes_simple_assignments_of_a_literal(line, ok):
    assert is_example(line) is ok


def test_example_lines_strip_indentation_drop_duplicates_and_respect_the_length():
    code = b"x = 1\n    y = 2\n\tx = 1\nlonger_name = 3\nz = {\nw = f(1)\n"
    assert example_lines(code, 64, 20) == ["x = 1", "y = 2", "longer_name = 3"]
    assert example_lines(code, 64, 5) == ["x = 1", "y = 2"]
    assert example_lines(code, 10, 20) == []  # "\nx = 1\nint\n" is 11 bytes: no block of 10 holds it
    assert fits("x = 1", 11) and not fits("x = 1", 10)


def test_the_three_sets_are_disjoint_and_fit():
    code = python_code_bytes()
    task = make_task(code, 64, 50)
    assert task == make_task(code, 64, 50)  # deterministic
    assert (len(task.val), len(task.test)) == (300, 300) and len(task.train) > 1000
    lines = {name: [p for p, _ in getattr(task, name)] for name in ("train", "val", "test")}
    for name, ls in lines.items():
        assert len(ls) == len(set(ls)), name  # no duplicates within a set
    assert not set(lines["train"]) & set(lines["val"])
    assert not set(lines["train"]) & set(lines["test"])
    assert not set(lines["val"]) & set(lines["test"])
    for prompt, answer in task.train + task.val + task.test:
        assert value_type(prompt) == answer and len(prompt) <= 50
        assert len(f"\n{prompt}\n{answer}\n") <= 64
    share, top = majority_share(task)
    assert top == "int" and share == sum(a == "int" for _, a in task.test) / 300
    with pytest.raises(ValueError, match="too few for 300 validation and 300 test prompts"):
        make_task(code, 64, 5)


def test_the_corpus_keeps_each_set_in_its_own_split():
    task = make_task(python_code_bytes(), 64, 50)
    corpus = task_corpus(task, 64)
    assert decode(corpus.train) == pair_text(task.train)
    assert decode(corpus.val) == pair_text(task.val) and decode(corpus.test) == pair_text(task.test)
    assert decode(corpus.val).startswith(f"{task.val[0][0]}\n{task.val[0][1]}\n")
    assert corpus.name.startswith("literal-types-") and len(corpus.sha256) == 64


def test_exact_match_counts_whole_lines_and_asks_for_just_enough_bytes():
    pairs = [("x = 1", "int"), ("ab = (1,)", "tuple"), ("y = 'a'", "str")]
    asked = {}

    def fake_generate(prompts, lengths):  # right, one byte short, one byte too many
        asked.update(prompts=prompts, lengths=lengths)
        return ["int", "tupl", "strr"]

    share, lines = exact_match(pairs, fake_generate)
    assert share == pytest.approx(1 / 3) and lines == ["int", "tupl", "strr"]
    assert asked == {"prompts": ["\nx = 1\n", "\nab = (1,)\n", "\ny = 'a'\n"], "lengths": [4, 6, 4]}


def greedy_alone(model, prompt, n):
    """Greedy decoding of one prompt, one byte at a time, with no batch and no cache."""
    ids = list(prompt.encode())
    for _ in range(n):
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    return decode(ids[len(prompt.encode()):]).split("\n")[0]


def test_greedy_lines_of_ragged_batched_prompts_are_each_prompts_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    prompts, lengths = ["\nx = 1\n", "\nabc = (1,)\n", "\nq\n"], [6, 4, 9]
    got = greedy_lines(model, prompts, lengths, batch_size=2)
    assert got == [greedy_alone(model, p, n) for p, n in zip(prompts, lengths)]


def test_distinct_n_on_known_strings():
    assert distinct_n(["abab"], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n(["ab", "ab"], 2) == 0.5  # pooled over texts
    assert distinct_n(["ab", "ba"], 2) == 1.0  # "ab" + "ba" would make "bb": n-grams do not cross texts
    assert distinct_n(["abc"], 3) == 1.0 and math.isnan(distinct_n(["ab"], 3))


def test_a_diverged_model_scores_nan_not_an_error():
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():
        model.wte.weight[0, 0] = math.nan
    out = task_eval(model, [("x = 1", "int")], [("y = 2", "int")], k=2, max_new_tokens=3)
    assert all(math.isnan(out[k]) for k in ("val_exact", "test_exact", "distinct_2", "distinct_3"))


def fake_summary(exact, distinct3, base_exact=0.0):
    """A summary json as exact_match.main writes it: exact and distinct3 map a contender to its per-seed values."""
    rows = []
    for name, values in exact.items():
        full = name == "full"
        rows.append({"name": name, "method": "full" if full else "lora", "r": None if full else int(name[2:]),
                     "lr": 1e-3, "trainable_params": 100, "tuning": {"lrs": [1e-3], "at_grid_edge": False,
                                                                      "val_exact": [0.5], "val_loss": [1.0]},
                     "test_exact": spread(values), "distinct_2": spread([0.2] * 3),
                     "distinct_3": spread(distinct3[name]), "target_test_loss": spread([1.0] * 3),
                     "source_test_loss": spread([2.0] * 3),
                     "shown": [{"prompt": "x = 1", "answer": "int", "generated": "int"}], "samples": ["a"]})
    by = {row["name"]: row for row in rows}
    from experiments.exact_match import differences
    return {"seeds": [1, 2, 3], "max_iters": 10, "targets": ["q_proj", "v_proj"], "alpha": 16.0, "max_len": 50,
            "samples": 8, "sample_bytes": 63, "sizes": {"train": 10, "val": 5, "test": 5},
            "majority": [0.25, "int"], "answers": ["int", "tuple"], "examples": [["x = (1)", "int"]], "base": {"test_exact": base_exact, "val_exact": 0.0, "distinct_2": 0.2,
                                                     "distinct_3": 0.5, "target_test_loss": 2.0,
                                                     "source_test_loss": 1.6},
            "rows": rows, "differences": differences(list(by.values()))}


def test_the_report_calls_matches_and_diversity_by_the_shared_rules(tmp_path):
    exact = {"full": [0.6, 0.62, 0.61], "r=1": [0.50, 0.51, 0.505], "r=2": [0.50, 0.52, 0.51],
             "r=8": [0.5, 0.5, 0.5], "r=64": [0.50, 0.51, 0.50]}
    d3 = {"full": [0.40, 0.41, 0.40], "r=1": [0.5] * 3, "r=2": [0.5] * 3, "r=8": [0.45, 0.46, 0.455],
          "r=64": [0.5] * 3}
    s = em_report.section(fake_summary(exact, d3))
    assert [c["question"] for c in s["comparisons"]] == [
        "r=1 matches r=64 in test exact match", "r=2 matches r=64 in test exact match",
        "LoRA r=8 keeps more diversity (distinct-3) than full fine-tuning"]
    assert [c["kind"] for c in s["comparisons"]] == ["exact", "exact", "distinct"]
    assert [c["outcome"] for c in s["comparisons"]] == [verdicts.REPRODUCED] * 3
    assert s["verdict"] == verdicts.REPRODUCED
    d = s["comparisons"][0]
    assert d["mean"] == pytest.approx(paired(exact["r=64"], exact["r=1"])["mean"])
    assert "![exact match and diversity against rank](../results/exact_match/exact_match.png)" in s["body"]
    # r=1 far behind r=64: that part is not reproduced, the section only partly.
    worse = {**exact, "r=1": [0.3, 0.31, 0.3]}
    s = em_report.section(fake_summary(worse, d3))
    assert s["comparisons"][0]["outcome"] == verdicts.NOT_REPRODUCED and s["verdict"] == verdicts.PARTLY


def test_a_task_nobody_learned_is_not_the_claims_regime():
    zero = {name: [0.0, 0.01, 0.0] for name in ("full", "r=1", "r=2", "r=8", "r=64")}
    d3 = {name: [0.5] * 3 for name in zero}
    s = em_report.section(fake_summary(zero, d3))
    assert s["comparisons"][0]["outcome"] == verdicts.REPRODUCED  # 0 matches 0 by the numbers...
    assert s["verdict"] == verdicts.REGIME  # ...but that is two failures agreeing
    assert "the task was not learned" in s["body"]


def test_the_plot_is_written(tmp_path):
    exact = {name: [0.5, 0.51, 0.5] for name in ("full", "r=1", "r=64")}
    d3 = {name: [0.5] * 3 for name in exact}
    path = em_report.plot_exact_match(fake_summary(exact, d3), str(tmp_path / "p.png"), "title")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_exact_match_end_to_end_at_toy_size(tmp_path, corpora):
    import json

    from experiments import exact_match
    from experiments.report import Results
    from tests.test_experiments import TOY, is_png

    toy = [a if a != "16" or TOY[i - 1] != "--block-size" else "32" for i, a in enumerate(TOY)]  # lines of <= 15 bytes
    out = tmp_path / "results" / "exact_match"
    exact_match.main([*toy, *corpora[:2], *corpora[4:], "--out", str(out), "--ranks", "1,16", "--seeds", "2",
                      "--samples", "4", "--max-extra", "0"])
    records = json.loads((out / "records.json").read_text())
    assert [(x["method"], x["r"]) for x in records] == [("full", None)] * 2 + [("lora", 1)] * 2 + [("lora", 16)] * 2
    for x in records:
        assert x["targets"] in (None, ["q_proj", "v_proj"])
        assert 0 <= x["final_eval"]["test_exact"] <= 1 and "final_target_test_loss" in x
    summary = json.loads((out / "exact_match.json").read_text())
    assert summary["sizes"]["test"] > 10 and len(summary["rows"]) == 3
    assert all(len(row["tuning"]["lrs"]) == len(row["tuning"]["val_exact"]) == 3 for row in summary["rows"])
    assert is_png(out / "exact_match.png")
    section = exact_match.report(Results(str(tmp_path / "results")))
    assert section["verdict"] in verdicts.VERDICTS and len(section["comparisons"]) == 1  # r=1 vs r=16 only
    info = json.loads((out / "run_info.json").read_text())
    assert info["runs_planned"] == info["runs_trained"] == 3 * 3 + 3  # three rates each, then the second seed


def test_a_target_flag_is_refused_before_any_work(tmp_path, corpora, capsys):
    from experiments import exact_match

    with pytest.raises(SystemExit):
        exact_match.main([*corpora, "--out", str(tmp_path / "out")])
    assert "--target" in capsys.readouterr().err and not (tmp_path / "cache").exists()


def test_the_tuner_chooses_by_the_score_it_is_given(monkeypatch):
    """exact_score: validation exact match first (here it disagrees with the validation loss), the
    loss only between equal matches; test numbers never enter."""
    import experiments.lib.tuning as tuning
    from experiments.exact_match import exact_score

    exact = {1e-3: 0.5, 1.8e-3: 0.7, 3e-3: 0.7, 5.6e-3: 0.1, 1e-2: 0.0}
    loss = {1e-3: 1.4, 1.8e-3: 1.3, 3e-3: 1.2, 5.6e-3: 0.9, 1e-2: 1.5}  # the loss alone would take 5.6e-3

    def fake_run_all(plan, **_):
        return [{"final_target_loss": loss[p["spec"]["lr"]], "seed": p["seed"],
                 "final_eval": {"val_exact": exact[p["spec"]["lr"]], "test_exact": 1.0 - exact[p["spec"]["lr"]]}}
                for p in plan]

    monkeypatch.setattr(tuning, "run_all", fake_run_all)
    rates = [1e-3, 1.8e-3, 3e-3, 5.6e-3, 1e-2]
    assert tuning.tune({"a": ({"spec": {}}, rates)}, [1], progress=False)["a"]["best_lr"] == 5.6e-3
    out = tuning.tune({"a": ({"spec": {}}, rates)}, [1], progress=False, score=exact_score)
    assert out["a"]["best_lr"] == 3e-3  # 0.7 at both 1.8e-3 and 3e-3: the lower loss breaks the tie
    assert math.isnan(exact_score({"final_target_loss": 1.0, "final_eval": {"val_exact": math.nan}}))  # tune: worst
