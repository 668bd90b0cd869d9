"""Runs a sweep on this machine: one train.py process at a time, or --parallel N at once.

Each attempt's output goes to <workdir>/launch_logs/attempt_N.log (and to the terminal when
one run goes at a time). A run with an "after" command (a comparison's downstream scoring) runs
it in the same slot and log once train.py exits 0; the run is done when both have succeeded. A run stopped by SIGTERM (exit 143) is started again and resumes;
with --gpus_per_run K, process slot s sees only GPUs s*K .. s*K+K-1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence

from launching import backends
from launching import base, private, record as record_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOG_DIR = 'launch_logs'


@dataclasses.dataclass
class _Attempt:
  run: base.Run
  slot: int
  process: subprocess.Popen
  log_path: str
  pump: threading.Thread
  after: bool = False  # the process is the run's "after" command, not train.py


@backends.register('local')
class Local(base.Backend):
  """train.py processes on this machine."""

  @classmethod
  def add_flags(cls, parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('--backend local')
    group.add_argument('--parallel', type=int, default=1, help='Runs at once (default 1).')
    group.add_argument('--gpus_per_run', type=int, default=0,
                       help='Give each parallel run its own K GPUs (CUDA_VISIBLE_DEVICES).')
    group.add_argument('--python', default=sys.executable,
                       help='Interpreter that runs train.py (default: this one).')

  def check(self, runs: Sequence[base.Run]) -> None:
    if self.args.parallel < 1:
      raise ValueError(f'--parallel {self.args.parallel}: give 1 or more runs at once.')
    if self.args.gpus_per_run < 0:
      raise ValueError(f'--gpus_per_run {self.args.gpus_per_run}: give 0 (share) or more.')
    if any('://' in run.workdir for run in runs):
      raise ValueError('--backend local writes logs into each workdir: give a local '
                       '--workdir_root (status and resume work the same).')

  def command(self, run: base.Run) -> list[str]:
    return base.train_command(run, self.args.data_dir, python=self.args.python)

  def record_command(self, run: base.Run) -> list[str]:
    return self.command(run)

  def environment(self, slot: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    gpus = self.args.gpus_per_run
    if gpus:
      env['CUDA_VISIBLE_DEVICES'] = ','.join(str(slot * gpus + i) for i in range(gpus))
    return env

  def dry_run(self, runs: Sequence[base.Run]) -> None:
    for run in runs:
      self.print(base.quote(self.command(run)))
      if run.after:
        self.print(f'  then: {base.quote(base.after_command(run, self.args.python))}')

  def launch(self, runs: Sequence[base.Run], records: dict[str, record_lib.RunRecord]) -> int:
    attempts = base.Attempts(runs, self.args.max_retries, records, self.out)
    running: list[_Attempt] = []
    free_slots = list(range(self.args.parallel))
    stop_starting = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stopped like Ctrl-C
    try:
      while running or (attempts.pending and not stop_starting):
        while free_slots and attempts.pending and not stop_starting:
          run = attempts.next()
          log_path = _next_log(run.workdir)
          attempts.start(run, log=log_path)
          running.append(self._start(run, free_slots.pop(0), log_path))
        time.sleep(0.05)
        for attempt in [a for a in running if a.process.poll() is not None]:
          running.remove(attempt)
          attempt.pump.join()
          code = attempt.process.returncode
          if code == 0 and not attempt.after and attempt.run.after:  # trained: now score
            running.append(self._start(attempt.run, attempt.slot, attempt.log_path, after=True))
            continue
          free_slots.append(attempt.slot)
          with open(attempt.log_path, encoding='utf-8', errors='replace') as f:
            output = f.read()
          if attempts.finish(attempt.run, base.outcome_of(code, output)) \
              == 'failed' and not self.args.keep_going:
            stop_starting = True  # let the others finish; start nothing new
    except KeyboardInterrupt:
      for attempt in running:
        attempt.process.send_signal(signal.SIGTERM)  # train.py saves and exits 143
      for attempt in running:
        try:
          attempt.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
          attempt.process.kill()
      attempts.stop_all(runs, 'launcher interrupted; launch again to resume')
      return 130
    finally:
      signal.signal(signal.SIGTERM, previous)
    if stop_starting:
      attempts.stop_all(attempts.pending, 'not started: an earlier run failed (--keep_going '
                        'starts the rest)')
    failed = [name for name, outcome in attempts.final.items() if outcome.state == 'failed']
    if failed:
      self.print(f'launch.py: {len(failed)} run(s) failed: {", ".join(failed)}; '
                 'tools/status.py shows why. Their workdirs resume when launched again.')
    return 1 if failed else 0

  def _start(self, run: base.Run, slot: int, log_path: str, after: bool = False) -> _Attempt:
    command = base.after_command(run, self.args.python) if after else self.command(run)
    process = subprocess.Popen(command, cwd=REPO, env=self.environment(slot),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)  # Ctrl-C reaches the launcher only
    echo = self.out if self.args.parallel == 1 else None
    pump = threading.Thread(target=_copy, args=(process.stdout, log_path, echo, after),
                            daemon=True)
    pump.start()
    return _Attempt(run, slot, process, log_path, pump, after)


def _next_log(workdir: str) -> str:
  """WORKDIR/launch_logs/attempt_N.log for the next attempt (earlier launches' logs stay)."""
  logs = os.path.join(workdir, LOG_DIR)
  os.makedirs(logs, exist_ok=True)
  return os.path.join(logs, f'attempt_{len(os.listdir(logs)) + 1}.log')


def _copy(stream, log_path: str, echo, append: bool = False) -> None:
  """Copies a process's output into its log file (and to `echo`) line by line."""
  with private.open_private(log_path, append=append) as log:  # 0600, never through a link
    for raw in iter(stream.readline, b''):
      line = raw.decode('utf-8', errors='replace')
      log.write(line)
      log.flush()
      if echo is not None:
        echo.write(line)
        echo.flush()
  stream.close()


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt
