"""The aigw benchmark harness; run it with `make bench` (see bench/harness.py)."""
