"""The "Your own text" section of docs/command-line.md, run as written, at toy size: each command a process of its
own (as a user types it), with flags appended that make the model and the runs tiny."""
import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOY = {  # appended to each command: later flags win in argparse
    "nanogpt.train": ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--max-iters", "20",
                      "--eval-interval", "10", "--eval-iters", "2", "--batch-size", "4", "--device", "cpu",
                      "--no-progress"],
    "nanogpt.finetune": ["--max-iters", "10", "--eval-interval", "5", "--eval-iters", "2", "--batch-size", "4",
                         "--device", "cpu", "--no-progress"],
    "nanogpt.sample": ["--max-new-tokens", "40"],
    "nanogpt.export": [],
}


def readme_commands():
    """The four commands of the section's code block, split as a shell would."""
    text = (ROOT / "docs" / "command-line.md").read_text()
    section = text.split("## Your own text", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def run(argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = [sys.executable if argv[0] == "python" else argv[0]] + argv[1:]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}"
    return done


def test_the_four_commands_run_as_written_and_the_merged_model_samples_as_the_adapter(tmp_path):
    (tmp_path / "my.txt").write_text("The quick brown fox jumps over the lazy dog. The end.\n" * 200)
    commands = readme_commands()
    assert [c[2] for c in commands] == ["nanogpt.train", "nanogpt.finetune", "nanogpt.sample", "nanogpt.export"]
    outputs = [run(c + TOY[c[2]], tmp_path) for c in commands]
    assert (tmp_path / "runs" / "my-adapter" / "adapter.pt").exists()
    assert "base_val_loss" in (tmp_path / "runs" / "my-adapter" / "history.json").read_text()
    assert "largest logit difference" in outputs[3].stdout
    with_adapter = outputs[2].stdout
    # The merged model, with no adapter code, samples what the base plus the adapter sampled.
    merged = run(["python", "-m", "nanogpt.sample", "--ckpt", "runs/my-model/ckpt.pt", "--prompt", "The ",
                  "--max-new-tokens", "40"], tmp_path).stdout
    assert merged == with_adapter and merged.startswith("The ")
    inspect = run(["python", "-m", "nanogpt.inspect_adapter", "runs/my-adapter/adapter.pt", "--base",
                   "runs/base/ckpt.pt"], tmp_path).stdout
    assert "fits runs/base/ckpt.pt: yes" in inspect
