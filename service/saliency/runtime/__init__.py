"""Serving runtime: configuration, per-model workers (fast pool + batched deep worker), metrics."""
