"""Shared test setup: CPU only, a private cache, and a small training config."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

# Eight simulated CPU devices so mesh tests can shard; must precede importing jax. The
# tests are compile bound: a lower XLA:CPU optimisation level cuts compile time severalfold
# and changes no comparison, since every run in a test (subprocesses inherit it) uses it. The
# one run bound by step time, tests/test_bert_run.py, sets its own flags.
FAST_COMPILE_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
os.environ.setdefault('XLA_FLAGS',
                      f'--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=wrong-import-position

TEST_CACHE_ENV = 'PRETRAINING_OBJECTIVES_CACHE'


@pytest.fixture(scope='session')
def shared_cache(tmp_path_factory):
  """One corpus/tokenizer cache for the whole session, so builds happen once."""
  path = tmp_path_factory.mktemp('cache')
  return str(path)


def small_run_config(config, cache: str, **overrides):
  """Shrinks a config to a CPU test run over a few standard-library files."""
  config.total_steps = 12
  config.batch_size = 8
  config.seq_len = 64
  config.log_every = 4
  config.eval_every = 6
  config.eval_steps = 2
  config.checkpoint_every = 6
  config.optimizer.warmup_steps = 2
  config.optimizer.learning_rate = 3e-3
  config.model.update(num_layers=2, embed_dim=64, num_heads=2, mlp_dim=128, max_len=64)
  config.data.update(builtin_max_files=120, vocab_size=600, data_dir=os.path.join(cache, 'tfds'))
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def read_metrics(workdir: str) -> list[dict]:
  """Every record of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def run_records(workdir: str) -> tuple[list[dict], list[dict]]:
  """(eval records, train records) of a run's metrics.jsonl, in order."""
  records = read_metrics(workdir)
  return ([r for r in records if r['split'] == 'eval'],
          [r for r in records if r['split'] == 'train'])


def check_exact_resume(make_iterator: Callable[[], Any], skip: int, compare: int):
  """Restores a fresh iterator from a JSON round trip of another's state after `skip` batches;
  asserts the next `compare` batches and the stats are identical. Returns (original, state)."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  original = make_iterator()
  for _ in range(skip):
    next(original)
  state = json.loads(json.dumps(original.get_state()))
  expected = [next(original) for _ in range(compare)]
  restored = make_iterator()
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert restored.stats == original.stats
  return original, state
