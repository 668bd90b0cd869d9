"""Where a run's numbers go: metrics.jsonl, TensorBoard events, and a progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np

from objectives.base import metric_value


def reduce(metrics: Mapping[str, tuple[Any, Any]]) -> dict[str, float]:
  """(total, count) device metrics -> plain floats (one host transfer)."""
  host = jax.device_get(dict(metrics))
  return {name: metric_value(total, count) for name, (total, count) in host.items()
          if float(count) > 0}


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


class WriteError(OSError):
  """A run's output (metrics, a checkpoint) could not be written; the message is one line that
  names the path, the cause and the fix."""


class MetricWriter:
  """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard.

  Only the primary process writes. A failing disk raises a `WriteError` naming the file.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
        self._tensorboard = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:
        self._tensorboard = None

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: (float(v) if isinstance(v, (float, np.floating, np.integer, int)) else v)
                   for k, v in values.items()})
    line = json.dumps(record, allow_nan=True)
    try:
      with open(self.path, 'a', encoding='utf-8') as f:
        f.write(line + '\n')
    except OSError as error:
      raise WriteError(f'Cannot write metrics to {self.path}: {error.strerror}. Free disk space '
                       'or fix the workdir permissions; checkpoints already written are intact.'
                       ) from error
    if self._tensorboard is not None:
      for key, value in values.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value)):
          self._tensorboard.add_scalar(f'{split}/{key}', float(value), int(step))

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


class Progress:
  """Prints `step | loss | tokens/s | ETA` lines for people watching the run."""

  def __init__(self, total_steps: int, enabled: bool = True, stream=None):
    self.total_steps = total_steps
    self.enabled = enabled
    self._stream = stream

  @property
  def stream(self):
    return self._stream or sys.stdout

  def train(self, step: int, values: Mapping[str, float], tokens_per_sec: float,
            seconds_per_step: float) -> None:
    if not self.enabled:
      return
    eta = format_duration((self.total_steps - step) * seconds_per_step)
    extras = ''.join(f' | {k} {v:.3f}' for k, v in values.items()
                     if k.endswith('accuracy') and k != 'accuracy')
    accuracy = values.get('accuracy')
    if accuracy is not None:
      extras = f' | acc {accuracy:.3f}' + extras
    skipped = sum(v for k, v in values.items() if k.startswith('data_skipped_'))
    if skipped:  # documents the data iterator passed over (empty, single-sentence for pairs)
      extras += f' | {int(skipped)} docs skipped'
    mfu = values.get('mfu')
    mfu_text = f' | MFU {100 * mfu:.1f}%' if mfu else ''
    print(f'step {step:>6d}/{self.total_steps} | loss {values.get("loss", float("nan")):.4f}'
          f'{extras} | {tokens_per_sec / 1000:.1f}k tok/s{mfu_text} | '
          f'{1000 * seconds_per_step:.0f} ms/step | ETA {eta}', file=self.stream, flush=True)

  def eval(self, step: int, values: Mapping[str, float]) -> None:
    if self.enabled:
      parts = ' | '.join(f'{k} {v:.4f}' for k, v in values.items()
                         if k != 'predictions' and not k.startswith('data_'))
      print(f'eval  {step:>6d}/{self.total_steps} | {parts}', file=self.stream, flush=True)

  def message(self, text: str) -> None:
    if self.enabled:
      print(text, file=self.stream, flush=True)
