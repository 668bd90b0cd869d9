"""Tiny pretraining workdirs and toy task files for the downstream tests (no corpus, no network).

A workdir is what train.py leaves: config.json, tokenizer.model and an orbax checkpoint, here
of a freshly initialised state saved through the trainer's own Checkpointer.
"""

from __future__ import annotations

import json
import os
import random

WORDS = {0: 'apple banana cherry grape melon peach plum lemon'.split(),
         1: 'river mountain ocean forest desert valley canyon island'.split()}
OBJECTIVE_CONFIGS = {'clm': 'clm', 'mlm': 'mlm', 'bert': 'bert', 'plm': 'plm'}


def toy_examples(count: int, seed: int, words: int = 8) -> list[dict]:
  """Balanced two-class texts whose classes use disjoint word sets (linearly separable)."""
  rng = random.Random(seed)
  return [{'text': ' '.join(rng.choice(WORDS[i % 2]) for _ in range(words)), 'label': i % 2}
          for i in range(count)]


def write_jsonl(path: str, records: list[dict]) -> str:
  with open(path, 'w', encoding='utf-8') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')
  return path


def train_tokenizer(path: str, vocab_size: int = 320) -> str:
  """A SentencePiece model trained on the toy words and some filler prose."""
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel

  texts = [e['text'] for e in toy_examples(200, 99)]
  texts += ['the quick brown fox jumps over the lazy dog and what is said is said'] * 20
  with open(path, 'wb') as f:
    f.write(tokenizer_lib.train_model(texts, vocab_size, log_path=path + '.log'))
  return path


def tiny_config(objective: str):
  """configs/<objective>.py:tiny shrunk to a 1-layer, 32-wide model on 32-token inputs."""
  import importlib  # pylint: disable=import-outside-toplevel

  config = importlib.import_module(f'configs.{OBJECTIVE_CONFIGS[objective]}').get_config('tiny')
  config.seq_len = 32
  config.batch_size = 8
  config.total_steps = 10
  config.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, max_len=48)
  if 'plm' in config:
    config.plm.update(num_predict=4, max_span=2)
  return config


def make_workdir(workdir: str, objective: str, tokenizer_path: str, step: int = 5) -> str:
  """A pretraining workdir of `objective` holding a freshly initialised checkpoint at `step`."""
  import shutil  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from training import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  from training import experiment, optim  # pylint: disable=import-outside-toplevel

  os.makedirs(workdir, exist_ok=True)
  shutil.copy(tokenizer_path, os.path.join(workdir, 'tokenizer.model'))
  config = tiny_config(objective)
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json(indent=2))
  exp = experiment.build(config, workdir, data=False)
  state, _ = exp.init_state(optim.make_optimizer(config.optimizer, config.total_steps))
  state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))
  checkpointer = checkpoint_lib.Checkpointer(workdir, 3, 0)
  checkpointer.save(step, state, {})
  checkpointer.close()
  return workdir
