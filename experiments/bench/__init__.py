"""The benchmarks: timing and memory measured side by side in one run, each written to
results/bench_<name>/ (python -m experiments.bench.lora, .ddp, .adapters; scale.py runs
.peak_memory). They import experiments.lib, never an experiment command."""
