"""A run's folder: never overwritten by accident, resumable as the same run.

A training command writes OUT/ckpt.pt and OUT/history.json. Three rules keep that safe; each
is a function here, so every training command (pretraining, fine-tuning) follows them the same way:

  check_run_folder   before any work: OUT can be written, and a folder that already holds a run
                     is only continued (--resume) or replaced (--overwrite) when asked. A checkpoint
                     is never replaced by an earlier one by accident.
  resolve_settings   the settings that define a run (seed, learning rate, batch size, schedule,
                     corpus, ...) are saved in its checkpoint. --resume reads them back, so the
                     resumed run is the run that was started; a flag given again with another value
                     is refused, naming both values.
  clean_stale_temporaries   a checkpoint is written to a temporary file and renamed (atomic_save);
                     a run killed mid-write leaves the temporary behind, and the next run removes it.

The history is saved inside the checkpoint too, so a run killed between writing ckpt.pt and
history.json loses nothing: a resumed run takes its history from the checkpoint.

train() takes the folder as a RunFolder: where to write, what to record in the checkpoint, and, for
a resumed run, where to continue from (a Resume, which train.restore_training_state returns).
"""
import glob
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Optional

from nanogpt import distributed
from nanogpt.flags import CommandError

CHECKPOINT = "ckpt.pt"
HISTORY = "history.json"


class Resume(NamedTuple):
    """Where a resumed run continues: its checkpoint's step, the evaluations up to there, and the
    seconds it had trained (so elapsed_s goes on counting). A tuple: `step, history, elapsed_s = resume`."""
    step: int
    history: list
    elapsed_s: float = 0.0


@dataclass
class RunFolder:
    """Where train() saves a run: at every evaluation it writes path/ckpt.pt (weights, optimizer,
    RNG state, the history so far, and the two records below) and path/history.json."""
    path: str
    corpus_name: Optional[str] = None  # recorded in the checkpoint (what the model was trained on)
    settings: Optional[dict] = None  # what defines the run, for --resume (resolve_settings above)
    resume: Optional[Resume] = None  # None: a new run from step 0

    def __post_init__(self):
        if not isinstance(self.path, (str, os.PathLike)):
            raise ValueError(f"RunFolder.path must be a folder path, got {self.path!r}")
        if self.resume is not None:
            step = self.resume.step
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"RunFolder.resume.step must be an integer >= 0, got {step!r}")


def flag_name(setting):
    """'batch_size' -> '--batch-size'."""
    return "--" + setting.replace("_", "-")


def check_writable_folder(folder, flag):
    """Make folder if needed and prove it takes files; a clear error naming the flag if not."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CommandError(f"{flag} {folder!r} is a file, not a folder; give a folder path (it is created if missing)")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise CommandError(f"{flag} {folder!r} cannot be written: {e.strerror or e}; "
                           f"choose a folder you can write to") from None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(folder, names=(CHECKPOINT, HISTORY)):
    """Remove the temporary files (NAME.tmpPID, see atomic_save) that runs killed mid-save left
    in folder; one whose process is still alive is being written now and is left alone.
    Returns the removed paths."""
    removed = []
    for name in names:
        for path in glob.glob(os.path.join(glob.escape(folder), glob.escape(name) + ".tmp*")):
            pid = path.rsplit(".tmp", 1)[1]
            if not pid.isdigit() or (int(pid) != os.getpid() and _pid_alive(int(pid))):
                continue
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def _describe_run(folder):
    """'(history up to step 3000)' for messages, from history.json; '' if unreadable."""
    try:
        with open(os.path.join(folder, HISTORY)) as f:
            return f" (its history reaches step {json.load(f)[-1]['step']})"
    except (OSError, ValueError, LookupError, TypeError):
        return ""


def check_run_folder(folder, *, resume, overwrite, flag="--out"):
    """Before any work: folder can be written, and holds a run only if asked to continue or replace it.

    - a folder with a run (ckpt.pt or history.json) and neither resume nor overwrite: refused,
      naming the folder and the two ways out;
    - resume with no checkpoint there: refused (nothing to continue);
    - temporary files left by a killed run are removed (by rank 0 alone, under torchrun).
    The files themselves are replaced only when the new run writes its first checkpoint."""
    if resume and overwrite:
        raise CommandError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    check_writable_folder(folder, flag)
    ckpt = os.path.join(folder, CHECKPOINT)
    has_run = any(os.path.exists(os.path.join(folder, name)) for name in (CHECKPOINT, HISTORY))
    if resume and not os.path.isfile(ckpt):
        raise CommandError(f"nothing to resume: {flag} {folder!r} has no {CHECKPOINT}. "
                           f"Start the run without --resume")
    if has_run and not resume and not overwrite:
        raise CommandError(
            f"{flag} {folder!r} already holds a run{_describe_run(folder)}; starting again would replace it. "
            f"To continue that run, add --resume; to start over and replace it, add --overwrite; "
            f"or choose another {flag}")
    if distributed.is_main():  # under torchrun, one process tidies: a process id means nothing on another machine
        clean_stale_temporaries(folder)


def resolve_settings(given, defaults, saved=None, source=""):
    """The settings that define a run, from the flags (given), their defaults, and, on resume,
    the checkpoint's saved settings.

    given:    {setting: value from its flag, or None when the flag was not given}
    defaults: {setting: default}: used on a fresh run for each flag not given
    saved:    the checkpoint's settings on resume (None on a fresh run): each setting comes from
              there, and a flag given with a different value is an error naming both values, since
              the resumed run must be the run that was started. A setting the checkpoint does not
              have (written by an older version) falls back to the flag or the default.
    """
    settings = {}
    conflicts = []
    for name, default in defaults.items():
        value = given.get(name)
        if saved is not None and name in saved:
            if value is not None and value != saved[name]:
                conflicts.append(f"{flag_name(name)} {value!r}, but the run was started with {saved[name]!r}")
            settings[name] = saved[name]
        else:
            settings[name] = default if value is None else value
    if conflicts:
        raise CommandError(
            f"--resume continues the run in {source} as it was started, and these flags differ from its "
            f"settings:\n  " + "\n  ".join(conflicts) +
            "\nLeave those flags out to continue the run as it was (its settings are saved in its checkpoint), "
            "or start a new run with them (another --out, or --overwrite to replace this one)")
    if saved is not None:
        missing = [name for name in defaults if name not in saved]
        if missing:
            warnings.warn(f"the checkpoint in {source} does not record {missing} (written by an older version): "
                          f"using the flags or their defaults; repeat the original flags if they differed",
                          stacklevel=2)
    return settings


def resume_history(checkpoint, folder):
    """The evaluations up to the checkpoint's step: saved in the checkpoint itself (so a kill between
    writing ckpt.pt and history.json leaves no gap); for older checkpoints, read from history.json."""
    if "history" in checkpoint:
        return list(checkpoint["history"])
    path = os.path.join(folder, HISTORY)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            history = json.load(f)
        return [h for h in history if h["step"] <= checkpoint["step"]]
    except (ValueError, LookupError, TypeError) as e:
        raise CommandError(f"{path!r} is not a readable history ({e}); delete it to resume without the "
                           f"evaluations before step {checkpoint['step']}") from None
