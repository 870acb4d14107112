"""Harnesses for tests and measurements: the whole control plane in one
process (inprocess.py) with simulated spawnd workers (simulated.py), run by
the manager's own event loop."""
