"""What every backend shares: a run, its train.py command, and when an ended attempt is requeued.

A backend turns the sweep's runs into submissions (processes, Cloud TPU slices, JobSets, sbatch
jobs). `--dry_run` prints exactly what it would submit and submits nothing.
"""

from __future__ import annotations

import abc
import argparse
import collections
import dataclasses
import shlex
import sys
import time
from typing import Any, Iterable, Sequence, TextIO

from launching import record as record_lib

PREEMPTED_EXIT_CODE = 143  # train.py after SIGTERM: checkpoint saved, run again to resume
SETUP_ERROR_EXIT_CODE = 2  # train.py's one-line bad-input error: running again cannot help
ERROR_PREFIX = 'train.py: error:'


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep."""

  name: str
  config: str  # config file and preset, e.g. configs/clm.py:tiny
  overrides: tuple[tuple[str, Any], ...]
  workdir: str
  index: int = 0  # position in the sweep
  # A command the job runs after train.py exits 0 (script relative to the repository, then its
  # arguments; the job's interpreter runs it, with --workdir=WORKDIR added): a comparison's
  # downstream scoring (tools/compare.py --mode score).
  after: tuple[str, ...] = ()


def format_value(value: Any) -> str:
  """A value as train.py's --config.key= flag reads it (floats in shortest form)."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


def train_args(run: Run, data_dir: str = '') -> list[str]:
  """train.py and its flags for one run (no interpreter)."""
  args = ['train.py', '--config', run.config, '--workdir', run.workdir]
  args += [f'--config.{key}={format_value(value)}' for key, value in run.overrides]
  if data_dir:
    args.append(f'--config.data.data_dir={data_dir}')
  return args


def train_command(run: Run, data_dir: str = '', python: str = 'python') -> list[str]:
  """The train.py command line of one run."""
  return [python, *train_args(run, data_dir)]


def after_command(run: Run, python: str = 'python') -> list[str]:
  """The command the job runs once train.py has succeeded, given the run's workdir; [] when
  there is none."""
  return [python, *run.after, f'--workdir={run.workdir}'] if run.after else []


def failure_reason(output: str, exit_code: int | None) -> str:
  """One line saying why an attempt failed: train.py's own error line, else the last line."""
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  for line in reversed(lines):
    if line.startswith(ERROR_PREFIX):
      return line[len(ERROR_PREFIX):].strip()
  tail = lines[-1][:300] if lines else 'no output'
  return f'exit code {exit_code}: {tail}' if exit_code is not None else tail


@dataclasses.dataclass
class Outcome:
  """How one attempt of a run ended."""

  state: str  # 'done', 'preempted' or 'failed'
  reason: str = ''
  exit_code: int | None = None


def outcome_of(exit_code: int, output: str = '') -> Outcome:
  """The outcome of train.py's exit status (143 is SIGTERM: preempted, checkpoint saved)."""
  if exit_code == 0:
    return Outcome('done', exit_code=0)
  if exit_code in (PREEMPTED_EXIT_CODE, -15):
    return Outcome('preempted', 'stopped by SIGTERM', exit_code)
  return Outcome('failed', failure_reason(output, exit_code), exit_code)


class Attempts:
  """The runs waiting to start, and whether each ended attempt is requeued.

  A preempted attempt is requeued (it resumes from its last checkpoint); so is a failed one,
  unless train.py refused the run's input (exit 2: the same command fails again). A run is
  started at most 1 + max_retries times. Every change goes to the run's launch.json.
  """

  def __init__(self, runs: Sequence[Run], max_retries: int,
               records: dict[str, record_lib.RunRecord], out: TextIO | None = None):
    self.pending: collections.deque[Run] = collections.deque(runs)
    self.max_retries = max_retries
    self.records = records
    self.out = out
    self.started: collections.Counter[str] = collections.Counter()
    self.final: dict[str, Outcome] = {}

  def next(self) -> Run | None:
    return self.pending.popleft() if self.pending else None

  def start(self, run: Run, where: str = '', state: str = 'running', **fields: Any) -> int:
    """Marks `run` started (`state` 'queued' while it waits for its machine; `fields` go into
    launch.json too); returns its attempt number (1-based)."""
    self.started[run.name] += 1
    attempt = self.started[run.name]
    record = self.records[run.name]
    record.update(state, detail=f'attempt {attempt}{f" on {where}" if where else ""}',
                  attempts=record['attempts'] + 1, where=where, **fields)
    self.say(f'start    {run.name} (attempt {attempt}{f", {where}" if where else ""})')
    return attempt

  def finish(self, run: Run, outcome: Outcome) -> str:
    """Records the attempt's end; returns 'done', 'requeued' or 'failed'."""
    record = self.records[run.name]
    if outcome.state == 'done':
      record.update('done', detail='finished', reason='')
      self.final[run.name] = outcome
      self.say(f'done     {run.name}')
      return 'done'
    counts = {'preemptions': record['preemptions'] + (outcome.state == 'preempted'),
              'failures': record['failures'] + (outcome.state == 'failed')}
    retryable = outcome.exit_code != SETUP_ERROR_EXIT_CODE
    if retryable and self.started[run.name] <= self.max_retries:
      record.update('preempted' if outcome.state == 'preempted' else 'queued',
                    detail=f'{outcome.state}: {outcome.reason}; requeued', reason=outcome.reason,
                    **counts)
      self.pending.append(run)
      self.say(f'requeue  {run.name} ({outcome.state}: {outcome.reason})')
      return 'requeued'
    why = outcome.reason if not retryable else (
        f'{outcome.reason} (after {self.started[run.name]} attempts; --max_retries '
        f'{self.max_retries})')
    record.update('failed', detail=why, reason=why, **counts)
    self.final[run.name] = Outcome('failed', why, outcome.exit_code)
    self.say(f'failed   {run.name}: {why}')
    return 'failed'

  def stop_all(self, runs: Iterable[Run], detail: str) -> None:
    """Marks runs that were running or waiting as stopped (the launcher itself was stopped)."""
    for run in runs:
      if run.name not in self.final:
        self.records[run.name].update('stopped', detail=detail, reason=detail)

  def say(self, text: str) -> None:
    print(f'{time.strftime("%H:%M:%S")} {text}', file=self.out or sys.stdout, flush=True)


class Backend(abc.ABC):
  """A place to run a sweep. Subclasses register with `@launching.backends.register(name)`."""

  name = ''

  @classmethod
  def add_flags(cls, parser: argparse.ArgumentParser) -> None:
    """Adds this backend's own command-line flags (shared ones live in tools/launch.py)."""

  def __init__(self, args: argparse.Namespace, out: TextIO | None = None):
    self.args = args
    self._out = out

  @property
  def out(self) -> TextIO:
    return self._out or sys.stdout  # looked up late, so redirected output is followed

  def check(self, runs: Sequence[Run]) -> None:
    """Raises ValueError with one line for settings this backend cannot use."""

  @abc.abstractmethod
  def dry_run(self, runs: Sequence[Run]) -> None:
    """Prints exactly what `launch` would submit."""

  @abc.abstractmethod
  def launch(self, runs: Sequence[Run], records: dict[str, record_lib.RunRecord]) -> int:
    """Submits (or runs) the runs; returns the exit status for the launcher."""

  def record_command(self, run: Run) -> list[str] | str:
    """What launch.json keeps as the run's command."""
    return train_command(run, getattr(self.args, 'data_dir', ''))

  def print(self, text: str) -> None:
    print(text, file=self.out, flush=True)


def quote(command: Sequence[str]) -> str:
  return shlex.join(command)
