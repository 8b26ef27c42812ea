"""Benchmarks of the worker pair against bare baselines measured in the same run."""
