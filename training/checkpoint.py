"""Orbax checkpoints of the train state, plus each process's data position beside them.

Orbax writes every checkpoint to a temporary directory and renames it when complete,
so a checkpoint cut off mid-write is never listed, never restored. A write that fails (disk
full, permissions), in the foreground or in orbax's background thread, raises a one-line
`CheckpointError` naming the checkpoint, the cause and the last complete step, which stays
intact: orbax removes old checkpoints only after a new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from training.metrics import WriteError


class CheckpointError(WriteError):
  """A checkpoint could not be written; the earlier ones are intact."""


_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # in the paths of a checkpoint being written


class _OneLineOrbaxErrors(logging.Filter):
  """Keeps orbax's failed-write reports to their first line.

  Orbax logs each failed background write with a traceback, and asyncio repeats every failed
  fragment's ('exception was never retrieved'); the `CheckpointError` that follows says it once.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    frames = [frame.tb_frame.f_code.co_filename for frame in _walk(getattr(error, '__traceback__',
                                                                           None))]
    from_orbax = (any(f'{os.sep}orbax{os.sep}' in name for name in frames + [record.pathname])
                  or _TMP_SUFFIX in f'{error} {record.getMessage()}')
    if not from_orbax:
      return True
    if record.name == 'asyncio':
      return False
    record.exc_info, record.exc_text = None, None
    return True


def _walk(trace):
  while trace is not None:
    yield trace
    trace = trace.tb_next


for _name in ('absl', 'asyncio'):
  logging.getLogger(_name).addFilter(_OneLineOrbaxErrors())


def _drop_closed_loop_callbacks(previous):
  """A sys.unraisablehook that drops what tensorstore reports after orbax's failed writes.

  When one write of a checkpoint fails, orbax closes its event loop while tensorstore still
  finishes the other writes; each then fails to call back ('Event loop is closed') and prints
  a traceback, even after the run's own error line. Nothing is lost by dropping them.
  """

  def hook(unraisable) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      previous(unraisable)

  return hook


sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def _cause(error: BaseException) -> str:
  """The OS-level reason of a failed write, e.g. 'No space left on device (errno 28)'."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno:
      return f'{seen.strerror or os.strerror(seen.errno)} (errno {seen.errno})'
    code = re.search(r"os_error_code='?(\d+)", str(seen))  # tensorstore's errors are text
    if code:
      return f'{os.strerror(int(code.group(1)))} (errno {code.group(1)})'
    seen = seen.__cause__ or seen.__context__
  lines = str(error).strip().splitlines()
  return (lines[0][:300] if lines else type(error).__name__)


class Checkpointer:
  """Saves and restores (state, data position) at a step; keeps the last `keep` checkpoints."""

  def __init__(self, workdir: str, keep: int, process_index: int):
    # Orbax needs an absolute path; a relative local workdir ('runs/clm') is made absolute.
    root = epath.Path(workdir)
    self.directory = (root if '://' in workdir else root.absolute()) / 'checkpoints'
    self.process_index = process_index
    self._pending: int | None = None  # the step of a save that may still be in flight
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def complete_steps(self) -> list[int]:
    """Steps whose checkpoint is complete on disk (orbax renames it into place at the end)."""
    if not self.directory.exists():
      return []
    return sorted(int(path.name) for path in self.directory.iterdir() if path.name.isdigit())

  def _data_path(self, step: int) -> epath.Path:
    return self.directory.parent / 'data_state' / f'step_{step}.process_{self.process_index}.json'

  def _error(self, step: int | None, error: BaseException) -> CheckpointError:
    where = self.directory / str(step) if step is not None else self.directory
    complete = [s for s in self.complete_steps() if s != step]
    intact = (f'the checkpoint of step {complete[-1]} is intact and running again resumes from '
              'it' if complete else 'no earlier checkpoint exists')
    cause = _cause(error)
    fix = (f'Free disk space or fix the permissions of {self.directory}' if '(errno ' in cause
           else 'Fix that cause')
    return CheckpointError(f'Cannot write the checkpoint {where}: {cause}. {fix}; {intact}.')

  def save(self, step: int, state: Any, data_state: dict[str, Any], *, force: bool = False) -> None:
    """Writes the data position first (atomically), then the state (asynchronously).

    Waits for the previous save first, so a failure is reported with the step it belongs to.
    """
    self.wait()
    try:
      path = self._data_path(step)
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.parent / (path.name + '.tmp')
      tmp.write_text(json.dumps(data_state))
      os.replace(tmp, path) if not str(path).startswith('gs://') else tmp.rename(path)
      self._pending = step
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                        force=force)
      self._prune_data_states()
    except Exception as error:  # pylint: disable=broad-exception-caught
      self._pending = None
      raise self._error(step, error) from error

  def check(self) -> None:
    """Raises the error of a background save that has already failed; never blocks."""
    try:
      self.manager.check_for_errors()
    except Exception as error:  # pylint: disable=broad-exception-caught
      step, self._pending = self._pending, None
      raise self._error(step, error) from error

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """The state at `step`, laid out as `abstract_state` says (any mesh), and the data position."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    path = self._data_path(step)
    if not path.exists():
      raise FileNotFoundError(f'Checkpoint step {step} has no data position at {path}: the workdir '
                              'is incomplete; delete that checkpoint or start a new workdir.')
    return restored['state'], json.loads(path.read_text())

  def _prune_data_states(self) -> None:
    kept = set(self.manager.all_steps())
    folder = self.directory.parent / 'data_state'
    for path in folder.glob(f'step_*.process_{self.process_index}.json'):
      step = int(path.name.split('.')[0].removeprefix('step_'))
      if step not in kept and step < max(kept | {0}):
        path.unlink(missing_ok=True)

  def wait(self) -> None:
    """Blocks until the last save is complete; raises `CheckpointError` if it failed."""
    step, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise self._error(step, error) from error

  def close(self) -> None:
    """Waits for the last save (raising its error) and releases orbax's threads."""
    try:
      self.wait()
    finally:
      # After a failed save orbax re-raises that failure here; `wait` has reported it.
      with contextlib.suppress(Exception):
        self.manager.close()


def is_primary() -> bool:
  return jax.process_index() == 0
