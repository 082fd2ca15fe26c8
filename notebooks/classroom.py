"""The teacher's commands for the classroom notebooks (run from the repository's root):

    python notebooks/classroom.py prepare            # before class: pretrain and cache the base model
    python notebooks/classroom.py execute            # run every notebook at its defaults, save, stamp
    python notebooks/classroom.py execute 02 04      # only the notebooks whose names start so
    python notebooks/classroom.py student            # notebooks/student/: no solutions, no outputs
    python notebooks/classroom.py check              # which committed notebooks are stale, and why

Each notebook is its own source: edit the .ipynb in Jupyter, then `execute` it so its saved
outputs come from the code as it is now. `execute` stamps the notebook's metadata with the
SHA-256 of its code cells and of every project file its kernel imported (minilora/, nanogpt/,
experiments/, notebooks/notebook_setup.py); tests/test_notebooks.py fails when any of them has
changed since, naming the files and this command.
"""
import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parent
ROOT = NB_DIR.parent
STAMP = "minilora"  # the notebook metadata key that holds the stamp
SOLUTION_TAG = "solution"  # cell tag of an exercise's solution: left out of the student version
STUDENT_DIR = NB_DIR / "student"
EXECUTE_TIMEOUT_S = 1800  # per cell

# Run in the kernel after the notebook's cells: which of the project's files it imported.
LOADED_FILES = r'''
import json as _json, os as _os, sys as _sys
_root = {root!r}
_files = set()
for _m in list(_sys.modules.values()):
    _f = getattr(_m, "__file__", None) or ""
    _rel = _os.path.relpath(_os.path.realpath(_f), _root) if _os.path.isabs(_f) and _os.path.isfile(_f) else ".."
    if _rel.endswith(".py") and not _rel.startswith(".") and "site-packages" not in _rel:
        _files.add(_rel.replace(_os.sep, "/"))
print(_json.dumps(sorted(_files)))
'''


def notebooks():
    """The classroom notebooks, in order: every notebooks/NN_*.ipynb (new ones are picked up)."""
    return sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_sha256(nb):
    """One hash of the notebook's code cells, in order: edit a code cell and the stamp is stale."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode() + b"\0")
    return digest.hexdigest()


def stale_reasons(nb, root=ROOT):
    """Why this notebook's saved outputs may not be what its code gives now ([] = fresh)."""
    stamp = nb.metadata.get(STAMP)
    if not stamp:
        return ["it was never executed with `classroom.py execute` (no stamp in its metadata)"]
    reasons = []
    if stamp.get("mode") != "default":
        reasons.append(f"its outputs are from mode {stamp.get('mode')!r}, not the default settings")
    if stamp.get("code_sha256") != code_sha256(nb):
        reasons.append("its code cells were edited after it was executed")
    for rel, digest in sorted(stamp.get("sources", {}).items()):
        path = Path(root) / rel
        if not path.is_file():
            reasons.append(f"{rel} (imported when it ran) no longer exists")
        elif file_sha256(path) != digest:
            reasons.append(f"{rel} changed since it ran")
    return reasons


def run_cells(nb, client, times=1):
    """Execute each code cell `times` times in a row (times=2: proves a cell can be re-run)."""
    for index, cell in enumerate(nb.cells):
        for _ in range(times if cell.cell_type == "code" else 1):
            client.execute_cell(cell, index)


def execute(path, fast=False):
    """Run the notebook at `path` top to bottom in a fresh kernel with cwd = notebooks/, save its
    outputs in place with the stamp, and return the wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=EXECUTE_TIMEOUT_S, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    start = time.perf_counter()
    with client.setup_kernel():
        info = client.wait_for_reply(client.kc.kernel_info())
        nb.metadata["language_info"] = info["content"]["language_info"]
        run_cells(nb, client)
        probe = nbformat.v4.new_code_cell(LOADED_FILES.format(root=str(ROOT.resolve())))
        nb.cells.append(probe)
        try:
            client.execute_cell(probe, len(nb.cells) - 1, store_history=False)
        finally:
            nb.cells.pop()
    seconds = time.perf_counter() - start
    loaded = json.loads(probe.outputs[0]["text"])
    nb.metadata[STAMP] = {
        "mode": "fast" if fast else "default",
        "code_sha256": code_sha256(nb),
        "sources": {rel: file_sha256(ROOT / rel) for rel in loaded},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)  # written whole, then renamed: an interrupted run leaves the old file
    os.replace(tmp, path)
    return seconds


def student_version(nb):
    """A copy without solutions or outputs: each solution cell becomes an empty code cell for
    the student's answer, titled like the solution it replaces."""
    out = nbformat.v4.new_notebook(metadata={k: v for k, v in nb.metadata.items() if k != STAMP})
    for cell in nb.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            title = re.search(r"<summary>(.*?)</summary>", cell.source)
            name = title.group(1).replace("Solution", "Exercise") if title else "Exercise"
            out.cells.append(nbformat.v4.new_code_cell(f"# {name}: your answer here\n"))
        elif cell.cell_type == "code":
            out.cells.append(nbformat.v4.new_code_cell(cell.source, metadata=dict(cell.metadata)))
        else:
            out.cells.append(nbformat.v4.new_markdown_cell(cell.source, metadata=dict(cell.metadata)))
    nbformat.validate(out)
    return out


def chosen(prefixes):
    paths = notebooks()
    picked = [p for p in paths if not prefixes or any(p.name.startswith(x) for x in prefixes)]
    if not picked:
        names = ", ".join(p.name for p in paths)
        raise SystemExit(f"no notebook starts with {' or '.join(prefixes)}; the notebooks: {names}")
    return picked


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="pretrain the notebooks' base model into runs/cache (once, before class)")
    ex = sub.add_parser("execute", help="run notebooks at their defaults, saving outputs and the stamp")
    ex.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    st = sub.add_parser("student", help="write student versions: solutions and outputs removed")
    st.add_argument("--out", type=Path, default=STUDENT_DIR, help=f"folder (default: {STUDENT_DIR.relative_to(ROOT)})")
    sub.add_parser("check", help="list stale notebooks and why; exit status 1 if any")
    args = p.parse_args(argv)
    fast = os.environ.get("NOTEBOOK_FAST") == "1"

    if args.command == "prepare":
        if fast:
            raise SystemExit("NOTEBOOK_FAST=1 is set: unset it to prepare the real base model")
        sys.path.insert(0, str(NB_DIR))
        import notebook_setup

        notebook_setup.find_code()
        notebook_setup.base_model(notebook_setup.experiment_settings(), progress=True)
        print("ready: the notebooks load this model from runs/cache")
    elif args.command == "execute":
        if fast:
            print("note: NOTEBOOK_FAST=1 is set, so the saved outputs are the quick mode's and the "
                  "tests will call them stale", file=sys.stderr)
        for path in chosen(args.only):
            seconds = execute(path, fast)
            print(f"{path.name}: executed in {seconds:.0f} s, {path.stat().st_size / 1024:.0f} KB")
    elif args.command == "student":
        args.out.mkdir(parents=True, exist_ok=True)
        for path in notebooks():
            target = args.out / path.name
            nbformat.write(student_version(nbformat.read(path, as_version=4)), target)
            print(f"wrote {target}")
    elif args.command == "check":
        stale = {p.name: stale_reasons(nbformat.read(p, as_version=4)) for p in notebooks()}
        for name, reasons in stale.items():
            print(f"{name}: {'fresh' if not reasons else 'STALE: ' + '; '.join(reasons)}")
        if any(stale.values()):
            print("re-run them: python notebooks/classroom.py execute [prefixes]")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
