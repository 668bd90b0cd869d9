"""Launches a sweep: every run of a sweep module on a backend (local, tpu_vm, gke, slurm).

  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root runs/sweep --dry_run
  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root runs/sweep \\
      [--backend local --parallel 2]
  python tools/launch.py --sweep S --workdir_root gs://BUCKET/sweep --backend tpu_vm \\
      --zone us-central2-b --accelerator_type v4-8 --spot --max_slices 4

A run's workdir is named from the keys that vary across the sweep (`lr=0.001_seed=1`); its full
overrides and command are kept in the workdir's launch.json. Names are deterministic, so
launching the same sweep again resumes every run where it stopped. `tools/status.py` shows
where every run stands. The library is launching/ (sweep.py, backends/).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

if __package__ in (None, ''):  # run as a script: python tools/launch.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launching import backends, base, private, record as record_lib  # pylint: disable=wrong-import-position
from launching import sweep  # pylint: disable=wrong-import-position
from launching.base import Run  # pylint: disable=wrong-import-position

SHELL_FLAGS = ('install', 'gke_install', 'setup')  # shell run on the machines, as given


class _Parser(argparse.ArgumentParser):
  """Errors are one line (the usage lists every backend's flags: see --help instead)."""

  def error(self, message: str):
    self.exit(2, f'{self.prog}: error: {message} (see --help).\n')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = _Parser(
      prog='launch.py', description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='Backends: ' + ', '.join(backends.names()) + '. See docs/sweeps.md.')
  parser.add_argument('--sweep', required=True, help='Sweep file, e.g. configs/sweeps/objectives.py.')
  parser.add_argument('--workdir_root', required=True, help='Parent of the runs\' workdirs.')
  parser.add_argument('--backend', default='local', help=f'One of {", ".join(backends.names())} '
                      '(default local).')
  parser.add_argument('--dry_run', action='store_true',
                      help='Print exactly what would be run or submitted, and do nothing.')
  parser.add_argument('--only', default='',
                      help='Launch only the runs whose name contains this text.')
  parser.add_argument('--data_dir', default='', help='Sets config.data.data_dir, e.g. gs://BUCKET/tfds.')
  parser.add_argument('--max_retries', type=int, default=3,
                      help='Times a preempted or failed run is started again (default 3).')
  parser.add_argument('--keep_going', action='store_true',
                      help='Local: start the other runs after one failed.')
  parser.add_argument('--mode', choices=('dry', 'local'), help=argparse.SUPPRESS)  # older name
  owners: dict[str, str] = {}  # flag dest -> the backend that reads it
  for name in backends.names():
    known = {action.dest for action in parser._actions}  # pylint: disable=protected-access
    backends.get(name).add_flags(parser)
    owners.update({action.dest: name for action in parser._actions  # pylint: disable=protected-access
                   if action.dest not in known})
  args = parser.parse_args(argv)
  if args.mode:
    args.backend, args.dry_run = 'local', args.dry_run or args.mode == 'dry'
  try:
    args.backend = backends.get(args.backend).name
  except ValueError as error:
    parser.error(str(error))
  for dest, owner in owners.items():
    if owner != args.backend and getattr(args, dest) != parser.get_default(dest):
      parser.error(f'--{dest} is a flag of --backend {owner}, not of --backend {args.backend}.')
  if args.max_retries < 0:
    parser.error(f'--max_retries {args.max_retries}: give 0 or more.')
  return args


def _records(backend: base.Backend, runs: Sequence[Run]) -> dict[str, record_lib.RunRecord]:
  """Writes each run's launch.json (state queued, full overrides, and the command with
  credentials masked: whoever reads the workdir reads it)."""
  def masked(command: list[str] | str) -> list[str] | str:
    return (private.redact(command) if isinstance(command, str)
            else [private.redact(word) for word in command])

  return {run.name: record_lib.RunRecord.start(
      run.workdir, name=run.name, config=run.config, overrides=dict(run.overrides),
      command=masked(backend.record_command(run)), backend=backend.name) for run in runs}


def main(argv: Sequence[str] | None = None) -> int:
  """Prints or launches the sweep's runs; returns the exit status."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if '://' not in args.workdir_root and os.path.abspath(os.getcwd()) != sweep.REPO:
    args.workdir_root = os.path.abspath(args.workdir_root)  # train.py runs in the repository
  backend = backends.get(args.backend)(args)
  for flag in SHELL_FLAGS:
    value = getattr(args, flag, '')
    if value and private.redact(value) != value:
      print(f'launch.py: warning: --{flag} holds what looks like a credential; launch.json and '
            'logs mask it, but the job itself carries it (docs/security.md).', file=sys.stderr)
  try:
    runs = sweep.expand(sweep.load_sweep(args.sweep), args.workdir_root)
    runs = [run for run in runs if args.only in run.name]
    if not runs:
      raise ValueError(f'--only {args.only!r} matches no run of {args.sweep}.')
    backend.check(runs)
    sweep.check_keys(runs)
    if not args.dry_run:
      for run in runs:
        problem = record_lib.mismatch(run.workdir, run.config, dict(run.overrides))
        if problem:
          raise ValueError(problem)
  except (ValueError, FileNotFoundError) as error:
    print(f'launch.py: error: {error}', file=sys.stderr)
    return 2
  if args.dry_run:
    backend.dry_run(runs)
    return 0
  try:
    records = _records(backend, runs)
  except (OSError, ImportError) as error:
    print(f'launch.py: error: cannot write launch.json under {args.workdir_root}: {error} '
          '(gs:// needs gcsfs: pip install gcsfs).', file=sys.stderr)
    return 2
  return backend.launch(runs, records)


if __name__ == '__main__':
  sys.exit(main())
