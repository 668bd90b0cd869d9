"""Helpers for the launcher tests: the fake cluster tools on PATH, their call log, tiny sweeps."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from typing import Any, Sequence

from tests.helpers import FAST_COMPILE_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_BIN = os.path.join(REPO, 'tests', 'fake_bin')

SEQ_LEN = 32
DOC_CHARS = SEQ_LEN - 3  # a character tokenizer adds a word-start piece; packing adds bos, eos


def char_corpus(path: str) -> list[str]:
  """80 documents of DOC_CHARS random letters: with a character tokenizer each one is exactly
  one window, so a run reading them in order sees the same rows whatever its process count."""
  rng = random.Random(0)
  documents = [''.join(rng.choice('abcdefghij') for _ in range(DOC_CHARS)) for _ in range(80)]
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n\n'.join(documents))
  return documents


def tiny_run(corpus: str, **overrides: Any) -> dict[str, Any]:
  """A CLM sweep entry that starts, trains 4 steps and checkpoints in seconds on one CPU device."""
  return dict({
      'config': 'configs/clm.py:tiny', 'total_steps': 4, 'batch_size': 4, 'seq_len': SEQ_LEN,
      'log_every': 1, 'eval_steps': 0, 'checkpoint_every': 4, 'optimizer.warmup_steps': 1,
      'model.num_layers': 1, 'model.embed_dim': 32, 'model.num_heads': 2, 'model.mlp_dim': 64,
      'model.max_len': SEQ_LEN, 'data.source': 'text', 'data.train_files': corpus,
      'data.shuffle': False, 'data.tokenizer_model_type': 'char', 'data.vocab_size': 300},
              **overrides)


def reference_run(tmp_path_factory, cache: str) -> tuple[str, str, list[str]]:
  """(corpus, workdir, documents) of `tiny_run` trained once per session by a plain train.py,
  uninterrupted, one process: what launched runs must reproduce loss for loss."""
  root = tmp_path_factory.getbasetemp() / 'launch_reference'
  corpus, workdir = str(root / 'corpus.txt'), str(root / 'run')
  if not os.path.exists(os.path.join(workdir, 'done')):
    os.makedirs(root, exist_ok=True)
    documents = char_corpus(corpus)
    from launching import base  # pylint: disable=import-outside-toplevel

    entry = tiny_run(corpus)
    run = base.Run('reference', entry.pop('config'), tuple(entry.items()), workdir)
    env = dict(os.environ, **fake_environment(str(root / 'cloud'), cache))
    done = subprocess.run(base.train_command(run, python=sys.executable), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, 'done'), 'w', encoding='utf-8') as f:
      f.write('\n'.join(documents))
  with open(os.path.join(workdir, 'done'), encoding='utf-8') as f:
    return corpus, workdir, f.read().split('\n')


def fake_environment(state_dir: str, cache: str = '') -> dict[str, str]:
  """Environment variables that put the fakes first on PATH, with one CPU device per process."""
  os.makedirs(state_dir, exist_ok=True)
  env = {'PATH': f'{FAKE_BIN}{os.pathsep}{os.environ["PATH"]}', 'FAKE_CLOUD_DIR': state_dir,
         'FAKE_PYTHON': sys.executable, 'XLA_FLAGS': FAST_COMPILE_FLAGS, 'JAX_PLATFORMS': 'cpu'}
  if cache:
    env['PRETRAINING_OBJECTIVES_CACHE'] = cache
  return env


def use_fakes(monkeypatch, state_dir: str, cache: str = '',
              script: dict[str, Any] | None = None) -> None:
  for key, value in fake_environment(state_dir, cache).items():
    monkeypatch.setenv(key, value)
  if script is not None:
    write_script(state_dir, script)


def write_script(state_dir: str, script: dict[str, Any]) -> None:
  """The fake cloud's scripted life (see tests/fake_bin/gcloud)."""
  os.makedirs(state_dir, exist_ok=True)
  with open(os.path.join(state_dir, 'script.json'), 'w', encoding='utf-8') as f:
    json.dump(script, f)


def calls(state_dir: str, tool: str = '') -> list[dict[str, Any]]:
  """Every finished call of the fakes, in the order they ended."""
  path = os.path.join(state_dir, 'calls.jsonl')
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if not tool or r['tool'] == tool]


def words(call: dict[str, Any]) -> list[str]:
  return [a for a in call['args'] if not a.startswith('--')]


def slice_lifetimes(state_dir: str) -> tuple[list[str], list[str], int]:
  """(slices created, slices deleted, most slices in existence at once) from the call log."""
  created, deleted, alive, most = [], [], 0, 0
  for call in calls(state_dir, 'gcloud'):
    verb = words(call)[3:5]
    if words(call)[:3] == ['compute', 'tpus', 'queued-resources'] and call['code'] == 0:
      if verb[0] == 'create':
        created.append(verb[1])
        alive += 1
      elif verb[0] == 'delete':
        deleted.append(verb[1])
        alive -= 1
      most = max(most, alive)
  return created, deleted, most


def write_sweep(path: str, entries: Sequence[dict[str, Any]]) -> str:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'def get_sweep():\n  return {list(entries)!r}\n')
  return path
