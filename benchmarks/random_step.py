"""A run's jitted train step on random tokens, built through the shared assembly with no
data (no flags: the throughput and overhead benchmarks share it)."""

from __future__ import annotations

import tempfile
from typing import Any

import jax
import numpy as np

from data.vocab import toy_vocab
from training import experiment, mesh as mesh_lib, optim, step as step_lib


def random_batch(data_format: str, batch: int, seq_len: int, vocab: int, rng,
                 data_config=None) -> dict:
  """Full rows of random tokens in the format's shapes (under `data_config`: a `lengths`
  entry where its rows are one segment, so attention takes the same path as in training)."""
  from data import pipeline  # pylint: disable=import-outside-toplevel
  example = pipeline.example_batch(data_format, batch, seq_len, data_config)
  example['tokens'] = rng.integers(7, vocab, size=(batch, seq_len), dtype=np.int32)
  if 'next_sentence_label' in example:
    example['token_types'][:, seq_len // 2:] = 1
    example['next_sentence_label'] = rng.integers(0, 2, size=(batch,), dtype=np.int32)
  return example


def compiled_train_step(config) -> tuple[Any, Any, Any, Any]:
  """(experiment, initial state, jitted train step, batch sharding) of `config` built through
  the shared assembly without data, on a toy vocabulary of the config's size."""
  vocab_size = config.model.vocab_size or config.data.vocab_size
  with tempfile.TemporaryDirectory() as workdir:
    exp = experiment.build(config, workdir, data=False, vocab=toy_vocab(vocab_size))
  state, shardings = exp.init_state(optim.make_optimizer(config.optimizer, config.total_steps))
  batch_sharding = mesh_lib.batch_sharding(exp.mesh, exp.rules)
  train_step = jax.jit(step_lib.make_train_step(
      exp.model(), exp.objective, 0,
      optim.learning_rate_schedule(config.optimizer, config.total_steps)),
      in_shardings=(shardings, batch_sharding), donate_argnums=(0,))
  return exp, state, train_step, batch_sharding
