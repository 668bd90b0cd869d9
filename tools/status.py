"""Where every run of a sweep stands: state, step, losses, speed and time left, from the workdirs.

  python tools/status.py runs/sweep            # or gs://BUCKET/sweep
  python tools/status.py runs/sweep --watch 60  # refresh every minute
  python tools/status.py runs/sweep --json      # one JSON object per run, for scripts

It reads what runs write (config.json, run.json with the planned steps, metrics.jsonl,
checkpoints/) and what tools/launch.py adds (launch.json: queued, preempted, requeue and
failure counts, a failure's reason), plus an
optional status.json written by train.py ({"state": ..., "reason": ...}). A run with no
launcher record counts as running while its metrics.jsonl changed in the last --stale_minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence

if __package__ in (None, ''):  # run as a script: python tools/status.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launching import record as record_lib  # pylint: disable=wrong-import-position
from training.workdir import (  # pylint: disable=wrong-import-position
    CONFIG_FILE, METRICS_FILE, RUN_FILE, STATUS_FILE, read_json)

RUN_FILES = (CONFIG_FILE, METRICS_FILE, record_lib.RECORD_FILE)


@dataclasses.dataclass
class RunStatus:
  """One run's row."""

  name: str
  state: str  # queued, running, preempted, done, failed, stopped
  step: int = 0
  total_steps: int = 0
  train_loss: float | None = None
  eval_loss: float | None = None
  tokens_per_sec: float | None = None
  seconds_left: float | None = None
  preemptions: int = 0
  failures: int = 0
  attempts: int = 0
  reason: str = ''
  updated: float | None = None  # unix time of the newest sign of life
  workdir: str = ''

  def state_text(self) -> str:
    if self.state == 'preempted':  # requeued, waiting for capacity
      return f'preempted {max(self.preemptions, 1)}x, requeued'
    if self.preemptions and self.state != 'failed':
      return f'{self.state}, preempted and requeued {self.preemptions}x'
    return self.state


def _path(path: str):
  from etils import epath  # pylint: disable=import-outside-toplevel

  return epath.Path(path)


def _mtime(path) -> float | None:
  try:
    return float(path.stat().mtime)
  except (OSError, AttributeError):
    return None


def _metrics(path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
  """(last train record, last eval record) of metrics.jsonl; a torn last line is skipped."""
  last = {'train': None, 'eval': None}
  try:
    text = path.read_text()
  except OSError:
    return None, None
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and record.get('split') in last:
      last[record['split']] = record
  return last['train'], last['eval']


def _finite(value: Any) -> float | None:
  return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_run(workdir: str, now: float | None = None, stale_s: float = 600) -> RunStatus:
  """The status of the run in `workdir` (local or gs://)."""
  now = time.time() if now is None else now
  root = _path(workdir)
  config = read_json(root / CONFIG_FILE) or {}
  launch = read_json(root / record_lib.RECORD_FILE) or {}
  written = read_json(root / STATUS_FILE) or {}  # optional, from train.py
  train, evaluation = _metrics(root / METRICS_FILE)
  # The steps the run planned (run.json): a budget run plans them from its budget and never
  # reads config.total_steps; config.total_steps only until the run has started.
  planned = (read_json(root / RUN_FILE) or {}).get('total_steps')
  total = int(planned or config.get('total_steps') or
              dict(launch.get('overrides') or {}).get('total_steps') or 0)
  status = RunStatus(name=launch.get('name') or root.name, state='queued', total_steps=total,
                     workdir=workdir, preemptions=int(launch.get('preemptions', 0)),
                     failures=int(launch.get('failures', 0)),
                     attempts=int(launch.get('attempts', 0)))
  if train:
    status.step = int(train['step'])
    status.train_loss = _finite(train.get('loss'))
    status.tokens_per_sec = _finite(train.get('tokens_per_sec'))
    step_time = _finite(train.get('step_time'))
    if step_time is not None and total:
      status.seconds_left = max(total - status.step, 0) * step_time
  if evaluation:
    status.eval_loss = _finite(evaluation.get('loss'))
  signs = [t for t in (_mtime(root / METRICS_FILE), _mtime(root / CONFIG_FILE),
                       launch.get('updated'), written.get('time')) if t]
  status.updated = max(signs) if signs else None
  if total and status.step >= total:
    status.state = 'done'
  elif written.get('state') == 'failed':
    status.state, status.reason = 'failed', str(written.get('reason', ''))
  elif launch:
    status.state = launch.get('state', 'queued')
    metrics_time = _mtime(root / METRICS_FILE)
    if (status.state in ('queued', 'preempted') and metrics_time is not None and
        metrics_time > float(launch.get('updated', 0)) and now - metrics_time < stale_s):
      status.state = 'running'  # a job system restarted it (SLURM, a JobSet) and it trains
    if status.state in ('failed', 'stopped', 'preempted', 'queued'):
      status.reason = str(launch.get('reason', ''))
  elif written.get('state') in ('done', 'preempted', 'running'):
    status.state = written['state']
  elif status.updated is not None and now - status.updated < stale_s:
    status.state = 'running'
  else:
    status.state, status.reason = 'stopped', (
        f'no progress for {_duration(now - status.updated)} and no launcher record'
        if status.updated else 'no progress and no launcher record')
  if status.state not in ('running', 'queued', 'preempted'):
    status.seconds_left = None if status.state != 'done' else 0.0
  return status


def find_runs(root: str) -> list[str]:
  """Workdirs under `root` (runs one level down, or `root` itself), sorted by name."""
  base = _path(root)
  if not base.exists():
    raise FileNotFoundError(f'{root} does not exist: give the --workdir_root of a sweep.')
  if any((base / name).exists() for name in RUN_FILES):
    return [root]
  found = []
  for child in sorted(base.iterdir(), key=lambda p: p.name):
    if child.is_dir() and any((child / name).exists() for name in RUN_FILES):
      found.append(f'{root.rstrip("/")}/{child.name}' if '://' in root
                   else os.path.join(root, child.name))
  return found


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return '-'
  seconds = int(max(seconds, 0))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f'{days}d{hours:02d}h'
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def _number(value: float | None, digits: int = 4) -> str:
  return '-' if value is None else f'{value:.{digits}f}'


def _speed(value: float | None) -> str:
  return '-' if value is None else f'{value / 1000:.1f}k'


def printable(text: str) -> str:
  """`text` with every non-printable character escaped visibly (ESC -> \\x1b), so that a run
  name or a job's last log line cannot move the cursor, retitle the terminal or set the
  clipboard."""
  return ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii')
                 for c in str(text))


