"""The machinery the experiment commands share: the base model, fine-tuning runs and their cache,
seeds and statistics, learning-rate tuning, memory accounting, plots and the report's prose.
Nothing here imports an experiment command (experiments/<name>.py) or a benchmark."""
