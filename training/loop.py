"""The training loop over an assembled experiment, made of small named pieces.

`train(exp)` compiles the steps, restores the latest checkpoint, then repeats: one train step,
`log`, `evaluate`, `checkpoint`, `stop?`. What a step costs in real (non-padding) tokens and
FLOPs is counted, so a run can stop at a compute budget (`config.budget`) instead of a step
count and every record carries `tokens`, `flops` and `wall_time`.

Batches come from training/prefetch.py: read and put on the device config.data.prefetch
steps ahead in a background thread, each paired with the data position right after it, so a
checkpoint saves the position of the last batch trained on.
"""

# pylint: disable=import-outside-toplevel

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from data import pipeline
from data.cleaning import describe_cleaning
from training import checkpoint as checkpoint_lib
from training import flops as flops_lib, mesh as mesh_lib, metrics as metrics_lib
from training import optim, prefetch, state as state_lib, step as step_lib
from training.experiment import Experiment
from training.workdir import CONFIG_FILE, METRICS_FILE, RUN_FILE, STATUS_FILE

PREEMPTED_EXIT_CODE = 143  # a process stopped by SIGTERM conventionally returns 128 + 15
INTERRUPTED_EXIT_CODE = 130  # ... and by SIGINT (Ctrl-C) 128 + 2
_BUDGET_PROBE_BATCHES = 32  # batches read to estimate real tokens per step for a token budget


class RestoreError(ValueError):
  """No checkpoint of the workdir can be restored into this config's run; one line."""


class Stopped(SystemExit):
  """The run stopped early at a signal, after saving a checkpoint; `code` is the exit status."""


def real_tokens(host_batch: dict[str, np.ndarray]) -> int:
  """Non-padding input tokens of a host batch (segment id > 0)."""
  return int(np.count_nonzero(host_batch['segment_ids']))


def _global_sum(value: float) -> float:
  """The sum of a per-process number over every process (itself with one process)."""
  if jax.process_count() == 1:
    return value
  return float(np.sum(multihost_utils.process_allgather(np.asarray(value, np.float64))))


