"""A task scored by exact match: name the type of the literal a line of code assigns.

    prompt  "\\nself._pos = (0, 0)\\n"     a real line of the standard library
    answer  "tuple\\n"                     the type of its value: type(ast.literal_eval(value)).__name__

The base model was pretrained on the standard library's code (nanogpt.data.python_code_bytes), so
it reads these lines fluently and writes the type names often (`isinstance(x, str)`); what it was
never shown is the question. The rule is deterministic and fixed by Python itself (value_type);
the answer is a whole line, one of int, str, NoneType, bool, list, dict, bytes, tuple, set, float.
Telling them apart is mostly the value's first byte, with a few traps: `(1)` is an int, `(1,)` a
tuple, `{}` a dict but `{1}` a set, `1.0` and `1e3` floats, `-1` an int.

Why not a transformation of the line (PEP 8 spacing, "x=f(1)" -> "x = f(1)", was the first
choice): it needs the line copied byte for byte, and this small base cannot copy. In a smoke run
(600 steps, lines of at most 20 bytes; not kept) full fine-tuning got about one such line in seven
right and LoRA r=8 on W_q, W_v almost none: a new skill, not a task the model nearly knows. Naming a type needs no
copying: the base's reading of the line is all it takes.

Each example is a simple assignment "target = value" (one name or dotted name; a complete statement
that Python parses; ASCII; a literal value) short enough that "\\n" + prompt + "\\n" + answer +
"\\n" fits in one block. The distinct lines of the whole code are shuffled once and dealt into
three disjoint sets (no line in two of them): validation (every choice), test (the numbers
reported), and training (the rest).
"""
import ast
import hashlib
import random
from dataclasses import dataclass

from nanogpt.data import Corpus
from nanogpt.tokenizer import encode

SPACED = " = "


def value_type(line):
    """The rule: the name of the type of the literal a line "target = value" assigns ("x = (1)" ->
    "int"), or None when the value is not a literal."""
    _, sep, value = line.partition(SPACED)
    if not sep:
        return None
    try:
        return type(ast.literal_eval(value)).__name__
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def example_text(prompt, answer):
    """One example as it appears in the training text: the prompt line, then the answer line."""
    return f"{prompt}\n{answer}\n"


def fits(line, block_size):
    """Whether "\\n" + line + "\\n" + its answer + "\\n" fits in one block."""
    answer = value_type(line)
    return answer is not None and len("\n" + example_text(line, answer)) <= block_size


def is_example(line):
    """A simple assignment of a literal: "target = value", one target (a name or dotted name), a
    complete statement, ASCII, written as PEP 8 wants, and a value Python reads as a literal."""
    name, sep, value = line.partition(SPACED)
    if not sep or not line.isascii() or not value or value[0].isspace() or line != line.strip():
        return False
    if not all(part.isidentifier() for part in name.split(".")):
        return False
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return False
    return (len(tree.body) == 1 and isinstance(tree.body[0], ast.Assign) and len(tree.body[0].targets) == 1
            and value_type(line) is not None)


def example_lines(code, block_size, max_len):
    """The distinct example lines of some code (bytes), indentation removed, at most max_len
    bytes long, in order of first use."""
    seen = {}
    for raw in code.decode("utf-8", errors="replace").split("\n"):
        line = raw.strip()
        if line not in seen and len(line) <= max_len and is_example(line) and fits(line, block_size):
            seen[line] = True
    return list(seen)


@dataclass
class FormatTask:
    """The three disjoint sets, each a list of (prompt, answer) pairs (neither with its newline)."""
    train: list
    val: list
    test: list


def make_task(code, block_size, max_len, n_val=300, n_test=300, seed=0):
    """The example lines of `code` (python_code_bytes()), shuffled with `seed` and dealt out:
    the first n_val to validation, the next n_test to test, the rest to training."""
    lines = example_lines(code, block_size, max_len)
    if len(lines) < n_val + n_test + 1:
        raise ValueError(f"the code gives {len(lines)} example lines of at most {max_len} bytes: too few for "
                         f"{n_val} validation and {n_test} test prompts and a training set")
    random.Random(seed).shuffle(lines)
    sets = lines[n_val + n_test:], lines[:n_val], lines[n_val:n_val + n_test]
    return FormatTask(*[[(line, value_type(line)) for line in s] for s in sets])


def majority_share(task):
    """The test share a model that always answers the most common training answer would get."""
    answers = [a for _, a in task.train]
    top = max(set(answers), key=answers.count)
    return sum(a == top for _, a in task.test) / len(task.test), top


def pair_text(pairs):
    return "".join(example_text(p, a) for p, a in pairs)


def task_corpus(task, block_size):
    """The task as a Corpus run_finetune trains on: train, val and test are each set's examples
    concatenated, so the validation loss is read on val's lines and the test loss on test's."""
    texts = [pair_text(pairs) for pairs in (task.train, task.val, task.test)]
    for name, text in zip(("train", "val", "test"), texts):
        if len(text) < block_size + 1:
            raise ValueError(f"the {name} set's text is {len(text)} bytes; block_size={block_size} needs at least "
                             f"{block_size + 1}")
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()
    train, val, test = (encode(t) for t in texts)
    return Corpus(name=f"literal-types-{digest[:8]}", train=train, val=val, sha256=digest, test=test)
