"""Cloud TPU VMs through queued resources: a slice per run attempt, up to --max_slices at once.

For each attempt of a run the launcher
  1. asks for a slice: `gcloud compute tpus queued-resources create` (--spot, --reserved or
     on-demand) and polls it until ACTIVE;
  2. copies an archive of this checkout to every worker (`tpu-vm scp --worker=all`), unpacks
     it, installs it from its own setup.cfg plus jax[tpu], and starts train.py on every worker
     (`tpu-vm ssh --worker=all`) with PRETRAINING_OBJECTIVES_DISTRIBUTED=1, so train.py joins
     the workers with jax.distributed, which reads them from the VM's metadata;
  3. deletes the slice when the attempt ends, however it ends.
A slice that is preempted (SUSPENDED, or train.py stopped by SIGTERM) or fails gets its run
requeued on a new slice, resuming from the last checkpoint, up to --max_retries. Ctrl-C or
SIGTERM to the launcher deletes every slice it made before it exits.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Sequence, TextIO

from launching import backends
from launching import base, code_archive, private, record as record_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REMOTE_ARCHIVE = 'pretraining-objectives.tar.gz'  # in the worker's home directory
MAX_ARCHIVE_BYTES = 200 * 2**20  # uncompressed; code and configs are far smaller
DISTRIBUTED_ENV = 'PRETRAINING_OBJECTIVES_DISTRIBUTED'  # training/distributed.INITIALIZE_ENV
LIVE_STATES = ('ACCEPTED', 'WAITING_FOR_RESOURCES', 'PROVISIONING', 'CREATING', 'ACTIVE')
LOST_STATES = ('SUSPENDING', 'SUSPENDED', 'PREEMPTED')  # spot capacity taken back
_NAME = re.compile(r'^[a-z]([-a-z0-9]*[a-z0-9])?$')


@backends.register('tpu_vm')
class TpuVm(base.Backend):
  """Queued-resource TPU slices, created and deleted by the launcher."""

  @classmethod
  def add_flags(cls, parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('--backend tpu_vm')
    group.add_argument('--zone', default='', help='Cloud TPU zone, e.g. us-central2-b.')
    group.add_argument('--project', default='', help='Google Cloud project (default: gcloud\'s).')
    group.add_argument('--accelerator_type', default='', help='Slice type, e.g. v4-8, v5litepod-16.')
    group.add_argument('--runtime_version', default='tpu-ubuntu2204-base',
                       help='TPU VM image (default tpu-ubuntu2204-base).')
    group.add_argument('--spot', action='store_true', help='Spot capacity (preemptible, cheap).')
    group.add_argument('--reserved', action='store_true', help='Use the project\'s reservation.')
    group.add_argument('--max_slices', type=int, default=1,
                       help='Slices (runs) at once; also the most slices that exist at once.')
    group.add_argument('--slice_prefix', default='po', help='Slice names start with this.')
    group.add_argument('--poll_seconds', type=float, default=30.0,
                       help='How often slice states are checked (default 30).')
    group.add_argument('--remote_dir', default='~/pretraining-objectives',
                       help='Where the code is unpacked on each worker.')
    group.add_argument('--install', default="pip install -q -e . 'jax[tpu]'",
                       help='Install step run in --remote_dir on each worker before train.py.')
    group.add_argument('--create_flags', default='',
                       help='More flags for queued-resources create, e.g. "--network=N".')
    group.add_argument('--mounted_workdir_root', action='store_true',
                       help='The (non-gs://) --workdir_root is mounted at the same path on every '
                       'worker and here.')
    group.add_argument('--log_dir', default='',
                       help='Local folder for each attempt\'s output (default: a temporary one).')

  def __init__(self, args: argparse.Namespace, out: TextIO | None = None):
    super().__init__(args, out)
    # Random, so that launches started in the same second (a script starting several sweeps)
    # never ask for one another's slice names.
    self.launch_id = _base36(secrets.randbelow(36**6)).rjust(6, '0')
    self.made: list[str] = []  # every slice this launcher asked for
    self.deleted: set[str] = set()
    self.lock = threading.Lock()
    self.archive = ''
    self.digest = ''  # sha256 of the archive as built; checked before every copy

  # ---- commands ----------------------------------------------------------------------------

  def _location(self) -> list[str]:
    return [f'--zone={self.args.zone}'] + ([f'--project={self.args.project}']
                                           if self.args.project else [])

  def create_command(self, name: str) -> list[str]:
    capacity = ['--spot'] if self.args.spot else ['--reserved'] if self.args.reserved else []
    return (['gcloud', 'compute', 'tpus', 'queued-resources', 'create', name, f'--node-id={name}',
             *self._location(), f'--accelerator-type={self.args.accelerator_type}',
             f'--runtime-version={self.args.runtime_version}', *capacity]
            + shlex.split(self.args.create_flags))

  def describe_command(self, name: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', name, *self._location(),
            '--format=value(state.state)']

  def delete_command(self, name: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', name, *self._location(),
            '--force', '--quiet']

  def copy_command(self, name: str, archive: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive, f'{name}:{REMOTE_ARCHIVE}',
            *self._location(), '--worker=all', '--quiet']  # --quiet: no prompt for ssh keys

  def remote_script(self, run: base.Run) -> str:
    """What every worker runs: unpack the shipped code, install it, train."""
    directory = _remote_path(self.args.remote_dir)
    train = shlex.join(['python3', *base.train_args(run, self.args.data_dir)])
    return (f'set -e; mkdir -p {directory} && tar -xzf ~/{REMOTE_ARCHIVE} -C {directory} && '
            f'cd {directory} && {self.args.install} && '
            f'export {DISTRIBUTED_ENV}=1 && {train}')

  def ssh_command(self, name: str, run: base.Run) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', name, *self._location(), '--worker=all',
            '--quiet', f'--command={self.remote_script(run)}']

  def after_ssh_command(self, name: str, run: base.Run) -> list[str]:
    """The run's "after" command (downstream scoring), once, on worker 0, after training."""
    after = shlex.join(base.after_command(run, 'python3'))
    script = f'set -e; cd {_remote_path(self.args.remote_dir)} && {after}'
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', name, *self._location(), '--worker=0',
            '--quiet', f'--command={script}']

  def record_command(self, run: base.Run) -> str:
    return self.remote_script(run)

  def slice_name(self, run: base.Run, attempt: int) -> str:
    return f'{self.args.slice_prefix}-{self.launch_id}-{run.index}-{attempt}'

  # ---- checks and dry run ------------------------------------------------------------------

  def check(self, runs: Sequence[base.Run]) -> None:
    args = self.args
    if not args.zone or not args.accelerator_type:
      raise ValueError('--backend tpu_vm needs --zone (e.g. us-central2-b) and --accelerator_type '
                       '(e.g. v4-8).')
    if args.spot and args.reserved:
      raise ValueError('--spot and --reserved exclude each other: pick one (or neither for '
                       'on-demand).')
    if args.max_slices < 1:
      raise ValueError(f'--max_slices {args.max_slices}: give 1 or more.')
    if args.poll_seconds <= 0:
      raise ValueError(f'--poll_seconds {args.poll_seconds}: give a positive number.')
    if not _NAME.match(args.slice_prefix) or len(args.slice_prefix) > 20:
      raise ValueError(f'--slice_prefix {args.slice_prefix!r}: use up to 20 lowercase letters, '
                       'digits and hyphens, starting with a letter.')
    files = code_archive.source_files(REPO)
    size = code_archive.total_bytes(REPO, files)
    if size > MAX_ARCHIVE_BYTES:
      biggest = max(files, key=lambda path: os.path.getsize(os.path.join(REPO, path)))
      raise ValueError(f'The checkout to ship to every worker holds {size / 2**20:.0f} MiB (the '
                       f'largest file is {biggest}): add data and outputs to .gitignore.')
    local = [run.workdir for run in runs if not run.workdir.startswith('gs://')]
    if local and not args.mounted_workdir_root:
      raise ValueError('--backend tpu_vm needs a gs:// --workdir_root: every worker writes to '
                       'it and the slices are deleted after each run (--mounted_workdir_root if '
                       'every worker mounts it, e.g. Filestore).')
    if args.log_dir and os.path.lexists(args.log_dir):
      _check_log_dir(args.log_dir)

  def dry_run(self, runs: Sequence[base.Run]) -> None:
    files = code_archive.source_files(REPO)
    self.print(f'# archive of this checkout ({len(files)} files), copied to each worker as '
               f'~/{REMOTE_ARCHIVE}; up to {self.args.max_slices} slice(s) at once; a preempted '
               f'or failed run is requeued on a new slice up to {self.args.max_retries} times.')
    for run in runs:
      name = self.slice_name(run, 1)
      self.print(f'# {run.name}')
      for command in (self.create_command(name), self.describe_command(name),
                      self.copy_command(name, 'ARCHIVE'), self.ssh_command(name, run),
                      *([self.after_ssh_command(name, run)] if run.after else []),
                      self.delete_command(name)):
        self.print(base.quote(command))

  # ---- launch ------------------------------------------------------------------------------

  def launch(self, runs: Sequence[base.Run], records: dict[str, record_lib.RunRecord]) -> int:
    log_dir = self.args.log_dir or tempfile.mkdtemp(prefix='tpu-vm-logs-')
    attempts = base.Attempts(runs, self.args.max_retries, records, self.out)
    try:
      os.makedirs(log_dir, mode=0o700, exist_ok=True)
      _check_log_dir(log_dir)  # again: another user may have made it since the check
    except (OSError, ValueError) as error:
      attempts.say(f'launch.py: error: {error}')
      attempts.stop_all(runs, f'not started: {error}')
      return 2
    # The archive is built where only this user can write, and checked before every copy: a
    # file another local user could replace would run their code under this user's identity.
    archive_dir = tempfile.mkdtemp(prefix='tpu-vm-code-')
    self.archive = os.path.join(archive_dir, REMOTE_ARCHIVE)
    self.digest = code_archive.build(REPO, self.archive)
    attempts.say(f'code archive {self.digest[:12]}; attempt logs in {log_dir}')
    stop = threading.Event()
    active: list[_SliceAttempt] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.getsignal(signal.SIGINT)
    try:
      while attempts.pending or active:
        while len(active) < self.args.max_slices and attempts.pending:
          run = attempts.next()
          name = self.slice_name(run, attempts.started[run.name] + 1)
          log = os.path.join(log_dir, f'{name}.log')
          attempts.start(run, where=name, state='queued', log=log)  # running once ACTIVE
          worker = _SliceAttempt(self, run, name, log, stop)
          worker.start()
          active.append(worker)
        time.sleep(min(self.args.poll_seconds, 0.2))
        for worker in active:
          if worker.training.is_set() and not worker.reported:
            worker.reported = True
            records[worker.sweep_run.name].update('running', detail=f'{worker.name_} is ACTIVE')
        for worker in [w for w in active if not w.is_alive()]:
          active.remove(worker)
          attempts.finish(worker.sweep_run, worker.outcome)
    except KeyboardInterrupt:
      for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not skip deletion
        signal.signal(signum, lambda *_: attempts.say('still deleting slices; please wait'))
      attempts.say('interrupted: stopping attempts and deleting every slice made')
      stop.set()
      for worker in active:
        worker.join(timeout=600)
      attempts.stop_all(runs, 'launcher interrupted; launch again to resume')
      return 130
    finally:
      stop.set()
      self.delete_leftovers(attempts)
      shutil.rmtree(archive_dir, ignore_errors=True)
      signal.signal(signal.SIGTERM, previous)
      signal.signal(signal.SIGINT, previous_int)
    failed = [name for name, outcome in attempts.final.items() if outcome.state == 'failed']
    if failed:
      attempts.say(f'{len(failed)} run(s) failed: {", ".join(failed)}; tools/status.py shows why.')
    return 1 if failed else 0

  def delete(self, name: str) -> bool:
    """Deletes a slice this launcher made (three tries); True when gone."""
    for _ in range(3):
      done = subprocess.run(self.delete_command(name), capture_output=True, text=True,
                            check=False, start_new_session=True)
      if done.returncode == 0 or 'NOT_FOUND' in done.stderr:
        with self.lock:
          self.deleted.add(name)
        return True
      time.sleep(1)
    return False

  def delete_leftovers(self, attempts: base.Attempts) -> None:
    with self.lock:
      left = [name for name in self.made if name not in self.deleted]
    for name in left:
      if not self.delete(name):
        attempts.say(f'could not delete slice {name}: run {base.quote(self.delete_command(name))}')


