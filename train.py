"""Pretrain the shared Transformer with any registered objective.

  python train.py --config configs/clm.py[:preset] --workdir runs/clm [--config.key=value ...]

Running it again on the same workdir resumes from the latest checkpoint. Errors a user can
fix (bad config or data, a full disk, non-finite losses under the stop policy) end the command
with one line on stderr; the library modules load lazily, so a broken --config file is reported
before jax is imported.
"""

# pylint: disable=import-outside-toplevel

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import sys
import time
import traceback
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

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
  model_config: Any
  mesh: Any
  rules: Any
  train_iter: Any
  make_eval_iter: Any
  local_batch_size: int
  flops_per_step: float
  data_cleaning: dict[str, dict[str, int]]  # split -> what the corpus build skipped or repaired


def _train_texts(documents, max_chars: int):
  total = 0
  for index in range(len(documents)):
    text = documents[index]
    yield text
    total += len(text)
    if total >= max_chars:
      return


def _check_first_batch(iterator, split: str) -> None:
  """Reads one batch and rewinds (the iterators restore exactly), so data that yields no
  example fails in setup, as one line."""
  state = iterator.get_state()
  try:
    next(iterator)
  except (ValueError, StopIteration) as error:
    fix = ' (config.eval_steps=0 trains without evaluation)' if split == 'validation' else ''
    raise ValueError(f'The {split} split gives no batch: {error}{fix}') from error
  iterator.set_state(state)


def setup(config, workdir: str) -> Run:
  """Validates the config, prepares data and tokenizer, builds the objective and mesh.

  Bad documents are repaired or skipped and counted by the corpus build (see data/corpora.py).
  A train split with nothing left, or a validation split with nothing left while
  config.eval_steps > 0, is a one-line error naming the files and the fix; so is data from
  which the objective's iterator cannot make one batch (for NSP/SOP, no multi-sentence
  document).
  """
  import jax

  import data.corpora as corpora
  from data import pipeline
  from data import tokenizer as tokenizer_lib
  from models.config import ModelConfig
  from objectives import registry
  from training import checks, distributed, flops, mesh as mesh_lib

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
  _check_first_batch(train_iter, 'train')
  eval_docs = corpora.load_documents(config.data, 'validation') if config.eval_steps else None
  if eval_docs is not None and len(eval_docs) < jax.process_count():
    raise ValueError(f'The validation split of config.data.source={config.data.source!r} has '
                     f'{len(eval_docs)} documents, fewer than the processes: add validation data '
                     'or set config.eval_steps=0.')

  def make_eval_iter():
    return pipeline.make_iterator(config, objective.data_format, 'validation', tokenizer,
                                  eval_docs, **iterator_args)

  cleaning = {'train': train_docs.cleaning}
  if eval_docs is not None:
    _check_first_batch(make_eval_iter(), 'validation')
    cleaning['validation'] = eval_docs.cleaning

  flops_per_step = config.batch_size * flops.objective_flops_per_sequence(
      objective, model_config, config.seq_len)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json(indent=2))
  return Run(config, workdir, tokenizer, objective, model_config, mesh,
             mesh_lib.logical_rules(config.mesh), train_iter, make_eval_iter, local_batch,
             flops_per_step, cleaning)


