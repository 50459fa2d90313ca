"""Experiments: several runs on the same data, model, seed and budget (`compare`, `sweep`, the quickstart), their
statistics and their report."""
