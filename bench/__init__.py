"""Benchmarks for DESIGN §6: ratios of medians measured side by side in one run.

Run `python -m bench [--only NAME] [--quick]` from the repository root. Every benchmark times
its contenders interleaved (see `bench.timing`), prints a table of median times, ratios
against a reference contender and the DESIGN goal, and writes `bench/results/<name>.json`.
Nothing here asserts a timing: the numbers are for people (and CI logs) to read.
"""
