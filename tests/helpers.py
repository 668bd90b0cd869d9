"""Helpers the test files share: the fast-compile flags, a small training config, reading a
run's metrics, exact-resume checks, a run trained through train.py, corpus and checkpoint
tinkering, small train states saved as checkpoints. Imported by test files (never another
test file or conftest); imports no JAX at import time."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from typing import Any, Callable

# The tests are compile bound: a lower XLA:CPU optimisation level cuts compile time severalfold
# and changes no comparison, since every run in a test (subprocesses inherit it) uses it. The
# one run bound by step time, tests/test_bert_run.py, sets its own flags.
FAST_COMPILE_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
TEST_CACHE_ENV = 'PRETRAINING_OBJECTIVES_CACHE'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# --- a new objective's run through train.py (prefix LM, deshuffling, ELECTRA, span corruption)

RUN_KEYS = ('total_steps', 'batch_size', 'seq_len', 'log_every', 'eval_every', 'eval_steps',
            'checkpoint_every', 'optimizer.warmup_steps', 'optimizer.learning_rate',
            'model.num_layers', 'model.embed_dim', 'model.num_heads', 'model.mlp_dim',
            'model.max_len', 'data.builtin_max_files', 'data.vocab_size', 'data.data_dir')


def trained_run(root: str, spec: str, cache: str) -> str:
  """Trains `python train.py --config configs/<spec>` for 16 steps of 8 x 32 tokens in
  root/<objective> (once per root) and returns the workdir.

  A subprocess on one CPU device: the tests' eight simulated devices would make every step an
  all-reduce whose rendezvous XLA aborts after 40 s on a heavily shared machine.
  """
  file, _, preset = spec.partition(':')
  module = importlib.import_module(f'configs.{file}')
  config = small_run_config(module.get_config(preset), cache, total_steps=16, log_every=4,
                            eval_every=16, eval_steps=1, checkpoint_every=16, seq_len=32)
  config.model.max_len = config.seq_len
  workdir = os.path.join(root, str(config.objective))
  if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    value = lambda key: functools.reduce(lambda node, part: node[part], key.split('.'), config)
    flags = [f'--config.{key}={value(key)}' for key in RUN_KEYS]
    env = dict(os.environ, PRETRAINING_OBJECTIVES_CACHE=cache, JAX_PLATFORMS='cpu',
               XLA_FLAGS=f'--xla_force_host_platform_device_count=1 {FAST_COMPILE_FLAGS}')
    result = subprocess.run(
        [sys.executable, 'train.py', f'--config=configs/{file}.py:{preset}',
         f'--workdir={workdir}', *flags], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def assert_train_loss_falls(workdir: str, margin: float) -> None:
  """A `trained_run`'s loss fell by `margin` from its first logged step to its last."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  evals, trains = run_records(workdir)
  assert [r['step'] for r in trains] == [4, 8, 12, 16]
  assert trains[-1]['loss'] < trains[0]['loss'] - margin, [r['loss'] for r in trains]
  assert evals and all(np.isfinite(r['loss']) for r in evals)


# --- corpora and checkpoints

READER_WORDS = ('river stone cloud garden window paper silver market letter engine forest '
                'bridge candle winter number travel orange quiet simple yellow').split()


def make_documents(count: int, seed: int = 0) -> list[str]:
  """Documents of 2-7 sentences of 3-9 words each."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  words = READER_WORDS
  return [' '.join(' '.join(words[j] for j in rng.integers(0, len(words), rng.integers(3, 10)))
                   .capitalize() + '.' for _ in range(rng.integers(2, 8)))
          for _ in range(count)]


def text_corpus(folder, make: Callable[[int, int], list[str]], *, train: int, validation: int,
                vocab_size: int, max_chars: int, tokenizer_documents: int):
  """(data config, train documents read back from array_record, tokenizer) of a local text
  corpus written into `folder` (a pathlib path): `make(count, seed)` gives its train (seed 0)
  and validation (seed 1) documents and the tokenizer's training sample (seed 2)."""
  import pytest  # pylint: disable=import-outside-toplevel
  from data import pipeline  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from data.config import data_config  # pylint: disable=import-outside-toplevel

  (folder / 'train.txt').write_text('\n\n'.join(make(train, 0)) + '\n')
  (folder / 'valid.txt').write_text('\n\n'.join(make(validation, 1)) + '\n')
  config = data_config(vocab_size)
  config.update(source='text', data_dir=str(folder / 'tfds'), train_files=str(folder / 'train.txt'),
                validation_files=str(folder / 'valid.txt'), tokenizer_max_chars=max_chars)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(TEST_CACHE_ENV, str(folder / 'cache'))
    documents = pipeline.load_documents(config, 'train')
    tokenizer = tokenizer_lib.load_or_train(config, str(folder / 'tok'),
                                            make(tokenizer_documents, 2))
  assert len(documents) == train
  return config, documents, tokenizer


def biggest_file(workdir, step):
  """The largest file of checkpoint `step` in `workdir`."""
  root = os.path.join(workdir, 'checkpoints', str(step))
  files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
  return max(files, key=os.path.getsize)


