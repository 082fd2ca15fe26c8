"""The held-out test split: validation for every choice, test for the numbers reported.

load_corpus(test_split=True) cuts the held-out tail in two; a run on such corpora trains on the same
batches as without, is scored during training on validation only, and adds its base and final
losses on test. A tuner, which reads final_target_loss, never sees the test part."""
import pytest
import torch

from experiments.lib.finetune import run_finetune, run_key
from experiments.lib.tuning import tune
from nanogpt.data import Corpus, load_corpus
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


def test_corpus_without_a_test_part_is_the_old_corpus():
    data = torch.arange(100, dtype=torch.uint8)
    corpus = Corpus("toy", data, data[:40], "0" * 64)
    assert corpus.test is None and corpus.val_bytes_per_token == 1.0