def planned_steps(exp: Experiment) -> int:
  """The run's length in steps: config.total_steps, or what its compute budget buys.

  A FLOPs budget buys floor(flops / FLOPs per step) steps. A token budget is converted with the
  real tokens per step of the first batches of a fresh train iterator (deterministic for a
  seed), so the learning-rate schedule spans the run; the run itself stops at the first step
  whose cumulative real tokens reach the budget.
  """
  budget = exp.config.get('budget', {})
  if budget.get('flops', 0):
    return max(1, int(budget['flops'] // exp.flops_per_step))
  if budget.get('tokens', 0):
    state = exp.train_iter.get_state()
    seen = [real_tokens(next(exp.train_iter)) for _ in range(_BUDGET_PROBE_BATCHES)]
    exp.train_iter.set_state(state)
    per_step = _global_sum(float(np.mean(seen)))
    return max(1, math.ceil(budget['tokens'] / per_step))
  return exp.config.total_steps


def kept_steps(exp: Experiment, total_steps: int) -> list[int]:
  """Steps whose checkpoints are kept for good: config.budget.keep_fractions of the run."""
  fractions = exp.config.get('budget', {}).get('keep_fractions', ()) or ()
  return sorted({max(1, round(float(f) * total_steps)) for f in fractions})


def write_text(path: str, text: str) -> None:
  """Writes a file whole (local: atomically by rename; gs://: one object write); a failed
  write (a full disk) is a one-line `WriteError` and leaves the old file as it was."""
  target = epath.Path(path)
  tmp = target if '://' in path else target.parent / (target.name + '.tmp')
  try:
    tmp.write_text(text)
    if tmp != target:
      os.replace(tmp, target)
  except OSError as error:
    if tmp != target:
      with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
    raise metrics_lib.write_error(path, error, os.path.basename(path)) from error


def write_json(path: str, value: Any) -> None:
  """Writes JSON whole (a reader never sees half a file)."""
  write_text(path, json.dumps(value, indent=2))


def drop_records_after(path: str, step: int) -> None:
  """Removes records of steps after `step` from metrics.jsonl (written by a run that went past
  its last checkpoint), so a resumed run never logs a step twice. Partial lines go too."""
  target = epath.Path(path)
  if not target.exists():
    return
  kept = []
  for line in target.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and int(record.get('step', 0)) <= step:
      kept.append(line + '\n')
  write_text(path, ''.join(kept))


def write_status(workdir: str, state: str, step: int | None = None, reason: str = '') -> None:
  """workdir/status.json: how the last start of the run ended ('running', 'done', 'paused',
  'preempted', 'failed' with its one-line reason), for tools/status.py."""
  if jax.process_index() != 0 or not epath.Path(workdir).exists():
    return
  path = os.path.join(workdir, STATUS_FILE)
  text = json.dumps({'state': state, 'step': step, 'reason': reason, 'time': time.time()},
                    indent=2)
  try:
    write_text(path, text)
  except metrics_lib.WriteError:
    # A full disk refuses the temporary file, yet the status it replaces has room for this.
    if '://' in path or not metrics_lib.overwrite_in_place(path, text):
      raise


class _Signals:
  """SIGTERM and SIGINT ask the loop to save and stop after the current step.

  With several processes jax.distributed's preemption service catches SIGTERM and agrees on
  the step (a Python handler would replace its own), so only SIGINT is handled here then.
  """

  def __init__(self):
    self.received: int | None = None
    self._multi = jax.process_count() > 1
    names = [signal.SIGINT] if self._multi else [signal.SIGTERM, signal.SIGINT]
    self._previous = {sig: signal.signal(sig, self._on_signal) for sig in names}

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if self.received == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    self.received = signum

  def should_stop(self, step: int) -> bool:
    if self._multi and multihost_utils.reached_preemption_sync_point(step):
      self.received = self.received or signal.SIGTERM
    return self.received is not None

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class Trainer:
  """State and bookkeeping of one training run; each method is one piece of the loop."""

  def __init__(self, exp: Experiment):
    config = exp.config
    self.exp, self.config, self.workdir = exp, config, exp.workdir
    self.primary = jax.process_index() == 0
    self.total_steps = planned_steps(exp)
    self.keep = kept_steps(exp, self.total_steps)
    self.progress = metrics_lib.Progress(self.total_steps, enabled=self.primary)
    self.model = exp.model()
    self.schedule = optim.learning_rate_schedule(config.optimizer, self.total_steps)
    tx = optim.make_optimizer(config.optimizer, self.total_steps)
    self.state, shardings = exp.init_state(tx)
    self.batch_sharding = mesh_lib.batch_sharding(exp.mesh, exp.rules)
    replicated = jax.sharding.NamedSharding(exp.mesh, jax.sharding.PartitionSpec())
    self.train_step = jax.jit(
        step_lib.make_train_step(self.model, exp.objective, config.seed, self.schedule),
        in_shardings=(shardings, self.batch_sharding), out_shardings=(shardings, replicated),
        donate_argnums=(0,))
    self.eval_step = jax.jit(step_lib.make_eval_step(self.model, exp.objective, config.seed),
                             in_shardings=(shardings.params, self.batch_sharding, replicated),
                             out_shardings=replicated)
    self.checkpointer = checkpoint_lib.Checkpointer(self.workdir, config.keep_checkpoints,
                                                    jax.process_index(), keep_steps=self.keep)
    self.writer = None
    self.feed: prefetch.Feed | None = None  # the training batches, while the loop runs
    self.step = 0
    self.saved_step: int | None = None
    self.local_tokens = 0  # this process's real tokens seen, over the whole run
    self.train_seconds = 0.0
    self.interval: dict[str, Any] = _new_interval()
    self.last_train: dict[str, float] = {}
    self.last_eval: dict[str, float] = {}

  # -- start -------------------------------------------------------------------------------
  def restore(self) -> None:
    """Resumes from the latest checkpoint, if any; then (and only then) writes config.json."""
    found = None
    if self.config.resume:
      try:
        found = self.checkpointer.restore_latest(
            state_lib.abstract_state(self.state),
            settings=checkpoint_lib.model_settings(self.exp.model_config),
            report=self.progress.message)
      except checkpoint_lib.CheckpointError as error:
        raise RestoreError(str(error)) from error
    if found is not None:
      _, self.state, saved = found
      position = saved.get('iterator', saved) if isinstance(saved, dict) else saved
      try:
        self.exp.train_iter.set_state(position)
      except ValueError as error:  # a position of another corpus, tokenizer or format
        raise RestoreError(str(error)) from error
      self.step = self.saved_step = int(self.state.step)
      self.local_tokens = int(saved.get('tokens', 0))
      self.train_seconds = float(saved.get('train_seconds', 0.0))
      if saved.get('interval'):
        self.interval['saved'] = saved['interval']
      self.progress.message(f'Resumed from {self.workdir} at step {self.step}.')
    if self.primary:
      epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
      write_text(os.path.join(self.workdir, CONFIG_FILE), self.config.to_json(indent=2))
      drop_records_after(os.path.join(self.workdir, METRICS_FILE), self.step)
    self.writer = metrics_lib.MetricWriter(
        self.workdir, enabled=self.primary,
        extra=metrics_lib.extra_writers(self.config, self.workdir) if self.primary else ())

  def describe(self) -> None:
    """Writes run.json and prints the run's one-line summary."""
    exp, config = self.exp, self.config
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
    peak = flops_lib.peak_flops_per_device()
    if not self.primary:
      return
    write_json(os.path.join(self.workdir, RUN_FILE), {
        'objective': config.objective if isinstance(config.objective, str)
                     else dict(config.objective),
        'data_format': exp.data_format, 'params': params,
        'flops_per_step': exp.flops_per_step,
        'tokens_per_step': config.batch_size * config.seq_len, 'total_steps': self.total_steps,
        'kept_steps': self.keep, 'devices': jax.device_count(),
        'device_kind': jax.devices()[0].device_kind, 'mesh': dict(exp.mesh.shape),
        'processes': jax.process_count(), 'peak_flops_per_device': peak,
        'data': exp.data_cleaning})
    self.progress.message(
        f'{params / 1e6:.2f}M parameters | objective {describe_objective(config.objective)} | '
        f'{exp.data_format} | {jax.device_count()} {jax.devices()[0].platform} device(s), mesh '
        f'{dict(exp.mesh.shape)} | {exp.flops_per_step / 1e9:.2f} GFLOP/step | '
        f'{self.total_steps} steps')
    described = [f'{split} {describe_cleaning(stats)}'
                 for split, stats in exp.data_cleaning.items() if stats]
    if described:
      self.progress.message('Data: ' + ' | '.join(described))

  # -- pieces of a step --------------------------------------------------------------------
  def device_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in host_batch.items()}

  def _train_batch(self, host_batch: dict[str, np.ndarray]) -> tuple[dict[str, jax.Array], int]:
    """What the feed makes of a host batch (in its thread): the device batch, real tokens."""
    return self.device_batch(host_batch), real_tokens(host_batch)

  def tokens_seen(self) -> int:
    return int(_global_sum(float(self.local_tokens)))

  def evaluate(self, step: int) -> dict[str, float]:
    """Evaluates on the validation split; writes and prints the record.

    With config.eval_exact, one exact deterministic pass over the whole split, the same for
    every run (training/evaluation.py: perplexity, bits per byte, MLM at 15%); otherwise
    config.eval_steps batches with masks fixed per batch index.
    """
    if self.config.get('eval_exact', False):
      from training import evaluation
      values = evaluation.evaluate_examples(self.exp, self.state.params, 'validation',
                                            documents=self.exp.eval_documents)[0]
      return self._write_eval(step, values)
    total = None
    eval_iter = self.exp.make_eval_iter()
    for index, host_batch in enumerate(eval_iter):
      if index >= self.config.eval_steps:
        break
      metrics = self.eval_step(self.state.params, self.device_batch(host_batch), index)
      total = step_lib.accumulate(total, metrics)
    if total is None:
      self.progress.message('The validation split gave no batch: evaluation skipped.')
      return {}
    values = metrics_lib.reduce(total)
    values.update(pipeline.stats_values(eval_iter))
    return self._write_eval(step, values)

  def _write_eval(self, step: int, values: dict[str, float]) -> dict[str, float]:
    self.progress.eval(step, values)
    values.update(tokens=self.tokens_seen(), flops=step * self.exp.flops_per_step,
                  wall_time=self.train_seconds)
    self.writer.write(step, 'eval', values)
    self.last_eval = values
    return values

  def log(self, step: int) -> None:
    """Averages the interval's metrics, adds throughput and compute counts, writes them."""
    interval = self.interval
    values = metrics_lib.reduce(self._interval_sums())  # waits for the interval's steps
    elapsed = 0.0
    if interval['start'] is not None:
      elapsed = time.time() - interval['start'] - interval['excluded']
      self.train_seconds += elapsed
    seconds_per_step = (elapsed / interval['timed_steps'] if interval['timed_steps']
                        else float('nan'))
    tokens_per_step = self.config.batch_size * self.config.seq_len
    values.update(
        tokens_per_sec=tokens_per_step / seconds_per_step if interval['timed_steps'] else 0.0,
        real_tokens_per_sec=(_global_sum(interval['timed_tokens']) / elapsed
                             if interval['timed_steps'] else 0.0),
        step_time=seconds_per_step, tokens=self.tokens_seen(), padded_tokens=step * tokens_per_step,
        flops=step * self.exp.flops_per_step, wall_time=self.train_seconds,
        nonfinite_steps=int(self.state.nonfinite_total),
        **pipeline.stats_values(self.feed))
    peak = flops_lib.peak_flops_per_device()
    if peak and interval['timed_steps']:
      values['mfu'] = self.exp.flops_per_step / seconds_per_step / (peak * jax.device_count())
    self.writer.write(step, 'train', values)
    self.progress.train(step, values, values['tokens_per_sec'],
                        seconds_per_step if interval['timed_steps'] else 0.0)
    self.last_train = values
    self._check_nonfinite(step)
    self.checkpointer.check()  # a background save that failed stops the run here
    self.interval = _new_interval()

  def checkpoint(self, step: int, force: bool = False) -> None:
    """Saves (state, data position after the step's batch, counters) at `step`, once."""
    if self.saved_step == step:
      return
    # The metrics of a logging interval cut by this checkpoint, so a run resumed from it logs
    # the same average as an uninterrupted one.
    interval = self._interval_sums() if self.interval['metrics'] is not None else None
    self.checkpointer.save(step, self.state, {
        'iterator': self.feed.get_state(), 'tokens': self.local_tokens,
        'train_seconds': self.train_seconds, 'interval': interval}, force=force)
    self.saved_step = step

  def _interval_sums(self) -> dict[str, list[float]]:
    """The interval's (total, count) metrics on the host, plus any saved before a resume."""
    host = jax.device_get(dict(self.interval['metrics']))
    sums = {name: [float(total), float(count)] for name, (total, count) in host.items()}
    for name, (total, count) in (self.interval['saved'] or {}).items():
      if name in sums:
        sums[name] = [sums[name][0] + total, sums[name][1] + count]
    return sums

  def _check_nonfinite(self, step: int) -> None:
    streak = int(self.state.nonfinite_streak)
    policy = self.config.nonfinite.policy
    limit = 1 if policy == 'stop' else self.config.nonfinite.max_consecutive
    if streak >= limit:
      kept = (f'the checkpoint of step {self.saved_step} is intact' if self.saved_step
              else 'no checkpoint was written')
      raise FloatingPointError(
          f'Non-finite loss or gradients in the last {streak} steps up to step {step} (updates '
          f'were skipped; config.nonfinite.policy={policy!r}): lower '
          f'config.optimizer.learning_rate or check the data; {kept}.')

  def finished(self, step: int) -> bool:
    """Whether the run ends after `step`: at its token budget where it has one (however many
    steps that takes: the planned steps only shape the schedule), else at its last step."""
    tokens = self.config.get('budget', {}).get('tokens', 0)
    if tokens:
      return step > 0 and self.tokens_seen() >= tokens
    return step >= self.total_steps

  # -- the loop ----------------------------------------------------------------------------
  def run(self) -> dict[str, float]:
    config = self.config
    if self.finished(self.step):
      self.progress.message(f'Nothing to do: the run in {self.workdir} is at step {self.step} '
                            f'of {self.total_steps}.')
      return {}
    signals = _Signals()
    write_status(self.workdir, 'running', self.step)
    try:
      with jax.set_mesh(self.exp.mesh), nn.logical_axis_rules(self.exp.rules):
        if self.step == 0 and config.eval_steps:
          self.evaluate(0)
        self._steps(signals)
    finally:
      signals.restore()
      # After a failure (e.g. a full disk), a second error while closing is not the one to
      # report: the first says what went wrong.
      with contextlib.suppress(Exception) if sys.exc_info()[1] else contextlib.nullcontext():
        self.close()
    return {**{f'train_{k}': v for k, v in self.last_train.items()},
            **{f'eval_{k}': v for k, v in self.last_eval.items()}}

  def _steps(self, signals: _Signals) -> None:
    config = self.config
    self.feed = prefetch.make_feed(self.exp.train_iter, self._train_batch,
                                   config.data.get('prefetch', prefetch.DEFAULT_DEPTH))
    first = True
    for step in itertools.count(self.step + 1):
      started = time.time()
      batch, batch_tokens = next(self.feed)
      self.local_tokens += batch_tokens
      self.state, metrics = self.train_step(self.state, batch)
      self.step = step
      self.interval['metrics'] = step_lib.accumulate(self.interval['metrics'], metrics)
      self.interval['steps'] += 1
      if first:  # the compiling step: kept out of tokens/s and the ETA, not out of wall_time
        jax.block_until_ready(self.state.step)
        self.train_seconds += time.time() - started
        self.interval['start'] = time.time()
        first = False
      else:
        self.interval['timed_steps'] += 1
        self.interval['timed_tokens'] += batch_tokens
      last = self.finished(step)
      if step % config.log_every == 0 or last:
        self.log(step)
        self.interval['start'] = time.time()
      if config.eval_steps and (step % config.eval_every == 0 or last):
        eval_started = time.time()
        self.evaluate(step)
        self.interval['excluded'] += time.time() - eval_started
      if step % config.checkpoint_every == 0 or last or step in self.keep:
        self.checkpoint(step, force=step in self.keep)
      if last:
        write_status(self.workdir, 'done', step)
        return
      if step == config.pause_at_step:
        self.checkpoint(step, force=True)
        write_status(self.workdir, 'paused', step)
        self.progress.message(f'Paused at step {step} (config.pause_at_step); run again to '
                              'continue.')
        return
      if signals.should_stop(step):
        self.checkpoint(step, force=True)
        name = 'SIGINT' if signals.received == signal.SIGINT else 'SIGTERM'
        self.close()
        write_status(self.workdir, 'preempted', step, f'stopped by {name}')
        self.progress.message(f'Stopped by {name} after step {step}: checkpoint saved in '
                              f'{self.workdir}; run the same command again to resume.')
        raise Stopped(INTERRUPTED_EXIT_CODE if name == 'SIGINT' else PREEMPTED_EXIT_CODE)

  def close(self) -> None:
    """Stops the feed, waits for the last save and closes the writers; safe to call twice."""
    closing = (self.writer, self.checkpointer, self.feed)  # closed last to first
    self.writer = self.checkpointer = self.feed = None
    with contextlib.ExitStack() as stack:  # each closes even if a later one raised
      for part in closing:
        if part is not None:
          stack.callback(part.close)


def _new_interval() -> dict[str, Any]:
  """Bookkeeping of one logging interval: device metric sums, steps, timing."""
  return {'metrics': None, 'steps': 0, 'timed_steps': 0, 'start': None, 'excluded': 0.0,
          'saved': None, 'timed_tokens': 0}


def describe_objective(objective: Any) -> str:
  """'clm', or 'mlm x1 + nsp x1' for a weighted mix."""
  if isinstance(objective, str):
    return objective
  return ' + '.join(f'{name} x{float(weight):g}' for name, weight in dict(objective).items())


def train(exp: Experiment) -> dict[str, float]:
  """Trains an assembled experiment to its step count or budget; returns the last metrics."""
  trainer = Trainer(exp)
  try:
    trainer.restore()
    trainer.describe()
  except BaseException:
    trainer.close()
    raise
  return trainer.run()
