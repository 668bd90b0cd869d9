"""Command-line tools around train.py (sweeps, evaluation, fine-tuning, generation, reports);
cli.py is what the commands, train.py included, share."""
