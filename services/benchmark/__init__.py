"""Benchmark service: quality suites, load measurement and comparisons of model versions."""
