"""The teacher's commands for the classroom notebooks (run from the repository's root):

    python notebooks/classroom.py prepare            # before class: pretrain and cache the base model
    python notebooks/classroom.py execute            # run every notebook at its defaults, save, stamp
    python notebooks/classroom.py execute 02 04      # only the notebooks whose names start so
    python notebooks/classroom.py student            # notebooks/student/: no solutions, no outputs
    python notebooks/classroom.py check              # which committed notebooks are stale, and why
    python notebooks/classroom.py check-offline      # before class: Jupyter, the cache, every notebook run offline
    python notebooks/classroom.py times              # each notebook's compute time, from its saved cell timestamps

Each notebook is its own source: edit the .ipynb in Jupyter, then `execute` it so its saved
outputs come from the code as it is now. `execute` stamps the notebook's metadata with the
SHA-256 of its code cells and of every project file its kernel imported (minilora/, nanogpt/,
experiments/, notebooks/notebook_setup.py); tests/test_notebooks.py fails when any of them has
changed since, naming the files and this command. `execute` also saves each code cell's start
and end times in its metadata (Jupyter's `execution` timestamps), which `times` adds up: the run
times notebooks/README.md states come from there.
"""
import argparse
import datetime
import hashlib
import importlib.util
import json
import os
import re
import socket
import sys
import tempfile
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
    client = NotebookClient(nb, timeout=EXECUTE_TIMEOUT_S, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(NB_DIR)}})  # timing: cell timestamps, for `times`
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
            metadata = {k: v for k, v in cell.metadata.items() if k != "execution"}  # no timestamps
            out.cells.append(nbformat.v4.new_code_cell(cell.source, metadata=metadata))
        else:
            out.cells.append(nbformat.v4.new_markdown_cell(cell.source, metadata=dict(cell.metadata)))
    nbformat.validate(out)
    return out


def _when(stamp):
    """A Jupyter timestamp ('2026-12-06T17:42:31.123456Z') as a datetime."""
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def cell_seconds(cell):
    """How long a code cell ran when the notebook was last executed: from the kernel's receiving
    it (iopub.execute_input) to its reply (shell.execute_reply); None if it holds no timestamps."""
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    return (_when(end) - _when(start)).total_seconds() if start and end else None


