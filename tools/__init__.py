"""Command-line tools that drive train.py (sweep launching)."""
