"""Downstream evaluation of pretrained checkpoints: tasks, heads, fine-tuning strategies,
prompting and instruction tuning (see docs/downstream.md)."""