def notebook_times(nb):
    """What a teacher plans a lesson with: the number of cells, the words of prose, and the
    compute time of the last `execute` (the sum over code cells, and the longest cell as
    (index, seconds)); the times are None when the cells hold no timestamps."""
    code = [(i, cell_seconds(c)) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    words = sum(len(c.source.split()) for c in nb.cells
                if c.cell_type == "markdown" and SOLUTION_TAG not in c.metadata.get("tags", []))
    timed = [(i, s) for i, s in code if s is not None]
    complete = bool(code) and len(timed) == len(code)
    return {"cells": len(nb.cells), "code_cells": len(code), "words": words,
            "seconds": sum(s for _, s in timed) if complete else None,
            "longest": max(timed, key=lambda t: t[1]) if complete else None}


# Run in the kernel before a notebook's cells by `check-offline`: every connection to another
# machine, and every name look-up, fails with an error that says why. The kernel's own channels
# (ZeroMQ, on this machine) are untouched.
NETWORK_OFF = r'''
import socket as _socket
_LOCAL = {"127.0.0.1", "::1", "localhost", None}
_connect, _connect_ex, _getaddrinfo = _socket.socket.connect, _socket.socket.connect_ex, _socket.getaddrinfo

def _refuse(address):
    return OSError(f"the network is off (classroom.py check-offline): this notebook tried to reach {address!r}")

def _offline_connect(self, address, _real=_connect):
    if self.family in (_socket.AF_INET, _socket.AF_INET6) and address[0] not in _LOCAL:
        raise _refuse(address)
    return _real(self, address)

def _offline_connect_ex(self, address):
    return _offline_connect(self, address, _connect_ex)

def _offline_getaddrinfo(host, *args, **kwargs):
    if host not in _LOCAL:
        raise _socket.gaierror(str(_refuse(host)))
    return _getaddrinfo(host, *args, **kwargs)

_socket.socket.connect, _socket.socket.connect_ex, _socket.getaddrinfo = (
    _offline_connect, _offline_connect_ex, _offline_getaddrinfo)
'''
# ... and what the kernel's child processes see: pip may not use an index, git may clone only
# from this machine (the setup cell clones and installs only outside a clone).
OFFLINE_ENV = {"PIP_NO_INDEX": "1", "GIT_ALLOW_PROTOCOL": "file", "MPLBACKEND": "Agg"}


def run_offline(nb, fast, cache=None):
    """Run an in-memory notebook top to bottom in a fresh kernel with the network off (NETWORK_OFF,
    OFFLINE_ENV), cwd = notebooks/, in fast mode (NOTEBOOK_FAST=1, base models in `cache`) or at
    its defaults. Raises nbclient's CellExecutionError, naming the cell, on any error: a
    connection attempt included. Returns the seconds its cells took. Nothing is saved."""
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("NOTEBOOK_FAST", None)
    if fast:
        env.update(NOTEBOOK_FAST="1", NOTEBOOK_CACHE=str(cache or tempfile.mkdtemp(prefix="minilora-offline-")))
    client = NotebookClient(nb, timeout=EXECUTE_TIMEOUT_S, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    with client.setup_kernel(env=env):
        guard = nbformat.v4.new_code_cell(NETWORK_OFF)
        nb.cells.insert(0, guard)  # nbclient writes a cell back at its index: run it in place, then remove it
        try:
            client.execute_cell(guard, 0, store_history=False)
        finally:
            nb.cells.pop(0)
        start = time.perf_counter()
        run_cells(nb, client)
        return time.perf_counter() - start


def front_end():
    """The Jupyter front end installed here ('JupyterLab' or 'Jupyter Notebook'), or None."""
    for module, name in (("jupyterlab", "JupyterLab"), ("notebook", "Jupyter Notebook")):
        if importlib.util.find_spec(module):
            return name
    return None


def finished_base_models(cache):
    """The folders of the finished base models in a cache (experiments/lib/base_model.py writes each
    folder's settings.json last)."""
    return {p.parent for p in Path(cache).glob("base-*/settings.json")}


def check_offline(paths, full):
    """The teacher's check before class; returns the number of problems found (printed)."""
    problems = 0
    name = front_end()
    print(f"front end: {name or 'NONE: install one with `pip install -r requirements-class.txt`'}")
    problems += name is None
    sys.path.insert(0, str(NB_DIR))
    import notebook_setup

    notebook_setup.find_code()
    cache = notebook_setup.cache_dir()  # runs/cache, which the notebooks read in class
    before = finished_base_models(cache)
    start = time.perf_counter()
    network = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    try:
        exec(NETWORK_OFF, {})  # in this process too: loading the cached model must not need the network
        notebook_setup.base_model(notebook_setup.experiment_settings(), progress=True)
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = network
    if finished_base_models(cache) - before:
        problems += 1
        print(f"base model: NOT prepared before this check: pretrained now ({time.perf_counter() - start:.0f} s); "
              f"before class, run `python notebooks/classroom.py prepare`")
    else:
        print(f"base model: loaded from {cache} in {time.perf_counter() - start:.1f} s, no pretraining needed")
    cache = tempfile.mkdtemp(prefix="minilora-offline-")  # fast mode: one 50-step model for all
    for path in paths:
        try:
            seconds = run_offline(nbformat.read(path, as_version=4), fast=not full, cache=cache)
            print(f"{path.name}: ran top to bottom with the network off in {seconds:.0f} s "
                  f"({'default settings' if full else 'fast mode'})")
        except Exception as e:  # CellExecutionError and kernel failures: report, go on to the next
            problems += 1
            print(f"{path.name}: FAILED with the network off: {str(e).strip().splitlines()[-1]}")
    return problems


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
    off = sub.add_parser("check-offline", help="before class: a Jupyter front end, the prepared base model, and "
                         "every notebook run top to bottom with the network off; exit status 1 on a problem")
    off.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    off.add_argument("--full", action="store_true", help="run them at their default settings, as in class "
                     "(the times of the README's table), instead of fast mode (under a minute each)")
    tm = sub.add_parser("times", help="each notebook's cells, words and compute time, from its saved timestamps")
    tm.add_argument("only", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    args = p.parse_args(argv)
    fast = os.environ.get("NOTEBOOK_FAST") == "1"

    if args.command in ("prepare", "check-offline") and fast:
        raise SystemExit(f"NOTEBOOK_FAST=1 is set: unset it for `{args.command}`, which works on the real "
                         f"base model in runs/cache")
    if args.command == "prepare":
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
    elif args.command == "check-offline":
        problems = check_offline(chosen(args.only), args.full)
        if problems:
            raise SystemExit(f"{problems} problem(s): see above")
        print("ready: every notebook runs here with the network off")
    elif args.command == "times":
        print(f"{'notebook':<36}{'cells':>6}{'code':>6}{'words':>7}  compute (last execute)")
        for path in chosen(args.only):
            t = notebook_times(nbformat.read(path, as_version=4))
            when = "no timestamps: run `execute` on it" if t["seconds"] is None else (
                f"{t['seconds']:.0f} s (longest: cell {t['longest'][0]}, {t['longest'][1]:.0f} s)")
            print(f"{path.name:<36}{t['cells']:>6}{t['code_cells']:>6}{t['words']:>7}  {when}")


if __name__ == "__main__":
    main()
