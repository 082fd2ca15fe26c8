"""The held-out test split: validation for every choice, test for the numbers reported.

load_corpus(test_split=True) cuts the held-out tail in two; a run on such corpora trains on the same
batches as without, is scored during training on validation only, and adds its base and final
losses on test. A tuner, which reads final_target_loss, never sees the test part."""
import pytest
import torch

from experiments.lib.finetune import run_finetune, run_key
from experiments.lib.tuning import tune
from nanogpt.data import load_corpus
from nanogpt.model import GPT, GPTConfig

TOY = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)
TEXT = "".join(f"def f{i}(a, b):\n    return a * {i * i % 97} + b\n" for i in range(80))  # not periodic


def corpus_file(tmp_path, text=TEXT):
    path = tmp_path / "toy.txt"
    path.write_text(text)
    return str(path)


def test_the_held_out_tail_is_cut_in_two_and_the_training_part_is_unchanged(tmp_path):
    path = corpus_file(tmp_path)
    plain = load_corpus(path, 16)
    split = load_corpus(path, 16, test_split=True)
    assert plain.test is None
    assert torch.equal(split.train, plain.train)  # the same training text: the same batches
    assert torch.equal(torch.cat([split.val, split.test]), plain.val)  # val first, test last, no overlap
    assert len(split.val) == len(plain.val) // 2
    assert split.sha256 == plain.sha256


def test_a_tail_too_short_for_two_halves_is_a_clear_error(tmp_path):
    path = corpus_file(tmp_path, "x" * 300)  # a held-out tail of 30 bytes: halves of 15 < 17
    load_corpus(path, 16)  # fine without the split
    with pytest.raises(ValueError, match="too short for a test split: .* halves of 15 bytes, but block_size=16 "
                                         "needs at least 17 bytes in each"):
        load_corpus(path, 16, test_split=True)


def toy_run(tmp_path, target, lr=1e-3, seed=0):
    torch.manual_seed(0)
    base = GPT(TOY)
    return run_finetune(base, "toy", {"method": "full", "lr": lr}, target, target, steps=4, batch_size=2, seed=seed,
                        device="cpu", cache_dir=str(tmp_path), eval_interval=2, eval_iters=2, progress=False)


def test_a_run_with_a_test_split_adds_test_losses_and_trains_the_same_batches(tmp_path):
    path = corpus_file(tmp_path)
    plain, split = load_corpus(path, 16), load_corpus(path, 16, test_split=True)
    a, b = toy_run(tmp_path / "a", plain), toy_run(tmp_path / "b", split)
    assert "final_target_test_loss" not in a
    assert a["train_loss"] == b["train_loss"]  # same training batches, same steps
    for key in ("base_target_test_loss", "final_target_test_loss", "base_source_test_loss", "final_source_test_loss"):
        assert torch.isfinite(torch.tensor(b[key]))
    # validation is the first half now: different numbers from the whole tail, and from test
    assert b["final_target_loss"] != a["final_target_loss"]
    assert b["final_target_test_loss"] != b["final_target_loss"]
    assert b["final_target_test_loss"] < b["base_target_test_loss"]  # it learned: the test text is the same kind
    key = dict(steps=4, batch_size=2, seed=0, device="cpu")
    assert run_key("toy", {"method": "full", "lr": 1e-3}, plain, plain, **key) != \
        run_key("toy", {"method": "full", "lr": 1e-3}, split, split, **key)


def test_the_tuner_chooses_on_validation_never_on_test(tmp_path, monkeypatch):
    """Two rates whose validation and test losses disagree: the tuner takes validation's choice."""
    import experiments.lib.tuning as tuning

    def fake_run_all(plan, **_):
        # rate 1e-3 is best on validation, 1.8e-3 on test
        return [{"final_target_loss": 1.0 if p["spec"]["lr"] == 1e-3 else 2.0,
                 "final_target_test_loss": 2.0 if p["spec"]["lr"] == 1e-3 else 1.0, "seed": p["seed"]} for p in plan]

    monkeypatch.setattr(tuning, "run_all", fake_run_all)
    out = tune({"full": ({"spec": {"method": "full"}}, [5.6e-4, 1e-3, 1.8e-3])}, [1, 2], progress=False)
    assert out["full"]["best_lr"] == 1e-3


