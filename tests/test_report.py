"""REPRODUCTIONS.md and the README's results are generated from results/ (issue: science): the
committed Markdown must be exactly what the committed records give, and the generator must only
touch the marked blocks."""
import json
import os
import re
import shutil

import pytest

from experiments import report
from experiments.lib import verdicts
from experiments.report import Results, fill_blocks
from experiments.lib.write_up import VERDICTS


def test_the_committed_markdown_is_what_the_committed_records_give():
    for path, text in report.expected_files(Results()).items():
        with open(path) as f:
            committed = f.read()
        assert committed == text, f"{path} is out of date: run python -m experiments.report"


def test_every_section_has_a_verdict_from_the_list_and_its_plots_exist():
    for name, section in report.sections(Results()):
        assert section["verdict"] in VERDICTS, name
        for plot in re.findall(r"\]\(\.\./(results/[^)]+\.png)\)", section["body"]):
            assert os.path.exists(os.path.join(report.ROOT, plot)), (name, plot)


def test_the_sections_that_judged_by_their_own_thresholds_now_rest_on_the_shared_rules():
    """Sections 1, 5, 6, 7 return the comparisons their verdicts come from, and the verdict is what
    verdicts.combine makes of them (section 5 combines its two halves; section 7 is outside the
    claim's regime whatever its parts say), so the multiplicity count includes them."""
    by_name = dict(report.sections(Results()))
    for name in ("lr_sweep", "subspace", "update_spectrum", "capacity"):
        parts = by_name[name]["comparisons"]
        assert parts and all(c["rule"] in ("beats", "matches") and c["outcome"] in VERDICTS for c in parts), name
        assert all(verdicts.show(c) in by_name[name]["detail"] for c in parts), name
    outcomes = {name: [c["outcome"] for c in by_name[name].get("comparisons", [])] for name in by_name}
    assert by_name["lr_sweep"]["verdict"] == verdicts.combine(outcomes["lr_sweep"])
    assert by_name["update_spectrum"]["verdict"] == verdicts.combine(outcomes["update_spectrum"])
    sim, amp = outcomes["subspace"][:2], outcomes["subspace"][2:]
    assert by_name["subspace"]["verdict"] == verdicts.combine([verdicts.combine(sim), verdicts.combine(amp)])
    assert by_name["capacity"]["verdict"] == verdicts.REGIME
    counted = dict(verdicts.multiplicity(list(by_name.items()))["by_section"])
    assert all(counted[name] == len(by_name[name]["comparisons"]) for name in ("lr_sweep", "subspace", "capacity"))


def test_fill_blocks_rewrites_only_the_marked_blocks():
    text = ("intro\n<!-- BEGIN GENERATED: a -->\nold a\n<!-- END GENERATED: a -->\nmiddle\n"
            "<!-- BEGIN GENERATED: b -->\nold b\n<!-- END GENERATED: b -->\nend\n")
    out = fill_blocks(text, {"a": "new a\n"})
    assert out == text.replace("old a", "new a")
    assert fill_blocks(out, {"a": "new a"}) == out  # idempotent


