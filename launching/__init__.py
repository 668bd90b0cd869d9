"""Launching sweeps: a sweep's runs (`sweep`), their launch.json records (`record`) and the
backends that run them (`backends/`, one file each); tools/launch.py is the command."""
