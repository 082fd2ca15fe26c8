"""REPRODUCTIONS.md and the README's results are generated from results/ (issue: science): the
committed Markdown must be exactly what the committed records give, and the generator must only
touch the marked blocks."""
import json
import os
import re
import shutil

from experiments import report
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


def test_fill_blocks_rewrites_only_the_marked_blocks():
    text = ("intro\n<!-- BEGIN GENERATED: a -->\nold a\n<!-- END GENERATED: a -->\nmiddle\n"
            "<!-- BEGIN GENERATED: b -->\nold b\n<!-- END GENERATED: b -->\nend\n")
    out = fill_blocks(text, {"a": "new a\n"})
    assert out == text.replace("old a", "new a")
    assert fill_blocks(out, {"a": "new a"}) == out  # idempotent


def test_check_fails_and_names_the_file_when_a_record_changes(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    for name in ("lr_sweep", "rank_sweep", "full_vs_lora"):  # the README block's inputs and the opening's
        shutil.copytree(os.path.join(Results().root, name), results / name)
    summary_path = results / "rank_sweep" / "rank_sweep.json"
    summary = json.loads(summary_path.read_text())
    summary["groups"][0]["target_loss"]["mean"] += 0.5  # a record that no longer matches the text
    summary_path.write_text(json.dumps(summary))
    monkeypatch.setattr(report, "Results", lambda: Results(str(results)))
    assert report.main(["--check"]) == 1
    assert "README.md" in capsys.readouterr().err
