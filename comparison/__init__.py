"""Objective comparisons: per-run scores, statistics across arms, scaling fits and the report."""
