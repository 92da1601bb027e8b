"""Benchmarks that measure the job against the hardware's limit, side by side in one run."""
