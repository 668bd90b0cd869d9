"""Where a run's numbers go: metrics.jsonl, TensorBoard events, and a progress line."""

from __future__ import annotations

import contextlib
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

  Only the primary process writes. Each record is one write of one whole line; a write that
  fails part way (a full disk) is cut back off the file, so metrics.jsonl never holds a
  partial record, and raises a one-line `WriteError` naming the file. A partial last line
  left by a killed process is removed when the writer opens the file.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = None
    if enabled:
      drop_partial_line(self.path)
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
    append_line(self.path, json.dumps(record, allow_nan=True))
    if self._tensorboard is not None:
      for key, value in values.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(float(value)):
          self._tensorboard.add_scalar(f'{split}/{key}', float(value), int(step))

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def append_line(path: str, line: str) -> None:
  """Appends `line` and a newline to `path` whole, or not at all (raising `WriteError`)."""
  data = (line + '\n').encode('utf-8')
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  except OSError as error:
    raise _write_error(path, error) from error
  try:
    start = os.fstat(fd).st_size
    written = 0
    try:
      while written < len(data):
        written += os.write(fd, data[written:])
    except OSError as error:
      if written:
        with contextlib.suppress(OSError):
          os.ftruncate(fd, start)  # shrinking a file needs no free space
      raise _write_error(path, error) from error
  finally:
    os.close(fd)


def _write_error(path: str, error: OSError) -> WriteError:
  cause = error.strerror or os.strerror(error.errno or 0) or type(error).__name__
  return WriteError(f'Cannot write metrics to {path}: {cause}. Free disk space or fix the workdir '
                    'permissions; checkpoints already written are intact.')


def drop_partial_line(path: str) -> None:
  """Cuts a trailing line without its newline (a write cut off by a kill) off `path`."""
  try:
    with open(path, 'rb+') as f:
      size = f.seek(0, os.SEEK_END)
      if size == 0:
        return
      f.seek(max(0, size - (1 << 16)))
      tail = f.read()
      if tail.endswith(b'\n'):
        return
      cut = tail.rfind(b'\n')
      f.truncate(size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= len(tail) else size))
  except FileNotFoundError:
    return
  except OSError as error:
    raise _write_error(path, error) from error


def read_records(path: str) -> list[dict[str, Any]]:
  """Every whole record of a metrics.jsonl, in order; a partial or unparsable line (a write
  cut off by a full disk or a kill) is skipped, never an error."""
  records = []
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      if not line.endswith('\n') or not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


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
    eta = format_duration(max(self.total_steps - step, 0) * seconds_per_step)
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