def test_check_fails_and_names_the_file_when_a_record_changes(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    for name in ("lr_sweep", "rank_sweep_reproduction", "full_vs_lora"):  # the README block's inputs and the opening's
        shutil.copytree(os.path.join(Results().root, name), results / name)
    summary_path = results / "rank_sweep_reproduction" / "rank_sweep.json"
    summary = json.loads(summary_path.read_text())
    summary["groups"][0]["target_loss"]["mean"] += 0.5  # a record that no longer matches the text
    summary_path.write_text(json.dumps(summary))
    monkeypatch.setattr(report, "Results", lambda: Results(str(results)))
    assert report.main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().err


def test_relink_makes_the_blocks_links_relative_to_the_page_they_land_in():
    text = "![plot](results/a.png) [scale](docs/scale.md#memory) [web](https://example.com) [here](#top)"
    page = os.path.join(report.ROOT, "docs", "page.md")
    assert report.relink(text, page) == ("![plot](../results/a.png) [scale](scale.md#memory) "
                                         "[web](https://example.com) [here](#top)")
    assert report.relink(text, report.README) == text


def test_a_block_in_a_docs_page_is_rewritten_and_checked(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("no generated block here\n")
    page = tmp_path / "docs" / "speed.md"
    page.write_text("# Speed\n\n<!-- BEGIN GENERATED: speed -->\nstale\n<!-- END GENERATED: speed -->\n")
    monkeypatch.setattr(report, "ROOT", str(tmp_path))
    monkeypatch.setattr(report, "README", str(tmp_path / "README.md"))
    monkeypatch.setattr(report, "DOCS", str(tmp_path / "docs"))
    expected = report.expected_files(Results())
    assert str(tmp_path / "README.md") not in expected  # a file without blocks is not touched
    body = expected[str(page)]
    assert "stale" not in body and "](performance.md)" in body and "](docs/" not in body
    assert report.main(["--check"]) == 1
    assert "docs/speed.md" in capsys.readouterr().err


def test_the_quickstart_gives_the_reproductions_losses():
    """results/rank_sweep/ (the quickstart, one seed) and results/rank_sweep_reproduction/ (three seeds)
    share their runs: the same settings and seed must give the same losses (up to float rounding)."""
    path = os.path.join(Results().root, "rank_sweep", "records.json")
    if not os.path.exists(path):
        pytest.skip("results/rank_sweep/ has no records: the quickstart (python -m experiments.rank_sweep) not run yet")
    with open(path) as f:
        quick = json.load(f)
    reproduction = Results().json("rank_sweep_reproduction", "records.json")

    def key(r):
        return r["method"], r["variant"], r["r"], r["alpha"], r["lr"], r["steps"], r["batch_size"], r["seed"]

    twins = {key(r): r for r in reproduction}
    assert len(quick) == 6 and all(key(r) in twins for r in quick)
    for r in quick:
        twin = twins[key(r)]
        assert r["train_loss"] == pytest.approx(twin["train_loss"], abs=1e-6)
        for field in ("target_loss", "source_loss"):
            assert [h[field] for h in r["history"]] == pytest.approx([h[field] for h in twin["history"]], abs=1e-6)
        assert r["trainable_params"] == twin["trainable_params"]


def test_the_readmes_rank_sentences_follow_the_numbers():
    """Each ordering the main results state is checked: said as a rule only where every step obeys it."""
    from experiments.lib.rank_curve_text import rank_curve_text

    def group(docs, code):
        return {"target_loss": {"mean": docs, "ci": 0.01, "n": 3}, "source_loss": {"mean": code, "ci": 0.01, "n": 3}}

    full = group(1.30, 2.06)
    steady = {1: group(1.60, 1.80), 2: group(1.50, 1.85), 4: group(1.45, 1.90), 8: group(1.43, 1.95)}
    text = rank_curve_text(full, steady, {}, 1.82, 1.59).replace("\n", " ")
    assert "learns the prose best" in text and "more rank learns more" in text and "forgets more" in text
    assert "Each doubling of the rank buys less than the one before" in text and "even r=8 ends 0.130 above" in text
    # A gain that grows before it shrinks, a code loss that dips, LoRA below full at the top rank:
    uneven = {1: group(1.60, 1.80), 2: group(1.55, 1.85), 4: group(1.45, 1.84), 8: group(1.29, 1.95)}
    text = rank_curve_text(full, uneven, {8: group(1.25, 2.0)}, 1.82, 1.59).replace("\n", " ")
    assert "learns the prose best" not in text and "does not always forget more" in text
    assert "The gain per doubling of the rank is 0.050, 0.100, 0.160" in text
    assert "r=8 ends 0.010 below full" in text
    assert "too high" not in text and "below alpha/r's" in text  # rsLoRA ends below LoRA here
    assert "too high" in rank_curve_text(full, uneven, {8: group(1.40, 2.0)}, 1.82, 1.59)
