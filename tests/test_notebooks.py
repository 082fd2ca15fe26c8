"""The classroom notebooks: every notebooks/NN_*.ipynb, found by glob, so a new notebook is
covered as soon as it exists.

- Each runs top to bottom in fast mode with every code cell run twice in a row: a student can
  re-run any cell.
- Each committed notebook holds the outputs of a default-settings run by the code as it is now:
  its stamp (written by `python notebooks/classroom.py execute`) matches its code cells and every
  project file its kernel imported.
- Each teaches the same way: what you will learn first, exercises last, solutions tagged; the
  student version has no solutions.
- The teacher's commands: `times` adds up the cell timestamps `execute` saves; `check-offline`
  runs notebooks with the network off (shown on small notebooks made here, not the heavy ones) and
  says whether the base model was prepared.

The kernel inherits this process's environment (conftest.py sets NOTEBOOK_FAST=1 and
MPLBACKEND=Agg) and runs with cwd = notebooks/, on an in-memory copy: the committed files are
never rewritten.
"""
import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("classroom", NB_DIR / "classroom.py")
classroom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(classroom)

NOTEBOOKS = classroom.notebooks()
IDS = [p.name[:2] for p in NOTEBOOKS]
MAX_BYTES = 1024 * 1024  # outputs must stay small: PNG figures, no printed tensors


