"""Every relative link in the project's Markdown resolves (issue: readme): in README.md,
docs/*.md, notebooks/README.md and experiments/REPRODUCTIONS.md, each `[text](path)` and
`[text](path#anchor)` (images too) names a file or folder inside the repository, and an anchor
names a heading of the Markdown file it points to, by GitHub's rule for heading ids. And the
README stays short: at most 300 lines."""
import pathlib
import re
from urllib.parse import unquote

ROOT = pathlib.Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)  # fenced code blocks: their brackets are code
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) or ![alt](target), with an optional "title"; the text may hold one level of [...].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.M)
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...: not a file


def markdown_files(root=ROOT):
    """The pages whose links are checked."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "notebooks" / "README.md",
            root / "experiments" / "REPRODUCTIONS.md"]


def link_targets(text):
    """The link targets of a Markdown text, outside fenced code blocks and code spans."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", text)))


def slug(heading):
    """GitHub's id for a heading: its text as rendered, lower-cased, with every character that is
    not a letter, a digit, a space, '-' or '_' dropped, and each space made a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags show nothing
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(text):
    """Every id a Markdown page defines: one per heading (a repeated heading gets -1, -2, ...)
    and HTML `<a name=...>` / `<a id=...>`."""
    ids, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        ids.add(base if n == 0 else f"{base}-{n}")
    return ids | set(HTML_ID.findall(text))


def broken_links(root=ROOT):
    """['page: target (why)'] for every relative link that does not resolve."""
    root = pathlib.Path(root).resolve()
    broken = []
    for page in markdown_files(root):
        if not page.exists():
            broken.append(f"{page.relative_to(root)}: the page itself is missing")
            continue
        text = page.read_text(encoding="utf-8")
        for target in link_targets(text):
            if SCHEME.match(target):
                continue
            path, _, anchor = unquote(target).partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(root)}: {target}"
            if not dest.is_relative_to(root):
                broken.append(f"{where} (outside the repository)")
            elif not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                broken.append(f"{where} (no heading with the id '{anchor}')")
    return broken


def test_every_relative_link_in_the_docs_resolves():
    assert broken_links() == []


def test_the_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference to a page in docs/"


def test_a_broken_link_or_anchor_is_found_and_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "experiments").mkdir()
    (tmp_path / "notebooks" / "README.md").write_text("[up](../README.md#the-main-result-the-tiny-gpt)\n")
    (tmp_path / "experiments" / "REPRODUCTIONS.md").write_text("![plot](../results/a.png)\n")
    (tmp_path / "docs" / "usage.md").write_text(
        "# Usage\n\n## Is LoRA faster?\n\n## Is LoRA faster?\n\n[self](#is-lora-faster-1) [back](../README.md)\n")
    (tmp_path / "README.md").write_text(
        "# Title\n\n## The main result: the tiny GPT\n\n"
        "[ok](docs/usage.md#is-lora-faster) [`code`](docs/usage.md) [web](https://example.com/x.md)\n"
        "[gone](docs/missing.md) [bad anchor](docs/usage.md#is-lora-slower)\n"
        "[escape](../outside.md) `[not a link](nowhere.md)`\n\n```\n[in a code block](nowhere.md)\n```\n")
    assert broken_links(tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: docs/usage.md#is-lora-slower (no heading with the id 'is-lora-slower')",
        "README.md: ../outside.md (outside the repository)",
        "experiments/REPRODUCTIONS.md: ../results/a.png (no such file)",
    ]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.png").write_bytes(b"")
    assert "experiments/REPRODUCTIONS.md: ../results/a.png (no such file)" not in broken_links(tmp_path)


def test_heading_ids_follow_githubs_rule():
    assert slug("Is LoRA faster?") == "is-lora-faster"
    assert slug("How LoRA's savings grow with the model") == "how-loras-savings-grow-with-the-model"
    assert slug("Notation: the paper, the code, the articles") == "notation-the-paper-the-code-the-articles"
    assert slug("`nanogpt.train` and [the docs](docs/x.md)") == "nanogpttrain-and-the-docs"
    assert slug("A frozen base larger than one device (not built)") == "a-frozen-base-larger-than-one-device-not-built"
    assert anchors("# A\n\n## A\n\n```\n# not a heading\n```\n") == {"a", "a-1"}
