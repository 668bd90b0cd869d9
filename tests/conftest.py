"""Shared test setup: CPU only, eight simulated devices, fast compilation and the session's
fixtures. Helpers the test files import live in tests/helpers.py (never import this file)."""

from __future__ import annotations

import os

from tests.helpers import FAST_COMPILE_FLAGS

# Eight simulated CPU devices so mesh tests can shard; must precede importing jax. The fast
# compile flags (tests/helpers.py) cut compile time severalfold and change no comparison.
os.environ.setdefault('XLA_FLAGS',
                      f'--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope='session')
def shared_cache(tmp_path_factory):
  """One corpus/tokenizer cache for the whole session, so builds happen once."""
  path = tmp_path_factory.mktemp('cache')
  return str(path)


@pytest.fixture
def runs_root(tmp_path_factory, shared_cache, monkeypatch):
  """One folder of runs per session (tests/helpers.py's `trained_run`), so the report test
  reuses the objectives' own runs."""
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)
  return str(tmp_path_factory.getbasetemp() / 'new_objective_runs')
