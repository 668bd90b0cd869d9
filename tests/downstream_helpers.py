"""Tiny pretraining workdirs and toy task files for the downstream tests (no network).

A workdir is what train.py leaves, made by its library entry `train.run`: config.json,
tokenizer.model and the orbax checkpoint of a few steps of pretraining on a small corpus of
the toy task's words.
"""

from __future__ import annotations

import json
import os
import random

WORDS = {0: 'apple banana cherry grape melon peach plum lemon'.split(),
         1: 'river mountain ocean forest desert valley canyon island'.split()}
OBJECTIVE_CONFIGS = {'clm': 'clm', 'mlm': 'mlm', 'bert': 'bert', 'plm': 'plm',
                     'span_corruption': 'span_corruption'}
FILLER = 'the quick brown fox jumps over the lazy dog'
PRETRAIN_STEPS = 4


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
  texts += [f'{FILLER} and what is said is said'] * 20
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


def pretraining_corpus(path: str, documents: int = 96, seed: int = 3) -> str:
  """JSON lines of documents of four sentences, three of toy words and one of filler prose
  (BERT's sentence pairs need two sentences or more in a document)."""
  rng = random.Random(seed)
  records = []
  for i in range(documents):
    sentences = [' '.join(rng.choice(WORDS[(i + j) % 2]) for _ in range(4)) for j in range(3)]
    records.append({'text': '. '.join(sentences + [FILLER]) + '.'})
  return write_jsonl(path, records)


def pretrain(workdir: str, objective: str, corpus: str, steps: int = PRETRAIN_STEPS) -> str:
  """A real pretraining workdir: `steps` steps of train.run on the `corpus` JSON lines with
  its own tokenizer, checkpointed halfway and at the end. The caller sets the cache root (the
  corpus build and the tokenizer are cached there)."""
  import train  # pylint: disable=import-outside-toplevel

  config = tiny_config(objective)
  config.total_steps = steps
  config.log_every = config.eval_every = steps
  config.checkpoint_every = steps // 2
  config.eval_steps = 0
  config.optimizer.warmup_steps = 1
  config.data.update(source='text', train_files=corpus, vocab_size=320)
  train.run(config, workdir)
  return workdir


def checkpoint_params(workdir: str, step: int) -> dict:
  """The model parameters saved in `workdir`'s checkpoint at `step`, read straight from the
  orbax files (no restore target, nothing compiled): what a loader must return."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from training import state as state_lib  # pylint: disable=import-outside-toplevel

  path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step), 'state')
  return state_lib.model_params(ocp.StandardCheckpointer().restore(path)['params'])


def saved_workdir(workdir: str, objective: str, tokenizer_path: str,
                  steps: tuple[int, ...] = (PRETRAIN_STEPS // 2, PRETRAIN_STEPS)) -> str:
  """A workdir as a run leaves it (config.json, tokenizer.model, a checkpoint and its data
  position at each of `steps`), its states initialised rather than trained: seconds instead
  of a training run's compilation. Each later checkpoint's params are the previous ones + 1."""
  import shutil  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from training import checkpoint, experiment, optim  # pylint: disable=import-outside-toplevel
  from training import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  config = tiny_config(objective)
  os.makedirs(workdir)
  tokenizer = workdir_lib.path(workdir, workdir_lib.TOKENIZER_FILE)
  shutil.copy(tokenizer_path, tokenizer)
  exp = experiment.build(config, workdir, data=False, tokenizer_path=tokenizer)
  state, _ = exp.init_state(optim.make_optimizer(config.optimizer, config.total_steps))
  checkpointer = checkpoint.Checkpointer(workdir, config.keep_checkpoints, 0)
  for index, step in enumerate(steps):
    if index:
      state = state.replace(params=jax.tree.map(lambda x: x + 1, state.params))
    checkpointer.save(step, state, {'iterator': {}, 'tokens': 0})
  checkpointer.close()
  with open(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE), 'w', encoding='utf-8') as f:
    f.write(config.to_json(indent=2))
  return workdir
