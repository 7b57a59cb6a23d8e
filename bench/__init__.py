"""Taskplane's benchmarks and autoscaling experiment: ``python -m bench`` (see bench/run.py)."""
