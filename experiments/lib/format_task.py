"""A task scored by exact match: PEP 8 spacing around "=" in a simple assignment.

    prompt  "\\nx=foo(1)\\n"        (the line with the spaces around its "=" taken out)
    answer  "x = foo(1)\\n"         (the line as the standard library wrote it)

The base model was pretrained on the standard library's code, where nearly every assignment is
written "name = value": it knows what the answer looks like, but was never shown the mapping.
Every example is a real line of the stdlib (nanogpt.data.python_code_bytes): one name or dotted
name, " = ", a value, and nothing else, a complete statement that Python parses, ASCII, and short
enough that "\\n" + prompt + "\\n" + answer + "\\n" fits in one block. The rule is deterministic
and the answer ordinary Python: pep8_assign(unspace(line)) == line for every example.

Three disjoint sets of lines (no line in two of them):
  train  lines of the first 90% of the code (the part the base model was pretrained on);
  val    lines of the held-out last 10% that occur nowhere in the first 90%: every choice;
  test   more such lines, disjoint from val: the numbers reported.
So the answers to val and test were never in the base model's pretraining text, and fine-tuning
cannot have memorised them: a correct answer is the rule applied, not a line recalled.
"""
import ast
import hashlib
import random
from dataclasses import dataclass

from nanogpt.data import VAL_FRACTION, Corpus
from nanogpt.tokenizer import encode

SPACED = " = "


def unspace(line):
    """The prompt of an example: its first " = " written "=" ("x = f(a=1)" -> "x=f(a=1)")."""
    return line.replace(SPACED, "=", 1)


def pep8_assign(prompt):
    """The rule: spaces around the first "=" of a simple assignment ("x=f(a=1)" -> "x = f(a=1)").
    The target before it is a name or dotted name, so the first "=" is always the assignment's."""
    name, _, value = prompt.partition("=")
    return f"{name}{SPACED}{value}"


def example_text(prompt, answer):
    """One example as it appears in the training text: the prompt line, then the answer line."""
    return f"{prompt}\n{answer}\n"


def fits(line, block_size):
    """Whether "\\n" + prompt + "\\n" + answer + "\\n" fits in one block (2 len(line) + 1 bytes)."""
    return len("\n" + example_text(unspace(line), line)) <= block_size


def is_example(line):
    """A simple assignment "target = value": one target (a name or dotted name), a complete
    statement, ASCII, and spaced as PEP 8 wants (so that unspace changes it)."""
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
            and pep8_assign(unspace(line)) == line)


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
    """The three disjoint sets, each a list of (prompt, answer) pairs (answer without its newline)."""
    train: list
    val: list
    test: list


def make_task(code, block_size, max_len, seed=0, val_fraction=0.5):
    """Split the example lines of `code` (python_code_bytes()) into train, val and test (see the
    module docstring); val takes val_fraction of the held-out tail's new lines, test the rest.
    Each set is shuffled with `seed`, so the order of lines carries nothing to learn."""
    n_tail = int(len(code) * VAL_FRACTION)  # the same cut nanogpt.data.load_corpus makes
    head, tail = code[:len(code) - n_tail], code[len(code) - n_tail:]
    seen_in_head = {raw.strip() for raw in head.decode("utf-8", errors="replace").split("\n")}
    train = example_lines(head, block_size, max_len)
    held_out = [line for line in example_lines(tail, block_size, max_len) if line not in seen_in_head]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(held_out)
    n_val = int(len(held_out) * val_fraction)
    if n_val < 1 or n_val >= len(held_out):
        raise ValueError(f"the held-out code gives {len(held_out)} new example lines: too few to split into "
                         f"validation and test (val_fraction {val_fraction})")
    pairs = [[(unspace(line), line) for line in lines] for lines in (train, held_out[:n_val], held_out[n_val:])]
    return FormatTask(*pairs)


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
    whole = "\0".join(texts).encode()
    digest = hashlib.sha256(whole).hexdigest()
    train, val, test = (encode(t) for t in texts)
    return Corpus(name=f"pep8-assign-{digest[:8]}", train=train, val=val, sha256=digest, test=test)
