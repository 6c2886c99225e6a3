"""Benchmarks: ambit beside the baselines it runs with, reported as ratios."""
