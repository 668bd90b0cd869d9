"""The launcher's account of one run, kept beside the run's own files as <workdir>/launch.json.

train.py writes config.json, run.json, metrics.jsonl and checkpoints/; the launcher adds this
file: the run's sweep overrides and command (so names can stay short), the backend, its state
(queued, running, preempted, done, failed, stopped), the one-line reason of a failure, how many
attempts, preemptions and failures it had, and a short history. `tools/status.py` reads it.
Local paths and gs:// (through etils.epath) both work.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

RECORD_FILE = 'launch.json'
STATES = ('queued', 'running', 'preempted', 'done', 'failed', 'stopped')
_HISTORY_LIMIT = 200  # a run preempted every hour for a week still fits


def _path(workdir: str):
  from etils import epath  # pylint: disable=import-outside-toplevel

  return epath.Path(workdir) / RECORD_FILE


def read(workdir: str) -> dict[str, Any] | None:
  """The record in `workdir`, or None when there is none (or it is unreadable)."""
  try:
    return json.loads(_path(workdir).read_text())
  except (OSError, ValueError):
    return None


def write(workdir: str, record: dict[str, Any]) -> None:
  """Writes the record whole: a temporary file renamed over it locally, one object on gs://."""
  text = json.dumps(record, indent=1, default=str)
  if '://' in workdir:
    _path(workdir).parent.mkdir(parents=True, exist_ok=True)
    _path(workdir).write_text(text)
    return
  os.makedirs(workdir, exist_ok=True)
  final = os.path.join(workdir, RECORD_FILE)
  temporary = f'{final}.tmp.{os.getpid()}'
  with open(temporary, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(temporary, final)


class RunRecord:
  """launch.json of one run, rewritten at every change of state."""

  def __init__(self, workdir: str, data: dict[str, Any]):
    self.workdir = workdir
    self.data = data

  @classmethod
  def start(cls, workdir: str, *, name: str, config: str, overrides: dict[str, Any],
            command: list[str] | str, backend: str) -> 'RunRecord':
    """A record for a run about to be submitted; keeps counts of an earlier launch's record."""
    previous = read(workdir) or {}
    data = dict(name=name, config=config, overrides=overrides, command=command, backend=backend,
                state='queued', reason='', attempts=0, preemptions=0, failures=0, where='',
                launches=int(previous.get('launches', 0)) + 1,
                history=list(previous.get('history', []))[-_HISTORY_LIMIT:])
    record = cls(workdir, data)
    record.update('queued', detail=f'submitted to {backend}')
    return record

  def update(self, state: str, *, detail: str = '', **fields: Any) -> None:
    if state not in STATES:
      raise ValueError(f'Unknown run state {state!r}.')
    self.data.update(fields, state=state, updated=time.time())
    history = self.data.setdefault('history', [])
    history.append({'time': self.data['updated'], 'state': state, 'detail': detail})
    del history[:-_HISTORY_LIMIT]
    write(self.workdir, self.data)

  def note(self, detail: str, **fields: Any) -> None:
    """Adds fields to what is on disk now (a job may have updated it), keeping its state."""
    self.data = read(self.workdir) or self.data
    self.update(self.data.get('state', 'queued'), detail=detail, **fields)

  def __getitem__(self, key: str) -> Any:
    return self.data[key]


def mismatch(workdir: str, config: str, overrides: dict[str, Any]) -> str | None:
  """Why `workdir` cannot hold this run (its launch.json names other overrides), or None."""
  saved = read(workdir)
  if saved is None:
    return None
  ours = json.loads(json.dumps({'config': config, 'overrides': overrides}, default=str))
  theirs = {'config': saved.get('config'), 'overrides': saved.get('overrides')}
  if ours == theirs:
    return None
  return (f'{workdir} holds the run {theirs} launched earlier, not {ours}: the sweep changed '
          'which keys vary, so run names changed; use another --workdir_root.')

