"""Many adapters on disk, a few in memory: a folder of adapter files over one base model, with at
most `capacity` of them loaded on the model at a time; the least recently used leaves first.

    store = AdapterStore(model, "adapters/", capacity=64)   # adapters/NAME.pt, from save_adapter
    store.use(["french", "legal"])                           # resident now: loaded from disk if not
    with mixed_adapters(model, ["french", "legal", None]):   # then serve them in one batch
        ...
    store.hits, store.loads, store.evictions                 # what it cost

"One base model, thousands of adapters": S-LoRA (Sheng et al. 2023) keeps every adapter in host
memory and moves the few that the running batch needs onto the GPU, evicting others. Here the
folder plays host memory and the model's adapters play the GPU's: an adapter that is asked for
and already loaded is a hit; one that is not is read from its file (load_adapter: shapes and the
base model's fingerprint checked) after the least recently used one is removed, when `capacity`
are loaded already. So memory holds the base and at most `capacity` adapters, however many files
the folder has.

A batch needs all of its adapters at once, so use() takes them together and refuses more than
`capacity` distinct ones. Adapters the model had before the store are not the store's: it never
counts or evicts them.
"""
import os
from collections import OrderedDict

from minilora.adapter_file import load_adapter
from minilora.checks import check_adapter_name
from minilora.model_ops import lora_layers

SUFFIX = ".pt"


def remove_adapter(model, name):
    """Delete adapter name from every layer of model (its A, B and settings), freeing its memory.
    A layer whose active adapter it was computes its base function afterwards."""
    merged = [n for n, layer in lora_layers(model) if layer.merged_adapter == name]
    if merged:
        raise RuntimeError(f"adapter {name!r} is merged into {merged[0]!r}; unmerge_lora(model) before removing it")
    for _, layer in lora_layers(model):
        if name in layer.adapters:
            del layer.adapters[name]
            if layer.active_adapter == name:
                layer.active_adapter = None


def adapter_files(folder):
    """{name: path} for the adapter files NAME.pt in folder, by name (a name holds no '.')."""
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"adapter folder not found: {folder!r}; give a folder of NAME.pt adapter files "
                                 f"(written by save_adapter)")
    files = {}
    for entry in sorted(os.listdir(folder)):
        name = entry[: -len(SUFFIX)]
        if entry.endswith(SUFFIX) and name and "." not in name and os.path.isfile(os.path.join(folder, entry)):
            files[name] = os.path.join(folder, entry)
    return files


class AdapterStore:
    """The adapter files in folder, at most capacity of them loaded on model (see the module docstring)."""

    def __init__(self, model, folder, capacity, quantize_as_trained=False):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1 (adapters kept loaded at once), got {capacity!r}")
        self.model = model
        self.folder = folder
        self.capacity = capacity
        self.quantize_as_trained = quantize_as_trained
        self.files = adapter_files(folder)  # name -> path
        self.resident = OrderedDict()  # the loaded adapters' names, least recently used first
        self.hits = self.loads = self.evictions = 0

    def __contains__(self, name):
        return name in self.files

    def path(self, name):
        """The file of adapter name; a clear error for a name the folder does not have."""
        if name not in self.files:
            some = list(self.files)[:5]
            raise KeyError(f"unknown adapter {name!r}: no file {name + SUFFIX!r} in {self.folder!r} "
                           f"(it has {len(self.files)} adapters{', e.g. ' + str(some) if some else ''})")
        return self.files[name]

    def use(self, names):
        """Make every adapter in names resident (None entries are the base model and skipped).
        Those already loaded are hits and become the most recently used first, so that loading
        the others never evicts one this call needs. Returns the distinct names. An unknown name
        or too many names raise before anything changes; a file that does not fit the model
        raises before that adapter is loaded."""
        wanted = list(dict.fromkeys(n for n in names if n is not None))
        if len(wanted) > self.capacity:
            raise ValueError(f"{len(wanted)} distinct adapters asked for at once, but the store keeps at most "
                             f"{self.capacity} loaded; use fewer per batch or a larger capacity")
        for name in wanted:
            self.path(name)  # every name known before anything is loaded or evicted
        for name in sorted(wanted, key=lambda n: n not in self.resident):  # hits first, then loads
            self._use(name)
        return wanted

    def _use(self, name):
        if name in self.resident:
            self.hits += 1
            self.resident.move_to_end(name)  # now the most recently used
            return
        check_adapter_name(name)
        while len(self.resident) >= self.capacity:
            oldest, _ = self.resident.popitem(last=False)  # the least recently used leaves first
            remove_adapter(self.model, oldest)
            self.evictions += 1
        load_adapter(self.model, self.path(name), adapter_name=name, quantize_as_trained=self.quantize_as_trained)
        self.resident[name] = None
        self.loads += 1

    def stats(self):
        """The counters and the resident adapters, least recently used first."""
        return {"hits": self.hits, "loads": self.loads, "evictions": self.evictions,
                "resident": list(self.resident), "capacity": self.capacity, "files": len(self.files)}
