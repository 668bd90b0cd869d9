"""Where a run's numbers go: metrics.jsonl, TensorBoard events, and a progress line."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import socket
import struct
import sys
import threading
import time
import uuid
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from objectives.base import metric_value
from training.workdir import METRICS_FILE


def reduce(metrics: Mapping[str, tuple[Any, Any]]) -> dict[str, float]:
  """(total, count) device metrics -> plain floats (one host transfer)."""
  host = jax.device_get(dict(metrics))
  return {name: metric_value(total, count) for name, (total, count) in host.items()
          if float(count) > 0}


def format_duration(seconds: float) -> str:
  """'1h05m' or '4m55s': the time left on the progress lines of a run and of a comparison."""
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


class WriteError(OSError):
  """A run's output (metrics, a checkpoint) could not be written; the message is one line that
  names the path, the cause and the fix."""


class MetricWriter:
  """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard.

  Only the primary process writes, and every write is synchronous: a failed write (a full
  disk) raises a one-line `WriteError` naming the file in the caller, so the run stops at once
  instead of waiting on a background writer. Each record is one write of one whole line; a
  write that fails part way is cut back off the file, so metrics.jsonl never holds a partial
  record. A partial last line left by a killed process is removed when the writer opens the
  file. `extra` writers (e.g. W&B) get every record too; they must never raise.
  """

  def __init__(self, workdir: str, enabled: bool = True, extra: Sequence[Any] = ()):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tensorboard: EventFile | None = None
    self._extra = list(extra) if enabled else []
    if enabled:
      drop_partial_line(self.path)
      try:
        self._tensorboard = EventFile(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # tensorboardX is not installed: metrics.jsonl only
        self._tensorboard = None

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time()}
    record.update({k: (float(v) if isinstance(v, (float, np.floating, np.integer, int)) else v)
                   for k, v in values.items()})
    append_line(self.path, json.dumps(record, allow_nan=True))
    scalars = {f'{split}/{key}': float(value) for key, value in values.items()
               if isinstance(value, (int, float, np.floating, np.integer))
               and math.isfinite(float(value))}
    if self._tensorboard is not None:
      self._tensorboard.write(int(step), scalars)
    for writer in self._extra:
      writer.write(int(step), scalars)

  def close(self) -> None:
    extra, self._extra = self._extra, []
    for writer in extra:
      writer.close()


class EventFile:
  """A TensorBoard event file whose scalars are written synchronously, one record per call.

  tensorboardX's `SummaryWriter` writes from a thread that dies on a failed write (a full
  disk) and then blocks its caller forever on a full queue. Here each call appends one event
  (every scalar of a step) with `append_bytes`: whole or not at all, or a `WriteError`.
  """

  def __init__(self, logdir: str):
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    self._summary, self._event = summary, event_pb2.Event
    try:
      os.makedirs(logdir, exist_ok=True)
    except OSError as error:
      raise write_error(logdir, error, 'TensorBoard events') from error
    # The name TensorBoard looks for; the pid keeps a resumed run's file apart from the last.
    self.path = os.path.join(logdir, f'events.out.tfevents.{int(time.time())}.'
                                     f'{socket.gethostname()}.{os.getpid()}')
    self._append(self._event(wall_time=time.time(), file_version='brain.Event:2'))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if scalars:
      values = [value for tag, number in scalars.items()
                for value in self._summary.scalar(tag, number).value]
      self._append(self._event(wall_time=time.time(), step=step,
                               summary=self._summary.Summary(value=values)))

  def _append(self, event: Any) -> None:
    append_bytes(self.path, tf_record(event.SerializeToString()), 'TensorBoard events')


RUN_ID_FILE = 'wandb_run_id'  # workdir/<this>: the W&B run a resumed run logs into again


def extra_writers(config: Any, workdir: str) -> list[Any]:
  """The writers config.logging enables beside metrics.jsonl and TensorBoard (W&B)."""
  settings = (config.get('logging') or {}).get('wandb') or {}
  if not settings.get('enabled', False):
    return []
  return [WandbWriter(workdir, settings, config.to_dict())]


class WandbWriter:
  """Mirrors each record's scalars to a W&B run without ever blocking or stopping training.

  `wandb` is imported, and the run started and logged to, in a daemon thread fed through a
  bounded queue: when the service is slow or unreachable, records beyond the queue are dropped
  (one warning), never waited for, and any W&B error is a one-line warning that ends W&B
  logging, not the run. The run is named after the workdir, grouped by its parent unless
  `group` is set, and its id kept in workdir/wandb_run_id, so a resumed run logs into the same
  W&B run (steps it already holds are skipped).
  """

  QUEUE_SIZE = 10_000  # records waiting for W&B; a slow service drops the ones after
  CLOSE_SECONDS = 10.0  # how long closing waits for W&B to take the last records and finish

  def __init__(self, workdir: str, settings: Mapping[str, Any], run_config: Mapping[str, Any],
               warn: Callable[[str], None] | None = None):
    """`warn` prints a one-line warning (default: to stderr)."""
    self._warn_line = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    root = os.path.abspath(workdir)
    self.run_id = _wandb_run_id(root)
    self.init_args = dict(
        project=settings.get('project') or None, entity=settings.get('entity') or None,
        group=settings.get('group') or os.path.basename(os.path.dirname(root)),
        name=os.path.basename(root), id=self.run_id, resume='allow', config=dict(run_config),
        dir=root)
    self._queue: queue.Queue = queue.Queue(self.QUEUE_SIZE)
    self._stopped = threading.Event()  # W&B failed: nothing more is queued
    self._dropped = 0
    self._thread = threading.Thread(target=self._log_all, name='wandb-writer', daemon=True)
    self._thread.start()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if self._stopped.is_set():
      return
    try:
      self._queue.put_nowait((int(step), dict(scalars)))
    except queue.Full:
      self._dropped += 1
      if self._dropped == 1:
        self._warn(f'W&B is not keeping up: records from step {step} on are not sent to W&B '
                   'until it catches up (metrics.jsonl has every record).')

  def close(self) -> None:
    """Lets W&B take the queued records and finish, for CLOSE_SECONDS at most."""
    if self._thread is None:
      return
    thread, self._thread = self._thread, None
    deadline = time.monotonic() + self.CLOSE_SECONDS
    if not self._stopped.is_set():
      with contextlib.suppress(queue.Full):
        self._queue.put(None, timeout=self.CLOSE_SECONDS)
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
      self._stopped.set()
      self._warn(f'W&B did not finish within {self.CLOSE_SECONDS:g} s; what it has not sent '
                 f'is in {self.init_args["dir"]}/wandb (send it with `wandb sync`).')

  def _log_all(self) -> None:
    run = None
    try:
      import wandb  # pylint: disable=import-outside-toplevel

      run = wandb.init(**self.init_args, settings=wandb.Settings(quiet=True))
      first = int(run.step or 0)  # a resumed W&B run holds the steps before this one
      while True:
        item = self._queue.get()
        if item is None or self._stopped.is_set():
          break
        step, scalars = item
        if step >= first:
          run.log(scalars, step=step)
      run.finish()
    except Exception as error:  # pylint: disable=broad-exception-caught
      self._stopped.set()
      self._warn(f'W&B logging stopped ({_one_line(error)}); training goes on and metrics.jsonl '
                 'has every record (config.logging.wandb).')
      if run is not None:
        with contextlib.suppress(Exception):
          run.finish(exit_code=1)

  def _warn(self, text: str) -> None:
    with contextlib.suppress(Exception):
      self._warn_line(f'Warning: {text}')


def _wandb_run_id(workdir: str) -> str:
  """The W&B run id kept in workdir/wandb_run_id, made (and written) on the first start."""
  path = os.path.join(workdir, RUN_ID_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      run_id = f.read().strip()
    if run_id:
      return run_id
  except FileNotFoundError:
    pass
  except OSError as error:
    raise write_error(path, error, 'the W&B run id') from error
  run_id = uuid.uuid4().hex[:16]
  tmp = path + '.tmp'
  with contextlib.suppress(FileNotFoundError):
    os.remove(tmp)
  append_bytes(tmp, (run_id + '\n').encode('ascii'), 'the W&B run id')
  try:
    os.replace(tmp, path)
  except OSError as error:
    raise write_error(path, error, 'the W&B run id') from error
  return run_id


def _one_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:300]}' if lines else type(error).__name__


def tf_record(data: bytes) -> bytes:
  """`data` framed as one TFRecord (length, its masked CRC32C, data, its masked CRC32C), as
  tensorboardX's `RecordWriter.write` frames it."""
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel

  header = struct.pack('Q', len(data))
  return (header + struct.pack('I', masked_crc32c(header)) + data +
          struct.pack('I', masked_crc32c(data)))


