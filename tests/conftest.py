"""Shared test setup: plots go to files only (no display on CI), and notebooks run in fast mode."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NOTEBOOK_FAST", "1")
