"""Benchmarks: the project against its peers, measured side by side in one run."""