def append_line(path: str, line: str) -> None:
  """Appends `line` and a newline to `path` whole, or not at all (raising `WriteError`)."""
  append_bytes(path, (line + '\n').encode('utf-8'), 'metrics')


def append_bytes(path: str, data: bytes, what: str) -> None:
  """Appends `data` to `path` whole, or not at all: a write that fails part way is cut back
  off the file and raises `WriteError` naming `what` and the file."""
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  except OSError as error:
    raise write_error(path, error, what) from error
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
      raise write_error(path, error, what) from error
  finally:
    os.close(fd)


def write_error(path: str, error: OSError, what: str = 'metrics') -> WriteError:
  """The one-line `WriteError` for a failed write of `what` to `path`."""
  cause = error.strerror or os.strerror(error.errno or 0) or type(error).__name__
  return WriteError(f'Cannot write {what} to {path}: {cause}. Free disk space or fix the workdir '
                    'permissions; checkpoints already written are intact.')


def overwrite_in_place(path: str, text: str) -> bool:
  """Rewrites an existing small file in place, for when a full disk refuses the temporary
  file of an atomic write: the new text fits the blocks the file already has. Whether it
  was written."""
  data = text.encode('utf-8')
  try:
    fd = os.open(path, os.O_WRONLY)
  except OSError:
    return False
  try:
    if os.fstat(fd).st_blocks * 512 < len(data):
      return False  # it would need new blocks
    written = 0
    while written < len(data):
      written += os.pwrite(fd, data[written:], written)
    os.ftruncate(fd, len(data))
    return True
  except OSError:
    return False
  finally:
    os.close(fd)


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
    raise write_error(path, error) from error


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