def corrupt(path):
  """Flips 64 bytes a third of the way into `path`."""
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    for i in range(len(data) // 3, len(data) // 3 + 64):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


def packed_iterator(documents, tokenize: Callable[[str], list[int]], vocab, *, seq_len: int,
                    local_batch_size: int, process_index: int = 0, process_count: int = 1,
                    seed: int = 0, shuffle: bool = True, repeat: bool = True,
                    attend_across_documents: bool = False):
  """Batches of packed windows of `documents` (data/formats/packed.py over data/reader.py)."""
  from data.formats.packed import Packed  # pylint: disable=import-outside-toplevel
  from data.reader import ExampleIterator  # pylint: disable=import-outside-toplevel
  from data.tokens import EncodedDocuments  # pylint: disable=import-outside-toplevel

  fmt = Packed(vocab, seq_len, {'attend_across_documents': attend_across_documents})
  return ExampleIterator(fmt, EncodedDocuments(documents, tokenize),
                         local_batch_size=local_batch_size, process_index=process_index,
                         process_count=process_count, seed=seed, shuffle=shuffle, repeat=repeat)


def pair_iterator(documents, tokenize: Callable[[str], list[int]], vocab, *, seq_len: int,
                  local_batch_size: int, process_index: int = 0, process_count: int = 1,
                  seed: int = 0, shuffle: bool = True, repeat: bool = True,
                  short_seq_prob: float = 0.1, sentence_order: bool = False,
                  name: str = 'the training documents'):
  """Batches of sentence pairs (or sentence-order pairs) of `documents`
  (data/formats/pairs.py over data/reader.py)."""
  # pylint: disable-next=import-outside-toplevel
  from data.formats.pairs import SentenceOrderPairs, SentencePairs
  from data.reader import ExampleIterator  # pylint: disable=import-outside-toplevel
  from data.tokens import EncodedDocuments  # pylint: disable=import-outside-toplevel

  fmt = (SentenceOrderPairs if sentence_order else SentencePairs)(
      vocab, seq_len, {'short_seq_prob': short_seq_prob})
  return ExampleIterator(fmt, EncodedDocuments(documents, tokenize),
                         local_batch_size=local_batch_size, process_index=process_index,
                         process_count=process_count, seed=seed, shuffle=shuffle, repeat=repeat,
                         name=name)


STATE_EMBED, STATE_VOCAB, STATE_LAYERS, STATE_MLP = 8, 16, 2, 12


def make_state(step: int, embed: int = STATE_EMBED) -> Any:
  """A small train state whose parameters encode `step` (so restores are identifiable)."""
  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp
  import optax

  from training import state as state_lib

  params = {'token_embed': {'embedding': jnp.full((STATE_VOCAB, embed), float(step))},
            'layers': {'mlp': {'wi': {'kernel': jnp.arange(
                STATE_LAYERS * embed * STATE_MLP, dtype=jnp.float32).reshape(
                    STATE_LAYERS, embed, STATE_MLP) + step}}}}
  tx = optax.adam(1e-3)
  return state_lib.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                              opt_state=tx.init(params), nonfinite_total=jnp.zeros((), jnp.int32),
                              nonfinite_streak=jnp.zeros((), jnp.int32), tx=tx)


def save_steps(workdir, steps, keep=3):
  """Checkpoints of `make_state(step)` at each of `steps` in `workdir`; the closed saver."""
  from training import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel

  checkpointer = checkpoint_lib.Checkpointer(str(workdir), keep, 0)
  for step in steps:
    checkpointer.save(step, make_state(step), {'position': step})
  checkpointer.close()
  return checkpointer


def write_json(path: str, record) -> None:
  """Writes `record` to `path` as JSON, making its folders."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(record, f)


def finished_budget_run(root: str, name: str, objective, seed: int,
                        data_format: str = 'packed') -> str:
  """A finished budget run: checkpoints at 25/50/100% (steps 2, 4, 8), 1000 tokens a step."""
  workdir = os.path.join(root, name)
  write_json(os.path.join(workdir, 'config.json'), {
      'objective': objective, 'seed': seed, 'data': {'format': data_format},
      'budget': {'tokens': 8000, 'keep_fractions': [0.25, 0.5, 1.0]}})
  write_json(os.path.join(workdir, 'run.json'), {'flops_per_step': 1e9, 'kept_steps': [2, 4, 8],
                                              'total_steps': 8})
  for step in (2, 4, 8):
    os.makedirs(os.path.join(workdir, 'checkpoints', str(step)))
  write_json(os.path.join(workdir, 'data_state', 'step_4.process_0.json'), {'tokens': 3900})
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w', encoding='utf-8') as f:
    for step in (1, 3, 8):
      f.write(json.dumps({'step': step, 'split': 'train', 'tokens': 1000 * step}) + '\n')
  return workdir


def run_recording_python3(tmp_path, script: str) -> list[str]:
  """Runs `script` with bash where `python3` is a stub that records its argv; that argv."""
  (tmp_path / 'bin').mkdir()
  (tmp_path / 'bin' / 'python3').write_text(
      f'#!{sys.executable}\nimport json, sys\n'
      f'open({str(tmp_path / "argv.json")!r}, "w").write(json.dumps(sys.argv[1:]))\n')
  (tmp_path / 'bin' / 'python3').chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}')
  done = subprocess.run(['bash', '-c', script], cwd=tmp_path, env=env, capture_output=True,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / 'argv.json', encoding='utf-8') as f:
    return json.load(f)
