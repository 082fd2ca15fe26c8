"""The benchmarks: timing and memory measured side by side in one run and printed as ratios, each
written to results/bench_<name>/ or results/gpt2/ (python -m experiments.bench.lora, .ddp, .adapters,
.gpt2_load, .gpt2_tokenizer, .gpt2_step; scale.py runs .peak_memory). They import experiments.lib,
never an experiment command."""