class _SliceAttempt(threading.Thread):
  """One attempt of one run on its own slice: create, wait, ship, train, delete."""

  def __init__(self, backend: TpuVm, run: base.Run, name: str, log_path: str,
               stop: threading.Event):
    super().__init__(daemon=True)
    self.backend, self.sweep_run, self.name_ = backend, run, name
    self.log_path, self.stop = log_path, stop
    self.outcome = base.Outcome('failed', 'attempt did not finish')
    self.training = threading.Event()  # set once the slice is ACTIVE
    self.reported = False
    self.owned = True  # False when the name was taken already: that slice is not ours to delete

  def run_attempt(self) -> base.Outcome:
    backend = self.backend
    with backend.lock:
      backend.made.append(self.name_)
    created = subprocess.run(backend.create_command(self.name_), capture_output=True, text=True,
                             check=False, start_new_session=True)
    if created.returncode:
      if 'ALREADY_EXISTS' in created.stderr:
        self.owned = False
        with backend.lock:
          backend.made.remove(self.name_)
      return base.Outcome('failed', 'queued-resources create failed: ' +
                          base.failure_reason(created.stderr, created.returncode))
    while True:  # provisioning: spot capacity can take hours
      state = self.state()
      if state == 'ACTIVE':
        self.training.set()
        break
      if state in LOST_STATES:
        return base.Outcome('preempted', f'slice {state} before the run started')
      if state not in LIVE_STATES:
        return base.Outcome('failed', f'slice {self.name_} is {state or "gone"}')
      if self.stop.wait(backend.args.poll_seconds):
        return base.Outcome('failed', 'launcher stopped')
    found = code_archive.sha256(backend.archive)
    if found != backend.digest:
      with private.open_private(self.log_path) as log:
        log.write(f'code archive changed: sha256 {found[:12]}, launched {backend.digest[:12]}\n')
      return base.Outcome('failed', f'code archive {backend.archive} is not the one built at '
                          f'launch (sha256 {found[:12]}, not {backend.digest[:12]}): nothing '
                          'copied; launch again', base.SETUP_ERROR_EXIT_CODE)
    copy = self.command(backend.copy_command(self.name_, backend.archive), 'w')
    if copy is not None:
      return copy
    after = bool(self.sweep_run.after)
    trained = self.command(backend.ssh_command(self.name_, self.sweep_run), 'a', final=not after)
    if trained is not None or not after:
      return trained
    return self.command(backend.after_ssh_command(self.name_, self.sweep_run), 'a', final=True)

  def command(self, command: list[str], mode: str, final: bool = False) -> base.Outcome | None:
    """Runs one step on the slice, watching the slice; an outcome if it ended the attempt."""
    with private.open_private(self.log_path, append=mode == 'a') as log:
      log.write(f'$ {private.redact(base.quote(command))[:500]}\n')  # the install step too
      log.flush()
      process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
      lost = ''
      while process.poll() is None:
        if self.stop.wait(self.backend.args.poll_seconds):
          break
        state = self.state()
        if state != 'ACTIVE':
          lost = state or 'gone'
          break
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    code = process.returncode
    if self.stop.is_set():
      return base.Outcome('failed', 'launcher stopped')
    if not lost and code != 0:
      state = self.state()
      lost = '' if state == 'ACTIVE' else (state or 'gone')
    if lost:
      return base.Outcome('preempted', f'slice {self.name_} {lost}')
    if code == 0:
      return base.Outcome('done', exit_code=0) if final else None
    with open(self.log_path, encoding='utf-8', errors='replace') as f:
      return base.outcome_of(code, f.read())

  def state(self) -> str:
    done = subprocess.run(self.backend.describe_command(self.name_), capture_output=True,
                          text=True, check=False, start_new_session=True)
    return done.stdout.strip().upper() if done.returncode == 0 else ''

  def run(self) -> None:
    try:
      self.outcome = self.run_attempt()
    except Exception as error:  # pylint: disable=broad-exception-caught
      self.outcome = base.Outcome('failed', f'launcher error: {error}')
    finally:
      if self.owned:
        self.backend.delete(self.name_)


def _check_log_dir(path: str) -> None:
  """Raises ValueError (one line) for a --log_dir another local user could write into."""
  problem = private.own_folder_problem(path)
  if problem:
    raise ValueError(f'--log_dir {path} {problem}: another user could swap what is in it; give '
                     'a folder of your own, e.g. mkdir -m 700 ~/tpu-logs.')


def _remote_path(path: str) -> str:
  """Quotes a path for the remote shell, leaving a leading ~/ to expand there."""
  return '~/' + shlex.quote(path[2:]) if path.startswith('~/') else shlex.quote(path)


def _base36(number: int) -> str:
  digits = '0123456789abcdefghijklmnopqrstuvwxyz'
  text = ''
  while number:
    number, rest = divmod(number, 36)
    text = digits[rest] + text
  return text or '0'


def _raise_interrupt(signum, frame):  # pylint: disable=unused-argument
  raise KeyboardInterrupt