def table(statuses: Sequence[RunStatus], now: float | None = None) -> str:
  """The status table, one row per run, then counts per state."""
  now = time.time() if now is None else now
  header = ('RUN', 'STATE', 'STEP', 'TRAIN LOSS', 'EVAL LOSS', 'TOK/S', 'LEFT', 'UPDATED')
  rows = [header]
  for s in statuses:
    rows.append((printable(s.name), printable(s.state_text()), f'{s.step}/{s.total_steps or "?"}',
                 _number(s.train_loss), _number(s.eval_loss), _speed(s.tokens_per_sec),
                 _duration(s.seconds_left),
                 f'{_duration(now - s.updated)} ago' if s.updated else '-'))
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
           for row in rows]
  for s, index in zip(statuses, range(1, len(rows))):
    if s.reason and s.state in ('failed', 'stopped', 'preempted', 'queued'):
      lines[index] += f'  ({printable(s.reason)})'
  counts: dict[str, int] = {}
  for s in statuses:
    counts[s.state] = counts.get(s.state, 0) + 1
  lines.append(f'{len(statuses)} runs: ' + ', '.join(f'{n} {printable(state)}' for state, n in
                                                   sorted(counts.items())))
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('root', help='A sweep\'s --workdir_root (local or gs://), or one workdir.')
  parser.add_argument('--watch', type=float, nargs='?', const=30.0, default=0.0,
                      help='Refresh every N seconds (default 30) until interrupted.')
  parser.add_argument('--json', action='store_true', help='One JSON object per run.')
  parser.add_argument('--stale_minutes', type=float, default=10.0,
                      help='A run without launcher record counts as running while its metrics '
                      'changed this recently (default 10).')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.watch < 0 or args.stale_minutes <= 0:
    parser.error('--watch and --stale_minutes must be positive.')
  try:
    while True:
      try:
        statuses = [read_run(w, stale_s=60 * args.stale_minutes) for w in find_runs(args.root)]
      except FileNotFoundError as error:
        print(f'status.py: error: {error}', file=sys.stderr)
        return 2
      except ImportError as error:  # gs:// without gcsfs
        print(f'status.py: error: cannot read {args.root}: {error} (pip install gcsfs).',
              file=sys.stderr)
        return 2
      if args.json:
        text = '\n'.join(json.dumps(dataclasses.asdict(s)) for s in statuses)
      else:
        text = table(statuses) if statuses else f'No runs under {args.root} yet.'
      if args.watch:
        print(f'\033[2J\033[H{time.strftime("%Y-%m-%d %H:%M:%S")}  {args.root}\n{text}', flush=True)
        time.sleep(args.watch)
      else:
        print(text)
        return 0
  except KeyboardInterrupt:
    return 0


if __name__ == '__main__':
  sys.exit(main())
