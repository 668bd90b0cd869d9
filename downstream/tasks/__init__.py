"""Downstream tasks, one file per source; `registry.build(config.task)` returns a `base.Task`."""
