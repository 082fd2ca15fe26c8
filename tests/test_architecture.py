"""The project's layers, read from its source with `ast` (docs/architecture.md draws them):

    minilora            the LoRA library: imports neither nanogpt nor experiments
    nanogpt             the GPT and its commands: imports minilora, never experiments
    experiments.lib     the experiments' shared machinery: imports minilora and nanogpt
    experiments.bench   the benchmarks        } import minilora, nanogpt and experiments.lib;
    experiments.<name>  the commands          } never one another

Every import statement counts, including those inside functions. No module imports itself back
through a chain of others (an import circle), no .py file is over 450 lines, and no function in
minilora/ or nanogpt/ takes more than 8 parameters (self and cls not counted).
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("minilora", "nanogpt", "experiments")
MAX_LINES = 450
MAX_PARAMETERS = 8
SMALL_FUNCTIONS = ("minilora", "nanogpt")  # the packages a student reads


def module_name(path, root=ROOT):
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files(root=ROOT):
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))


def imports_of(path, modules, root=ROOT):
    """The project modules that the file at `path` imports, anywhere in it (a function's body too).
    `from a.b import c` counts as importing a.b.c when that is a module, else a.b."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: from the package, up level - 1 packages
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # import a.b.c where only a.b is ours: a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root=ROOT):
    """{module: set of project modules it imports} for every .py file in minilora/, nanogpt/, experiments/."""
    files = project_files(root)
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imports_of(p, modules, root) for p in files}


def find_cycle(graph):
    """One import circle as [a, b, ..., a], or None: a depth-first search for a back edge."""
    state, stack = {}, []  # state: 1 = on the current path, 2 = done

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def layer(module):
    """minilora, nanogpt, experiments.lib, experiments.bench or experiments (a command)."""
    parts = module.split(".")
    if parts[0] != "experiments" or len(parts) == 1:
        return parts[0]
    return f"experiments.{parts[1]}" if parts[1] in ("lib", "bench") else "experiments"


# What each layer may import from the project, besides itself.
ALLOWED = {
    "minilora": set(),
    "nanogpt": {"minilora"},
    "experiments.lib": {"minilora", "nanogpt"},
    "experiments.bench": {"minilora", "nanogpt", "experiments.lib"},
    "experiments": {"minilora", "nanogpt", "experiments.lib"},
}


# Layers whose modules stand alone: a command imports no other command, a benchmark no other
# benchmark (what two of them share belongs in experiments.lib).
STANDALONE = {"experiments", "experiments.bench"}


def layer_violations(graph):
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(target) == layer(module):
                allowed = layer(module) not in STANDALONE or target in ("experiments", "experiments.bench")
            else:
                allowed = layer(target) in ALLOWED[layer(module)]
            if not allowed:
                bad.append(f"{module} imports {target}")
    return bad


def long_files(root=ROOT, limit=MAX_LINES):
    out = []
    for path in project_files(root):
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{path.relative_to(root)} ({n} lines)")
    return out


def parameters(function):
    """The parameter names of a def or lambda node, less self and cls."""
    a = function.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
    return [n for n in names if n not in ("self", "cls")]


def long_signatures(root=ROOT, packages=SMALL_FUNCTIONS, limit=MAX_PARAMETERS):
    out = []
    for path in sorted(p for package in packages for p in (root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and len(parameters(node)) > limit:
                out.append(f"{path.relative_to(root)}:{node.lineno} {getattr(node, 'name', 'lambda')} "
                           f"({len(parameters(node))} parameters)")
    return out


def test_the_graph_sees_every_kind_of_import(tmp_path):
    (tmp_path / "experiments" / "lib").mkdir(parents=True)
    for package in ("minilora", "nanogpt"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "experiments" / "__init__.py").write_text("")
    (tmp_path / "experiments" / "lib" / "__init__.py").write_text("")
    (tmp_path / "minilora" / "layer.py").write_text("import torch\n")
    (tmp_path / "nanogpt" / "model.py").write_text("from minilora.layer import x\nimport minilora\n")
    (tmp_path / "experiments" / "lib" / "write_up.py").write_text(
        "from . import seeds\n\ndef f():\n    from experiments.report import SECTIONS\n")
    (tmp_path / "experiments" / "lib" / "seeds.py").write_text("import nanogpt.model as m\n")
    (tmp_path / "experiments" / "report.py").write_text("from experiments.lib import write_up\n")
    (tmp_path / "experiments" / "learn_forget.py").write_text("from experiments.lr_sweep import parse_lrs\n")
    (tmp_path / "experiments" / "lr_sweep.py").write_text("import experiments.lib.seeds\n")
    graph = import_graph(tmp_path)
    assert graph["nanogpt.model"] == {"minilora.layer", "minilora"}
    assert graph["experiments.lib.write_up"] == {"experiments.lib.seeds", "experiments.report"}  # in a function too
    assert graph["experiments.lib.seeds"] == {"nanogpt.model"}
    assert graph["experiments.report"] == {"experiments.lib.write_up"}
    assert find_cycle(graph) == ["experiments.lib.write_up", "experiments.report", "experiments.lib.write_up"]
    assert graph["experiments.learn_forget"] == {"experiments.lr_sweep"}
    assert graph["experiments.lr_sweep"] == {"experiments.lib.seeds"}
    assert layer_violations(graph) == ["experiments.learn_forget imports experiments.lr_sweep",
                                       "experiments.lib.write_up imports experiments.report"]
    (tmp_path / "minilora" / "big.py").write_text("x = 1\n" * 451)
    assert long_files(tmp_path) == [f"{pathlib.Path('minilora', 'big.py')} (451 lines)"]
    (tmp_path / "nanogpt" / "wide.py").write_text(
        "def ok(self, a, b, c, d, e, f, g, h): pass\n"
        "def wide(a, b, c, d, e, f, g, *h, i): pass\n"
        "class K:\n    def m(cls, a, b, c, d, e, f, g, h, **i): pass\n")
    assert long_signatures(tmp_path) == [f"{pathlib.Path('nanogpt', 'wide.py')}:2 wide (9 parameters)",
                                         f"{pathlib.Path('nanogpt', 'wide.py')}:4 m (9 parameters)"]


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_each_layer_imports_only_the_layers_below_it():
    bad = layer_violations(import_graph())
    assert not bad, "imports across the layers (see docs/architecture.md):\n" + "\n".join(bad)


def test_no_python_file_is_over_450_lines():
    long = long_files()
    assert not long, f"over {MAX_LINES} lines, split by concept: " + ", ".join(long)


def test_no_function_in_minilora_or_nanogpt_takes_more_than_8_parameters():
    wide = long_signatures()
    assert not wide, f"over {MAX_PARAMETERS} parameters (group the settings in a dataclass): " + ", ".join(wide)
