"""Pretrain the shared Transformer with any registered objective.

  python train.py --config configs/clm.py[:preset] --workdir runs/clm [--config.key=value ...]

Running it again on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

import data.corpora as corpora
from data import pipeline
from data import tokenizer as tokenizer_lib
from models.config import ModelConfig
from objectives import registry
from training import checks, distributed, flops, mesh as mesh_lib
from training import metrics as metrics_lib

PREEMPTED_EXIT_CODE = 143  # what a process stopped by SIGTERM conventionally returns


class SetupError(Exception):
  """Bad input found before compilation; printed as one line."""


@dataclasses.dataclass
class Run:
  """What setup() builds: everything the training loop needs, nothing compiled yet."""

  config: Any
  workdir: str
  tokenizer: Any
  objective: Any
  model_config: ModelConfig
  mesh: Any
  rules: Any
  train_iter: Any
  make_eval_iter: Any
  local_batch_size: int
  flops_per_step: float


def _train_texts(documents, max_chars: int):
  total = 0
  for index in range(len(documents)):
    text = documents[index]
    yield text
    total += len(text)
    if total >= max_chars:
      return


def setup(config, workdir: str) -> Run:
  """Validates the config, prepares data and tokenizer, builds the objective and mesh."""
  import jax  # pylint: disable=import-outside-toplevel

  checks.check_keys(config)
  checks.check_values(config)
  distributed.maybe_initialize(config.distributed)
  mesh = mesh_lib.make_mesh(config.mesh)
  checks.check_batch(config, mesh_lib.data_parallel_size(mesh), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  if config.resume:
    checks.check_resume(config, workdir)

  train_docs = corpora.load_documents(config.data, 'train')
  tokenizer = tokenizer_lib.load_or_train(
      config.data, workdir, _train_texts(train_docs, config.data.tokenizer_max_chars))
  vocab_size = checks.check_vocab(config, tokenizer.size)
  objective = registry.build(config.objective, lambda name: config.get(name, {}),
                             vocab=tokenizer.vocab, seq_len=config.seq_len)
  model_values = dict(config.model)
  model_values['vocab_size'] = vocab_size
  model_config = ModelConfig.from_config(model_values, **objective.model_overrides())

  local_batch = config.batch_size // jax.process_count()
  iterator_args = dict(local_batch_size=local_batch, process_index=jax.process_index(),
                       process_count=jax.process_count())
  train_iter = pipeline.make_iterator(config, objective.data_format, 'train', tokenizer,
                                      train_docs, **iterator_args)
  eval_docs = corpora.load_documents(config.data, 'validation') if config.eval_steps else None
  if eval_docs is not None and len(eval_docs) < jax.process_count():
    raise ValueError(f'The validation split of config.data.source={config.data.source!r} has '
                     f'{len(eval_docs)} documents, fewer than the processes: add validation data '
                     'or set config.eval_steps=0.')

  def make_eval_iter():
    return pipeline.make_iterator(config, objective.data_format, 'validation', tokenizer,
                                  eval_docs, **iterator_args)

  flops_per_step = config.batch_size * flops.objective_flops_per_sequence(
      objective, model_config, config.seq_len)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json(indent=2))
  return Run(config, workdir, tokenizer, objective, model_config, mesh,
             mesh_lib.logical_rules(config.mesh), train_iter, make_eval_iter, local_batch,
             flops_per_step)


def train(run: Run) -> dict[str, float]:
  """The training loop; returns the last train and eval metrics."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from models.transformer import Transformer  # pylint: disable=import-outside-toplevel
  from training import checkpoint as checkpoint_lib  # pylint: disable=import-outside-toplevel
  from training import optim, state as state_lib, step as step_lib  # pylint: disable=import-outside-toplevel

  config, workdir = run.config, run.workdir
  primary = jax.process_index() == 0
  progress = metrics_lib.Progress(config.total_steps, enabled=primary)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary)
  model = Transformer(run.model_config)
  schedule = optim.learning_rate_schedule(config.optimizer, config.total_steps)
  tx = optim.make_optimizer(config.optimizer, config.total_steps)
  example = pipeline.example_batch(run.objective.data_format, 2, config.seq_len)

  def init_params(key):
    inputs, _ = run.objective.prepare(key, example)
    return model.init({'params': key, 'dropout': key}, inputs)['params']

  state, state_shardings = state_lib.sharded_init(
      init_params, tx, run.mesh, run.rules, jax.random.key(config.seed))
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, jax.process_index())
  start_step = 0
  latest = checkpointer.latest_step() if config.resume else None
  if latest is not None:
    state, data_state = checkpointer.restore(latest, state_lib.abstract_state(state))
    run.train_iter.set_state(data_state)
    start_step = int(state.step)
    progress.message(f'Resumed from {workdir} at step {start_step}.')
  if start_step >= config.total_steps:
    progress.message(f'Nothing to do: the run in {workdir} is at step {start_step} of '
                     f'{config.total_steps}.')
    checkpointer.close()
    return {}

  param_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  batch_sharding = mesh_lib.batch_sharding(run.mesh)
  replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
  train_step = jax.jit(
      step_lib.make_train_step(model, run.objective, config.seed, schedule),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated),
      donate_argnums=(0,))
  eval_step = jax.jit(step_lib.make_eval_step(model, run.objective, config.seed),
                      in_shardings=(state_shardings.params, batch_sharding, replicated),
                      out_shardings=replicated)

  def device_batch(host_batch):
    return {k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in host_batch.items()}

  peak = flops.peak_flops_per_device()
  if primary:
    with open(os.path.join(workdir, 'run.json'), 'w', encoding='utf-8') as f:
      json.dump({'objective': config.objective if isinstance(config.objective, str)
                 else dict(config.objective), 'params': param_count,
                 'flops_per_step': run.flops_per_step, 'tokens_per_step':
                 config.batch_size * config.seq_len, 'devices': jax.device_count(),
                 'device_kind': jax.devices()[0].device_kind, 'mesh': dict(run.mesh.shape),
                 'processes': jax.process_count(), 'peak_flops_per_device': peak}, f, indent=2)
    progress.message(f'{param_count / 1e6:.2f}M parameters | objective {config.objective} | '
                     f'{jax.device_count()} {jax.devices()[0].platform} device(s), mesh '
                     f'{dict(run.mesh.shape)} | {run.flops_per_step / 1e9:.2f} GFLOP/step')

  preempted = {'signal': None}

  def on_sigterm(signum, frame):  # pylint: disable=unused-argument
    preempted['signal'] = signum

  previous_handler = signal.signal(signal.SIGTERM, on_sigterm)

  def evaluate(step: int, params) -> dict[str, float]:
    total = None
    for index, host_batch in enumerate(run.make_eval_iter()):
      if index >= config.eval_steps:
        break
      total = step_lib.accumulate(total, eval_step(params, device_batch(host_batch), index))
    if total is None:
      progress.message('The validation split gave no batch: evaluation skipped.')
      return {}
    values = metrics_lib.reduce(total)
    writer.write(step, 'eval', values)
    progress.eval(step, values)
    return values

  def save(step: int, force: bool = False) -> None:
    checkpointer.save(step, state, run.train_iter.get_state(), force=force)

  tokens_per_step = config.batch_size * config.seq_len
  last_train, last_eval = {}, {}
  interval_metrics, interval_start, interval_steps = None, time.time(), 0
  train_seconds = 0.0
  step = start_step
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    if start_step == 0 and config.eval_steps:
      last_eval = evaluate(0, state.params)
    try:
      for step in range(start_step + 1, config.total_steps + 1):
        host_batch = next(run.train_iter)
        state, step_metrics = train_step(state, device_batch(host_batch))
        interval_metrics = step_lib.accumulate(interval_metrics, step_metrics)
        interval_steps += 1
        if step % config.log_every == 0 or step == config.total_steps:
          values = metrics_lib.reduce(interval_metrics)
          elapsed = time.time() - interval_start
          train_seconds += elapsed
          seconds_per_step = elapsed / interval_steps
          values.update(
              tokens_per_sec=tokens_per_step / seconds_per_step,
              step_time=seconds_per_step, tokens=step * tokens_per_step,
              flops=step * run.flops_per_step, wall_time=train_seconds,
              nonfinite_steps=int(state.nonfinite_total))
          if peak:
            values['mfu'] = run.flops_per_step / seconds_per_step / (peak * jax.device_count())
          writer.write(step, 'train', values)
          progress.train(step, values, values['tokens_per_sec'], seconds_per_step)
          last_train = values
          _check_nonfinite(config, state, step)
          interval_metrics, interval_start, interval_steps = None, time.time(), 0
        if config.eval_steps and (step % config.eval_every == 0 or step == config.total_steps):
          last_eval = evaluate(step, state.params)
          interval_start = time.time()
        if step % config.checkpoint_every == 0 or step == config.total_steps:
          save(step)
        if step == config.pause_at_step:
          if step % config.checkpoint_every:
            save(step, force=True)
          progress.message(f'Paused at step {step} (config.pause_at_step); run again to continue.')
          break
        if preempted['signal'] is not None:
          if step % config.checkpoint_every:
            save(step, force=True)
          checkpointer.close()
          progress.message(f'Stopped by SIGTERM after step {step}: checkpoint saved in {workdir}; '
                           'run the same command again to resume.')
          sys.exit(PREEMPTED_EXIT_CODE)
    finally:
      signal.signal(signal.SIGTERM, previous_handler)
      checkpointer.close()
      writer.close()
  return {**{f'train_{k}': v for k, v in last_train.items()},
          **{f'eval_{k}': v for k, v in last_eval.items()}}


def _check_nonfinite(config, state, step: int) -> None:
  streak = int(state.nonfinite_streak)
  limit = 1 if config.nonfinite.policy == 'stop' else config.nonfinite.max_consecutive
  if streak >= limit:
    raise FloatingPointError(
        f'Non-finite loss or gradients in the last {streak} steps up to step {step} (updates were '
        f'skipped; config.nonfinite.policy={config.nonfinite.policy!r}): lower '
        'config.optimizer.learning_rate or check the data; the last checkpoint is intact.')


def run(config, workdir: str) -> dict[str, float]:
  """Validates, sets up and trains; the library entry point behind the command line."""
  try:
    prepared = setup(config, workdir)
  except (ValueError, FileNotFoundError, KeyError) as error:
    raise SetupError(str(error).strip().splitlines()[0] if str(error).strip() else repr(error)) \
        from error
  return train(prepared)


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/clm.py:tiny.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keep the progress lines readable
  if _WORKDIR.value is None:
    print('train.py: error: --workdir is required (e.g. --workdir runs/clm).', file=sys.stderr)
    sys.exit(2)
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except SetupError as error:
    print(f'train.py: error: {error}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