def read(path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def solution_cells(nb):
    return [c for c in nb.cells if classroom.SOLUTION_TAG in c.metadata.get("tags", [])]


@pytest.fixture(scope="session")
def fast_cache(tmp_path_factory):
    """One cache for every notebook's fast-mode base model: pretrained once per test session."""
    return tmp_path_factory.mktemp("notebook-cache")


def test_the_classroom_notebooks_are_found():
    names = [p.name for p in NOTEBOOKS]
    for name in ("01_low_rank_intuition.ipynb", "02_lora_layer_from_scratch.ipynb",
                 "03_finetune_gpt_with_lora.ipynb", "04_rank_sweep.ipynb", "05_qlora.ipynb",
                 "06_adalora.ipynb", "07_lora_at_scale.ipynb", "08_tokens_bpe.ipynb",
                 "09_serving_adapters.ipynb"):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_every_cell_run_twice(path, monkeypatch, fast_cache):
    monkeypatch.setenv("NOTEBOOK_FAST", "1")
    monkeypatch.setenv("NOTEBOOK_CACHE", str(fast_cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Fast mode's tensors are tiny, so extra threads buy nothing, and on a busy CPU (tests beside
    # other jobs) oversubscribed threads can make torch many times slower. A user's setting wins.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = read(path)  # an in-memory copy: the committed file keeps its outputs
    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    with client.setup_kernel():
        classroom.run_cells(nb, client, times=2)  # raises CellExecutionError, naming the cell, on any error
    text = "".join(o.get("text", "") for c in code_cells(nb) for o in c.get("outputs", []))
    assert "mode: FAST" in text, "the notebook did not see NOTEBOOK_FAST=1"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_come_from_the_current_code_at_default_settings(path):
    nb = read(path)
    reasons = classroom.stale_reasons(nb)
    assert not reasons, (f"{path.name}'s saved outputs are stale: {'; '.join(reasons)}. Re-run it: "
                         f"python notebooks/classroom.py execute {path.name[:2]}")
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts and all(counts), f"cells never executed (execution_count None): {counts}"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"not run top to bottom in order: {counts}"
    outputs = [o for c in code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "a saved output is an error"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "mode: default" in text and "mode: FAST" not in text, "saved outputs are not from a default-settings run"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the saved outputs"
    assert path.stat().st_size < MAX_BYTES, "notebook file over 1 MB: outputs too large"


def test_a_stamp_goes_stale_when_a_code_cell_or_an_imported_file_changes(tmp_path):
    (tmp_path / "minilora").mkdir()
    source = tmp_path / "minilora" / "layer.py"
    source.write_text("x = 1\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nb.metadata[classroom.STAMP] = {"mode": "default", "code_sha256": classroom.code_sha256(nb),
                                    "sources": {"minilora/layer.py": classroom.file_sha256(source)}}
    assert classroom.stale_reasons(nb, root=tmp_path) == []

    source.write_text("x = 2\n")
    assert classroom.stale_reasons(nb, root=tmp_path) == ["minilora/layer.py changed since it ran"]
    source.unlink()
    assert classroom.stale_reasons(nb, root=tmp_path) == ["minilora/layer.py (imported when it ran) no longer exists"]

    edited = copy.deepcopy(nb)
    edited.cells[0].source = "print(2)"
    edited.metadata[classroom.STAMP]["sources"] = {}
    assert classroom.stale_reasons(edited, root=tmp_path) == ["its code cells were edited after it was executed"]
    del edited.metadata[classroom.STAMP]
    assert "never executed" in classroom.stale_reasons(edited, root=tmp_path)[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_teaches_and_ends_with_exercises_whose_solutions_are_tagged(path):
    nb = read(path)
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    assert "What you will learn" in markdown[0].source, "the first cell should say what the student will learn"
    exercises = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                 and re.search(r"^#+ Exercises", c.source, re.MULTILINE)]
    assert exercises, "no Exercises section"
    heading = nb.cells[exercises[0]].source
    assert len(re.findall(r"^\d\. ", heading[heading.index("Exercises"):], re.MULTILINE)) >= 2, "fewer than two exercises"
    solutions = solution_cells(nb)
    assert solutions, f"no cell tagged {classroom.SOLUTION_TAG!r}"
    for cell in nb.cells:
        if "<summary>Solution" in cell.source:
            assert cell in solutions, f"a solution cell is not tagged {classroom.SOLUTION_TAG!r}: {cell.source[:60]!r}"
    assert all(nb.cells.index(c) > exercises[0] for c in solutions), "a solution comes before the exercises"


def test_every_notebook_starts_with_the_same_setup_cell():
    """One setup cell (Colab install, path, threads, plots) shared by all: edit it in one notebook,
    copy it to the others."""
    first = {p.name: code_cells(read(p))[0].source for p in NOTEBOOKS}
    reference = first[NOTEBOOKS[0].name]
    assert "notebook_setup.setup(threads=" in reference
    assert all(source == reference for source in first.values()), [n for n, s in first.items() if s != reference]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_student_version_has_no_solutions_and_no_outputs(path):
    teacher = read(path)
    student = classroom.student_version(teacher)
    assert not solution_cells(student)
    assert not [c for c in student.cells if "<details>" in c.source or "Solution" in c.source]
    assert not [c for c in code_cells(student) if c.outputs or c.execution_count]
    assert classroom.STAMP not in student.metadata
    answers = [c for c in code_cells(student) if c.source.startswith("# Exercise")]
    assert len(answers) == len(solution_cells(teacher)), "one answer cell per removed solution"
    kept = [(c.cell_type, c.source) for c in teacher.cells if c not in solution_cells(teacher)]
    assert [(c.cell_type, c.source) for c in student.cells if c not in answers] == kept


def test_student_command_writes_every_notebook(tmp_path):
    classroom.main(["student", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


def test_setup_cell_fetches_the_repository_outside_a_clone(tmp_path):
    """The setup cell's Colab branch: outside a clone it clones the repository (here: this one, from
    disk), installs its requirements (here: a dry run, offline) and imports notebook_setup from the
    clone; run again, it reuses the clone."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    source = code_cells(read(NOTEBOOKS[0]))[0].source
    source, n = re.subn(r'REPO_URL = "[^"]*"', f"REPO_URL = {('file://' + str(ROOT))!r}", source)
    assert n == 1, "the setup cell should set REPO_URL once"
    script = tmp_path / "setup_cell.py"
    script.write_text(source + "\nprint('setup from', notebook_setup.__file__)\n" + source +
                      "\nprint('second run from', notebook_setup.__file__)\n")
    env = {**os.environ, "PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    clone = tmp_path / "minilora-repo" / "notebooks" / "notebook_setup.py"
    assert f"setup from {clone}" in run.stdout and f"second run from {clone}" in run.stdout


def test_times_adds_up_the_cell_timestamps_that_execute_saves():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("three words here"),
        nbformat.v4.new_code_cell("a = 1"), nbformat.v4.new_code_cell("b = 2"),
        nbformat.v4.new_markdown_cell("<details><summary>Solution 1</summary> not counted </details>",
                                      metadata={"tags": [classroom.SOLUTION_TAG]})])
    assert classroom.notebook_times(nb) == {"cells": 4, "code_cells": 2, "words": 3, "seconds": None, "longest": None}
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-12-06T17:00:00.250000Z",
                                         "shell.execute_reply": "2026-12-06T17:00:02.750000Z"}
    assert classroom.notebook_times(nb)["seconds"] is None, "a cell without timestamps: no total"
    nb.cells[2].metadata["execution"] = {"iopub.execute_input": "2026-12-06T17:00:03Z",
                                         "shell.execute_reply": "2026-12-06T17:01:03.5Z"}
    times = classroom.notebook_times(nb)
    assert times["seconds"] == 63.0 and times["longest"] == (2, 60.5)
    assert "execution" not in classroom.student_version(nb).cells[1].metadata


def test_check_offline_runs_a_notebook_with_the_network_off(tmp_path):
    """`check-offline`'s kernel: connections to other machines and name look-ups fail, saying why;
    this machine's loopback still works; child processes get no package index; fast mode is on."""
    listener = "import socket\nserver = socket.create_server(('127.0.0.1', 0))\n" \
               "socket.create_connection(server.getsockname(), timeout=5).close()\nprint('loopback ok')\n"
    env = "import os\nprint(os.environ['NOTEBOOK_FAST'], os.environ['NOTEBOOK_CACHE'], os.environ['PIP_NO_INDEX'])"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(listener), nbformat.v4.new_code_cell(env)])
    assert classroom.run_offline(nb, fast=True, cache=tmp_path) >= 0
    assert nb.cells[0].outputs[0]["text"] == "loopback ok\n"
    assert nb.cells[1].outputs[0]["text"] == f"1 {tmp_path} 1\n"

    from nbclient.exceptions import CellExecutionError

    for reach in ("socket.create_connection(('192.0.2.1', 80), timeout=5)", "socket.getaddrinfo('pypi.org', 443)"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import socket\n" + reach)])
        with pytest.raises(CellExecutionError, match="the network is off"):
            classroom.run_offline(nb, fast=True, cache=tmp_path)


def test_check_offline_and_prepare_refuse_fast_mode(monkeypatch):
    monkeypatch.setenv("NOTEBOOK_FAST", "1")
    for command in ("prepare", "check-offline"):
        with pytest.raises(SystemExit, match=f"NOTEBOOK_FAST=1 is set: unset it for `{command}`"):
            classroom.main([command])


def test_check_offline_says_whether_the_base_model_was_prepared(tmp_path, monkeypatch, capsys):
    """The teacher's check: the cache is prepared when loading the base model pretrains nothing
    (here a stand-in for notebook_setup that 'pretrains' by writing a finished folder)."""
    cache = tmp_path / "cache"

    def base_model(settings, progress=False):
        done = cache / "base-0123456789ab" / "settings.json"  # written last, as experiments' base model does
        if not done.exists():
            done.parent.mkdir(parents=True)
            done.write_text("{}")

    monkeypatch.setitem(sys.modules, "notebook_setup", SimpleNamespace(
        find_code=lambda: None, cache_dir=lambda: cache, experiment_settings=lambda: None, base_model=base_model))
    monkeypatch.setattr(classroom, "front_end", lambda: "JupyterLab")
    path = tmp_path / "01_tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), path)

    assert classroom.check_offline([path], full=False) == 1
    out = capsys.readouterr().out
    assert "front end: JupyterLab" in out and "base model: NOT prepared before this check" in out
    assert "01_tiny.ipynb: ran top to bottom with the network off" in out
    assert classroom.check_offline([path], full=False) == 0, "prepared now: nothing left to report"
    assert "no pretraining needed" in capsys.readouterr().out
    monkeypatch.setattr(classroom, "front_end", lambda: None)
    assert classroom.check_offline([path], full=False) == 1
    assert "pip install -r requirements-class.txt" in capsys.readouterr().out


def requirement_names(path):
    """The package names a requirements file installs, following `-r other.txt`."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line:
            names.add(re.match(r"[A-Za-z0-9_.\-]+", line).group(0).lower())
    return names


# The import name of a package whose distribution is named otherwise (IPython comes with ipykernel).
DISTRIBUTION = {"IPython": "ipykernel"}


def test_the_class_requirements_install_jupyter_and_everything_the_notebooks_import():
    """Item 1 of the classroom issue: a class opens the notebooks from requirements-class.txt (or
    the `class` extra) alone: a Jupyter front end, and every third-party module that the notebooks'
    code cells, notebook_setup.py and classroom.py import."""
    names = requirement_names(ROOT / "requirements-class.txt")
    assert "jupyterlab" in names or "notebook" in names
    sources = [c.source for p in NOTEBOOKS for c in code_cells(read(p))]
    sources += [(NB_DIR / f).read_text() for f in ("notebook_setup.py", "classroom.py")]
    imported = set()
    for source in sources:
        imported |= {m.split(".")[0] for m in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", source, re.M)}
    ours = {"minilora", "nanogpt", "experiments", "notebook_setup"}
    third_party = sorted(m for m in imported - ours - set(sys.stdlib_module_names) if not m.startswith("_"))
    assert "torch" in third_party
    missing = [m for m in third_party if DISTRIBUTION.get(m, m).lower() not in names]
    assert not missing, f"imported by the notebooks, not in requirements-class.txt: {missing}"
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = project["dependencies"] + project["optional-dependencies"]["class"]  # pip install -e ".[class]"
    installed = {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in installed}
    assert installed >= names - {"pytest"}, f"the `class` extra lacks {sorted(names - {'pytest'} - installed)}"


OPTIONAL_TAG = "optional"


def bound_names(source):
    """The names a code cell binds at its top level (assignments, defs, imports, loop targets)."""
    import ast

    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names


def used_names(source):
    import ast

    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def optional_problems(cells):
    """What is wrong with a notebook's optional cells: each optional Markdown cell says 'Optional'
    in its text, each optional code cell follows an optional Markdown cell, and no later cell that
    is not optional uses a name that only an optional cell defines."""
    problems, optional_only, required = [], set(), set()
    for i, cell in enumerate(cells):
        optional = OPTIONAL_TAG in cell.metadata.get("tags", [])
        if optional and cell.cell_type == "markdown" and "Optional" not in cell.source:
            problems.append(f"cell {i} is tagged optional but does not say so")
        if optional and cell.cell_type == "code":
            before = [c for c in cells[:i] if c.cell_type == "markdown"][-1]
            if OPTIONAL_TAG not in before.metadata.get("tags", []):
                problems.append(f"code cell {i} is optional, the Markdown that introduces it is not")
        if cell.cell_type != "code" or cell.source.lstrip().startswith(("%", "!")):
            continue
        if optional:
            optional_only |= bound_names(cell.source) - required
        else:
            needed = used_names(cell.source) & optional_only - bound_names(cell.source)
            if needed:
                problems.append(f"cell {i} needs {sorted(needed)}, which only an optional cell defines")
            required |= bound_names(cell.source)
            optional_only -= bound_names(cell.source)
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_optional_cells_say_so_and_nothing_after_them_needs_them(path):
    """A class short of time skips the cells tagged `optional`."""
    assert optional_problems(read(path).cells) == []


def test_optional_problems_are_found():
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    tagged = {"tags": [OPTIONAL_TAG]}
    cells = [md("Optional: a digression", metadata=tagged), code("extra = 1", metadata=tagged),
             code("print(extra)"), md("a digression", metadata=tagged), md("text"), code("y = 2", metadata=tagged)]
    assert optional_problems(cells) == ["cell 2 needs ['extra'], which only an optional cell defines",
                                        "cell 3 is tagged optional but does not say so",
                                        "code cell 5 is optional, the Markdown that introduces it is not"]


def test_notebook_2_marks_its_adam_digression_optional():
    nb = read(NB_DIR / "02_lora_layer_from_scratch.ipynb")
    optional = [c for c in nb.cells if OPTIONAL_TAG in c.metadata.get("tags", [])]
    assert [c.cell_type for c in optional] == ["markdown", "code", "markdown"]
    assert "float64" in optional[1].source and optional[0].source.startswith("### Optional")
