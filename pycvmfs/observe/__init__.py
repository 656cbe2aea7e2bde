"""Observing mounts from outside: what `pycvmfs status` and `pycvmfs metrics` read."""
