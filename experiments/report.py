"""REPRODUCTIONS.md and the results in README.md and docs/, written from the committed records in results/.

    python -m experiments.report            # rewrite REPRODUCTIONS.md and the generated blocks of README.md and docs/*.md
    python -m experiments.report --check    # exit 1, saying where, if they differ from what results/ gives

Nothing in those tables is typed by hand: each experiment module has a `report(results)` that
reads its own records and returns its section (claim, command, plot, the numbers and the verdict
text around them), and this module puts the sections together. tests/test_report.py fails when
the committed Markdown is not what the committed records give.

README.md and the pages in docs/ hold generated blocks between `<!-- BEGIN GENERATED: name -->`
and `<!-- END GENERATED: name -->`; only those are rewritten. A block may sit in any of these files:
its links are written from the repository's root and made relative to the file it lands in.
"""
import argparse
import difflib
import glob
import importlib
import json
import os
import re
import sys

from experiments.lib.sections import SECTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPRODUCTIONS = os.path.join(ROOT, "experiments", "REPRODUCTIONS.md")
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                   re.DOTALL)
# A Markdown link's target: `](path)` or `](path#anchor)`; web addresses and bare anchors are left alone.
LINK = re.compile(r"(\]\()(?!https?:|mailto:|#|/)([^)\s#]+)")


class Results:
    """Reads results/<experiment>/<file>; `has` says whether an experiment has been run."""

    def __init__(self, root=os.path.join(ROOT, "results")):
        self.root = root

    def has(self, experiment, name="run_info.json"):
        return os.path.exists(os.path.join(self.root, experiment, name))

    def json(self, experiment, name):
        with open(os.path.join(self.root, experiment, name)) as f:
            return json.load(f)


def sections(results):
    """[(module name, section dict)] for every experiment that has results (in results/<name>/, or
    in the module's REPORT_FOLDER where its default run is not the one the section reports)."""
    out = []
    for name in SECTIONS:
        module = importlib.import_module(f"experiments.{name}")
        folder = getattr(module, "REPORT_FOLDER", name)
        if results.has(folder):
            out.append((name, {**module.report(results), "test_split": on_test_split(results, folder)}))
    return out


def on_test_split(results, folder):
    """Whether an experiment's runs were scored on the held-out test split (their records say so)."""
    if not results.has(folder, "records.json"):
        return False
    records = results.json(folder, "records.json")
    return any(isinstance(r, dict) and "final_target_test_loss" in r for r in records)


def readme_blocks(results, secs=None):
    from experiments.lib.write_up import readme_blocks as blocks

    return blocks(results, secs)


def fill_blocks(text, blocks):
    """text with each generated block's body replaced by blocks[name] (blocks it lacks: unchanged)."""
    def replace(m):
        name = m.group("name")
        body = blocks.get(name, m.group("body"))
        return m.group(1) + body.rstrip("\n") + "\n" + m.group(4)
    return BLOCK.sub(replace, text)


def relink(body, path):
    """body, whose relative links are written from the repository's root, with each link made
    relative to path's folder: `results/x.png` in docs/results.md becomes `../results/x.png`."""
    folder = os.path.dirname(path)
    return LINK.sub(lambda m: m.group(1) + os.path.relpath(os.path.join(ROOT, m.group(2)), folder), body)


def block_files():
    """README.md and docs/*.md that hold at least one generated block: {path: its text}."""
    out = {}
    for path in [README] + sorted(glob.glob(os.path.join(DOCS, "*.md"))):
        with open(path) as f:
            text = f.read()
        if BLOCK.search(text):
            out[path] = text
    return out


def expected_files(results):
    """{path: the content the records give}."""
    from experiments.lib.write_up import document  # the prose around the sections

    secs = sections(results)
    blocks = readme_blocks(results, secs)
    out = {REPRODUCTIONS: document(results, secs)}
    for path, text in block_files().items():
        out[path] = fill_blocks(text, {name: relink(body, path) for name, body in blocks.items()})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = p.parse_args(argv)
    stale = []
    for path, text in expected_files(Results()).items():
        current = open(path).read() if os.path.exists(path) else ""
        if current == text:
            continue
        stale.append(path)
        if args.check:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "committed", "from results/",
                                        lineterm="", n=1)
            print("\n".join(list(diff)[:40]))
        else:
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
            print(f"wrote {os.path.relpath(path, ROOT)}")
    if args.check and stale:
        print(f"out of date: {', '.join(os.path.relpath(p, ROOT) for p in stale)}; "
              f"regenerate with: python -m experiments.report", file=sys.stderr)
        return 1
    if not stale:
        print("REPRODUCTIONS.md and the generated blocks of README.md and docs/ are what results/ gives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