def train(run: Run) -> dict[str, float]:
  """The training loop; returns the last train and eval metrics.

  Train and eval records carry the data iterator's counts as `data_*` (documents read,
  documents skipped, pairs made; cumulative over the run, resumed with the checkpoint, from
  process 0's shard); run.json and the first lines say what the corpus build skipped or
  repaired. A checkpoint or metrics write that fails raises `metrics.WriteError`.
  """
  import flax.linen as nn
  import jax
  from jax.experimental import multihost_utils
  import numpy as np

  import data.corpora as corpora
  from data import pipeline
  from models.transformer import Transformer
  from training import checkpoint as checkpoint_lib
  from training import flops, mesh as mesh_lib, metrics as metrics_lib
  from training import optim, state as state_lib, step as step_lib

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
                 'processes': jax.process_count(), 'peak_flops_per_device': peak,
                 'data': run.data_cleaning}, f, indent=2)
    progress.message(f'{param_count / 1e6:.2f}M parameters | objective {config.objective} | '
                     f'{jax.device_count()} {jax.devices()[0].platform} device(s), mesh '
                     f'{dict(run.mesh.shape)} | {run.flops_per_step / 1e9:.2f} GFLOP/step')
    described = [f'{split} {corpora.describe_cleaning(stats)}'
                 for split, stats in run.data_cleaning.items() if stats]
    if described:
      progress.message('Data: ' + ' | '.join(described))

  # Every process must stop at the same step: one saving collectively while the others train
  # hangs them all. With several processes jax.distributed's preemption service catches
  # SIGTERM and agrees on the step; a Python handler would replace its own, so none is set.
  multi_process = jax.process_count() > 1
  preempted = {'signal': None}

  def on_sigterm(signum, frame):  # pylint: disable=unused-argument
    preempted['signal'] = signum

  def should_stop(step: int) -> bool:
    if multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return preempted['signal'] is not None

  previous_handler = None if multi_process else signal.signal(signal.SIGTERM, on_sigterm)

  def evaluate(step: int, params) -> dict[str, float]:
    total = None
    eval_iter = run.make_eval_iter()
    for index, host_batch in enumerate(eval_iter):
      if index >= config.eval_steps:
        break
      total = step_lib.accumulate(total, eval_step(params, device_batch(host_batch), index))
    if total is None:
      progress.message('The validation split gave no batch: evaluation skipped.')
      return {}
    values = metrics_lib.reduce(total)
    values.update(pipeline.stats_values(eval_iter))
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
              nonfinite_steps=int(state.nonfinite_total), **pipeline.stats_values(run.train_iter))
          if peak:
            values['mfu'] = run.flops_per_step / seconds_per_step / (peak * jax.device_count())
          writer.write(step, 'train', values)
          progress.train(step, values, values['tokens_per_sec'], seconds_per_step)
          last_train = values
          _check_nonfinite(config, state, step)
          checkpointer.check()  # a background save that failed stops the run here
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
        if should_stop(step):
          if step % config.checkpoint_every:
            save(step, force=True)
          checkpointer.close()
          progress.message(f'Stopped by SIGTERM after step {step}: checkpoint saved in {workdir}; '
                           'run the same command again to resume.')
          sys.exit(PREEMPTED_EXIT_CODE)
    except BaseException:
      # The error in flight says more than a second one from closing after it.
      try:
        checkpointer.close()
      except Exception:  # pylint: disable=broad-exception-caught
        pass
      writer.close()
      raise
    finally:
      if not multi_process:
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
  except (ValueError, OSError, KeyError) as error:  # OSError: e.g. an unwritable workdir
    raise SetupError(str(error).strip().splitlines()[0] if str(error).strip() else repr(error)) \
        from error
  return train(prepared)


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/clm.py:tiny.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')


def _fail(message: str, code: int) -> None:
  print(f'train.py: error: {message}', file=sys.stderr)
  sys.exit(code)


def _config_path(argv: list[str]) -> str | None:
  """The file of the last --config given (absl's forms: --config=X, --config X, -config ...)."""
  value = None
  for index, arg in enumerate(argv[1:], 1):
    if arg == '--':
      break
    for name in ('--config', '-config'):
      if arg == name and index + 1 < len(argv):
        value = argv[index + 1]
      elif arg.startswith(name + '='):
        value = arg[len(name) + 1:]
  return value.split(':', 1)[0] if value is not None else None


def _config_file_problem(path: str) -> str | None:
  """Why the --config file cannot load (missing, unreadable, not Python), naming file and line."""
  try:
    with open(path, 'rb') as f:
      source = f.read()
  except OSError as error:
    return (f'--config file {path} cannot be read: {error.strerror}; give a config file such as '
            'configs/clm.py:tiny.')
  try:
    compile(source, path, 'exec')
  except SyntaxError as error:
    return f'{path}:{error.lineno}: {type(error).__name__}: {error.msg} (the --config file).'
  except ValueError as error:  # e.g. null bytes
    return f'{path}: {error} (the --config file).'
  return None


def _config_frame_error(error: BaseException, path: str | None) -> str | None:
  """'file:line: Error: message' for an exception raised while running the --config file."""
  if path is None:
    return None
  target = os.path.abspath(path)
  seen = error
  while seen is not None:
    frames = [f for f in traceback.extract_tb(seen.__traceback__)
              if os.path.abspath(f.filename) == target]
    if frames:
      lines = str(seen).strip().splitlines()
      return (f'{path}:{frames[-1].lineno}: {type(seen).__name__}: '
              f'{lines[0] if lines else ""} (the --config file).')
    seen = seen.__cause__ or seen.__context__
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a broken --config file is one line naming file and line."""
  path = _config_path(argv)
  problem = _config_file_problem(path) if path else None
  if problem:
    _fail(problem, 2)
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-exception-caught
    located = _config_frame_error(error, path)
    if located:
      _fail(located, 2)
    if isinstance(error, (AttributeError, KeyError)):  # --config.key=value for no such key
      name = re.search(r"'([\w.-]+)", str(error))
      hint = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', str(error))
      _fail(f'A --config.* override names no setting of the config'
            f'{f" ({name.group(1)!r})" if name else ""}{f": {hint.group()}" if hint else "."}', 2)
    if not isinstance(error, flags.Error):
      raise
    _fail(f'{str(error).strip().splitlines()[0]} (pass --helpfull to see the flags).', 1)
  return []  # unreachable


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # keep the progress lines readable
  if _WORKDIR.value is None:
    _fail('--workdir is required (e.g. --workdir runs/clm).', 2)
  from training.metrics import WriteError

  try:
    run(_CONFIG.value, _WORKDIR.value)
  except SetupError as error:
    _fail(str(error), 2)
  except (WriteError, FloatingPointError) as error:
    _fail(str(error), 1)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=_parse_flags)
