"""Expands a sweep into train.py runs and prints them, runs them here, or runs them on a TPU VM.

  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root runs/sweep
  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root runs/sweep --mode local
  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root gs://BUCKET/sweep \\
      --mode tpu --tpu NAME --zone ZONE --data_dir gs://BUCKET/tfds [--dry_run]

Every run gets its own workdir under --workdir_root, named from its overrides, so launching
the same sweep again resumes each run where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME_CHARS = 120
DEFAULT_TPU_REPO_DIR = '~/pretraining-objectives'


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep."""

  name: str
  config: str  # config file and preset, e.g. configs/clm.py:tiny
  overrides: tuple[tuple[str, Any], ...]
  workdir: str


def load_sweep(path: str) -> list[dict[str, Any]]:
  """Calls `get_sweep()` of the sweep module at `path` (a file, or a dotted module name)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  if path.endswith('.py'):
    spec = importlib.util.spec_from_file_location('_sweep', path)
    if spec is None or spec.loader is None or not os.path.exists(path):
      raise FileNotFoundError(f'--sweep {path} does not exist.')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    module = importlib.import_module(path)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'--sweep {path} defines no get_sweep().')
  return list(module.get_sweep())


def format_value(value: Any) -> str:
  """A value as train.py's --config.key= flag reads it (floats in shortest form)."""
  if isinstance(value, float):
    return repr(value)
  return str(value)


def config_label(config: str) -> str:
  """'configs/clm.py:tiny' -> 'clm-tiny'."""
  path, _, preset = config.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return f'{stem}-{preset}' if preset else stem


def run_name(config: str, overrides: Sequence[tuple[str, Any]]) -> str:
  """A short, filesystem-safe, deterministic name: config label then key=value parts."""
  parts = [config_label(config)] + [f'{key}={format_value(value)}' for key, value in overrides]
  name = re.sub(r'[^A-Za-z0-9._=+-]', '-', '_'.join(parts))
  if len(name) > MAX_NAME_CHARS:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    name = f'{name[:MAX_NAME_CHARS - 9]}-{digest}'
  return name


def join(root: str, name: str) -> str:
  return f'{root.rstrip("/")}/{name}' if '://' in root else os.path.join(root, name)


def expand(sweep: Sequence[dict[str, Any]], workdir_root: str) -> list[Run]:
  """One Run per sweep entry; every entry must name its 'config' and names must be unique."""
  runs, seen = [], {}
  for index, entry in enumerate(sweep):
    entry = dict(entry)
    if 'config' not in entry:
      raise ValueError(f'Sweep entry {index} {entry} has no "config" (e.g. configs/clm.py:tiny).')
    config = str(entry.pop('config'))
    overrides = tuple(entry.items())
    name = run_name(config, overrides)
    if name in seen:
      raise ValueError(f'Sweep entries {seen[name]} and {index} are the same run {name!r}.')
    seen[name] = index
    runs.append(Run(name, config, overrides, join(workdir_root, name)))
  return runs


def train_command(run: Run, data_dir: str = '', python: str = 'python') -> list[str]:
  """The train.py command line of one run."""
  command = [python, 'train.py', '--config', run.config, '--workdir', run.workdir]
  command += [f'--config.{key}={format_value(value)}' for key, value in run.overrides]
  if data_dir:
    command.append(f'--config.data.data_dir={data_dir}')
  return command


def _remote_path(path: str) -> str:
  """Quotes a path for the remote shell, leaving a leading ~/ to expand there."""
  if path.startswith('~/'):
    return '~/' + shlex.quote(path[2:])
  return shlex.quote(path)


def tpu_command(run: Run, tpu: str, zone: str, repo_dir: str = DEFAULT_TPU_REPO_DIR,
                data_dir: str = '') -> list[str]:
  """gcloud ssh to every worker of a TPU VM, running the same train.py command on each."""
  remote = f'cd {_remote_path(repo_dir)} && ' + shlex.join(
      train_command(run, data_dir, python='python3'))
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu, f'--zone={zone}', '--worker=all',
          f'--command={remote}']


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sweep', required=True, help='Sweep file, e.g. configs/sweeps/objectives.py.')
  parser.add_argument('--workdir_root', required=True, help='Parent of the runs\' workdirs.')
  parser.add_argument('--mode', choices=('dry', 'local', 'tpu'), default='dry',
                      help='dry: print train.py commands; local: run them here one after another; '
                      'tpu: run them on a TPU VM over gcloud.')
  parser.add_argument('--dry_run', action='store_true',
                      help='With --mode local or tpu: print the commands instead of running them.')
  parser.add_argument('--tpu', default='', help='TPU VM name (--mode tpu).')
  parser.add_argument('--zone', default='', help='TPU VM zone (--mode tpu).')
  parser.add_argument('--repo_dir', default=DEFAULT_TPU_REPO_DIR,
                      help='Checkout of this repository on the TPU VM.')
  parser.add_argument('--data_dir', default='', help='Sets config.data.data_dir, e.g. gs://BUCKET/tfds.')
  parser.add_argument('--keep_going', action='store_true', help='Continue after a failed run.')
  args = parser.parse_args(argv)
  if args.mode == 'tpu':
    if not args.tpu or not args.zone:
      parser.error('--mode tpu needs --tpu NAME and --zone ZONE.')
    if not args.workdir_root.startswith('gs://'):
      parser.error('--mode tpu needs a gs:// --workdir_root: every worker writes to it.')
  return args


def commands(args: argparse.Namespace, runs: Sequence[Run]) -> list[list[str]]:
  if args.mode == 'tpu':
    return [tpu_command(run, args.tpu, args.zone, args.repo_dir, args.data_dir) for run in runs]
  python = sys.executable if args.mode == 'local' and not args.dry_run else 'python'
  return [train_command(run, args.data_dir, python=python) for run in runs]


def main(argv: Sequence[str] | None = None,
         execute: Callable[..., Any] = subprocess.run) -> int:
  """Prints or runs the sweep's commands; returns the exit status."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    runs = expand(load_sweep(args.sweep), args.workdir_root)
  except (ValueError, FileNotFoundError) as error:
    print(f'launch.py: error: {error}', file=sys.stderr)
    return 2
  status = 0
  for index, (run, command) in enumerate(zip(runs, commands(args, runs))):
    print(shlex.join(command), flush=True)
    if args.mode == 'dry' or args.dry_run:
      continue
    print(f'[{index + 1}/{len(runs)}] {run.name}', file=sys.stderr, flush=True)
    done = execute(command, cwd=REPO, check=False)
    if done.returncode:
      print(f'launch.py: {run.name} exited with {done.returncode}; its workdir {run.workdir} '
            'resumes when launched again.', file=sys.stderr)
      status = done.returncode
      if not args.keep_going:
        return status
  return status


if __name__ == '__main__':
  sys.exit(main())