def fake_runs(n=5, dora_gain=0.02):
    """Records per contender of experiments.settle, with validation and test losses set by hand."""
    import experiments.settle as settle

    def recs(val, test, src_val=2.0, src_test=2.0):
        return [{"final_target_loss": val + 0.001 * s, "final_target_test_loss": test + 0.001 * s,
                 "final_source_loss": src_val, "final_source_test_loss": src_test} for s in range(n)]

    runs = {name: recs(1.5, 1.5) for name in settle.TUNED}
    runs["DoRA r=8"] = recs(1.5, 1.5 - dora_gain)  # better on test only
    # full's front: (1.40, 2.10), (1.44, 2.00), (1.48, 1.90), (1.52, 1.80); LoRA at 1.46 sits 0.05 above it
    for lr, (t, src) in zip(settle.FRONT_FULL_LRS, [(1.52, 1.80), (1.48, 1.90), (1.44, 2.00), (1.40, 2.10)]):
        runs[f"full, lr {lr:g}"] = recs(t, t, src, src)
    runs[settle.FRONT_NAME] = recs(1.46, 1.46, 2.0, 2.0)
    for b, gap in zip(settle.BATCHES, (0.05, 0.10)):  # the gap widens by 0.05
        runs[f"full, batch {b}"] = recs(1.4, 1.4)
        runs[f"LoRA, batch {b}"] = recs(1.4 + gap, 1.4 + gap)
    return runs


def test_settle_signs_each_difference_as_its_claim_and_reads_the_split_asked_for():
    import experiments.settle as settle
    from experiments.lib import verdicts

    runs = fake_runs()
    test = {c["question"]: c for c in settle.judge(settle.differences(runs, "test", 5))}
    val = {c["question"]: c for c in settle.judge(settle.differences(runs, "val", 5))}
    assert test["DoRA beats LoRA at r=8"]["mean"] == pytest.approx(0.02)
    assert test["DoRA beats LoRA at r=8"]["outcome"] == verdicts.REPRODUCED
    assert val["DoRA beats LoRA at r=8"]["mean"] == pytest.approx(0.0)  # the gain is on test only
    front = test["LoRA r=64, lr 5.6e-3 lies on full's front"]
    # at LoRA's docs loss full's front reads 1.95 (halfway between its vertices at 1.44 and 1.48); LoRA's
    # source loss is 2.0, so it sits 0.05 above the front, well outside +-0.01: not on it
    assert front["rule"] == "matches" and front["mean"] == pytest.approx(0.05, abs=0.01)
    assert front["outcome"] == verdicts.NOT_REPRODUCED
    assert test["the gap widens from batch 6 to 96 (one rate)"]["mean"] == pytest.approx(0.05)
    assert test["four attention types at r=2 beat two at r=4"]["mean"] == pytest.approx(0.0)
    assert len(test) == len(settle.QUESTIONS)


def test_each_settle_question_is_worded_as_its_section_words_it():
    """settle() matches a section's comparison to its five-seed read by the question's text: a section
    that rewords one would silently keep its three-seed read. Read the committed sections' questions."""
    import experiments.settle as settle
    from experiments.report import Results, sections

    asked = {name: {c["question"] for c in s.get("comparisons", [])} for name, s in sections(Results())}
    for section, question, _, _ in settle.QUESTIONS:
        assert question in asked[section], (section, question, sorted(asked[section]))


def test_sections_are_numbered_in_ranges_and_marked_by_what_their_records_hold(tmp_path):
    import json

    from experiments.lib.write_up import held_out_sections, numbers_text
    from experiments.report import Results, on_test_split

    assert numbers_text([1, 2, 3, 5]) == "sections 1 to 3 and 5"
    assert numbers_text([14, 15]) == "sections 14 and 15"
    assert numbers_text([14]) == "section 14" and numbers_text([]) == "none"
    for folder, record in (("old", {"final_target_loss": 1.0}), ("new", {"final_target_loss": 1.0,
                                                                        "final_target_test_loss": 1.1})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "records.json").write_text(json.dumps([record]))
    results = Results(str(tmp_path))
    assert not on_test_split(results, "old") and on_test_split(results, "new")
    assert not on_test_split(results, "missing")
    marked = [("lr_sweep", {"test_split": False}), ("rank_sweep", {"test_split": False}), ("settle", {"test_split": True})]
    assert held_out_sections(marked) == "section 14"
    assert held_out_sections(marked, on_split=False) == "sections 1 and 2"
