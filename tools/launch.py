"""Launches a sweep: every run of a sweep module on a backend (local, tpu_vm, gke, slurm).

  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root runs/sweep --dry_run
  python tools/launch.py --sweep configs/sweeps/objectives.py --workdir_root runs/sweep \\
      [--backend local --parallel 2]
  python tools/launch.py --sweep S --workdir_root gs://BUCKET/sweep --backend tpu_vm \\
      --zone us-central2-b --accelerator_type v4-8 --spot --max_slices 4

A run's workdir is named from the keys that vary across the sweep (`lr=0.001_seed=1`); its full
overrides and command are kept in the workdir's launch.json. Names are deterministic, so
launching the same sweep again resumes every run where it stopped. `tools/status.py` shows
where every run stands.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
from typing import Any, Sequence

if __package__ in (None, ''):  # run as a script: python tools/launch.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import backends, cli  # pylint: disable=wrong-import-position
from tools.backends import base, private, record as record_lib  # pylint: disable=wrong-import-position
from tools.backends.base import Run, format_value, train_command  # pylint: disable=unused-import,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r'[^A-Za-z0-9._=+-]')
SHELL_FLAGS = ('install', 'gke_install', 'setup')  # shell run on the machines, as given


def load_sweep(path: str) -> list[dict[str, Any]]:
  """Calls `get_sweep()` of the sweep module at `path` (a file, or a dotted module name);
  'FILE.py:ARG' calls `get_sweep('ARG')`, as --config FILE:preset does."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  path, _, argument = path.partition('.py:') if '.py:' in path else (path, '', '')
  path = path + '.py' if argument else path
  if path.endswith('.py'):
    spec = importlib.util.spec_from_file_location('_sweep', path)
    if spec is None or spec.loader is None or not os.path.exists(path):
      raise FileNotFoundError(f'--sweep {path} does not exist.')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    module = importlib.import_module(path)
  if not callable(getattr(module, 'get_sweep', None)):
    raise ValueError(f'--sweep {path} defines no get_sweep(): add one that returns a list of '
                     'override dicts (docs/sweeps.md).')
  try:
    inspect.signature(module.get_sweep).bind(*([argument] if argument else []))
  except TypeError:
    raise ValueError(f'--sweep {path}{":" + argument if argument else ""}: its get_sweep() takes '
                     f'{"no argument; drop :" + argument if argument else "an argument; give it as " + path + ":ARG"}.'
                     ) from None
  return list(module.get_sweep(argument) if argument else module.get_sweep())


def _load_config(spec: str) -> Any:
  """The config train.py builds from `--config FILE[:PRESET]` (FILE relative to the repo)."""
  path = spec.partition(':')[0]
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise FileNotFoundError(f'{path} does not exist')
  return cli.load_config_spec(full + spec[len(path):])


def check_keys(runs: Sequence[Run]) -> None:
  """Raises ValueError (one line) for a run whose config cannot load or has no setting named
  by one of its override keys, as train.py would after its slice or job started."""
  configs: dict[str, Any] = {}
  for run in runs:
    if run.config not in configs:
      try:
        configs[run.config] = _load_config(run.config)
      except Exception as error:  # pylint: disable=broad-exception-caught
        lines = str(error).strip().splitlines()
        raise ValueError(f'Run {run.name}: config {run.config} cannot be loaded: '
                         f'{lines[0] if lines else type(error).__name__}.') from None
    config = configs[run.config]
    for key, _ in run.overrides:
      node, found = config, True
      for part in key.split('.'):
        try:
          node = node[part]
        except (KeyError, TypeError, IndexError, AttributeError):
          found = False
          break
      if not found:
        from configs import base as config_base  # pylint: disable=import-outside-toplevel

        close = difflib.get_close_matches(key, list(config_base.flatten(config)), n=1)
        hint = f'did you mean {close[0]!r}? ' if close else ''
        raise ValueError(f'Run {run.name}: {key!r} is not a setting of {run.config} ({hint}'
                         f'python train.py --config {run.config} --help lists them).')


def config_label(config: str) -> str:
  """'configs/clm.py:tiny' -> 'clm-tiny'."""
  path, _, preset = config.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return f'{stem}-{preset}' if preset else stem


def _value_text(value: Any) -> str:
  if isinstance(value, dict):  # an objective mix: {'mlm': 1.0, 'nsp': 1.0} -> mlm1.0+nsp1.0
    return '+'.join(f'{k}{format_value(v)}' for k, v in value.items())
  return format_value(value)


def _strip_common(texts: list[str], separators: str) -> list[str]:
  """Drops the parts all texts share at their start and end, cut only at a separator, so
  ['/d/wikitext-2/train.txt', '/d/wikitext-103/train.txt'] -> ['wikitext-2', 'wikitext-103']."""
  if len(set(texts)) < 2:
    return texts
  prefix = os.path.commonprefix(texts)
  cut = max((prefix.rfind(s) + 1 for s in separators), default=0)
  texts = [t[cut:] for t in texts]
  suffix = os.path.commonprefix([t[::-1] for t in texts])[::-1]
  cut = max((len(suffix) - suffix.find(s) if s in suffix else 0 for s in separators), default=0)
  stripped = [t[:len(t) - cut] for t in texts]
  return stripped if all(stripped) and len(set(stripped)) == len(set(texts)) else texts


def varying_keys(entries: Sequence[dict[str, Any]]) -> list[str]:
  """The keys whose values differ between entries (or that some entries lack), in first-seen
  order; 'config' first."""
  keys: list[str] = []
  for entry in entries:
    keys += [key for key in entry if key not in keys]
  varying = [key for key in keys
             if len({json.dumps(entry.get(key, '<unset>'), sort_keys=True, default=str)
                     for entry in entries}) > 1]
  return sorted(varying, key=lambda key: key != 'config')


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
  """'optimizer.learning_rate' -> 'learning_rate', unless two keys would share a short name."""
  leaves = [key.rsplit('.', 1)[-1] for key in keys]
  return {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves)}


def _bounded(name: str) -> str:
  name = _UNSAFE.sub('-', name)
  if len(name) > MAX_NAME_CHARS:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    name = f'{name[:MAX_NAME_CHARS - 9]}-{digest}'
  return name


def run_names(entries: Sequence[dict[str, Any]]) -> list[str]:
  """Short, filesystem-safe, deterministic names from the keys that vary across the sweep.

  The config label comes first when configs differ (or when nothing varies); then key=value
  per varying key, keys shortened to their last part and values stripped of what all values
  share (a common directory, a common '-tiny'). A run that lacks a varying key leaves it out.
  """
  keys = varying_keys(entries)
  short = _short_keys([key for key in keys if key != 'config'])
  texts: dict[str, list[str]] = {}
  for key in keys:
    values = [_value_text(config_label(str(e[key])) if key == 'config' else e[key])
              if key in e else '' for e in entries]
    present = [v for v in values if v]
    stripped = iter(_strip_common(present, '/-_.:' if key == 'config' else '/'))
    texts[key] = [next(stripped) if v else '' for v in values]
  names = []
  for index, entry in enumerate(entries):
    parts = []
    if 'config' in keys or not keys:
      parts.append(texts['config'][index] if 'config' in keys else config_label(
          str(entry['config'])))
    parts += [f'{short[key]}={texts[key][index]}' for key in keys
              if key != 'config' and key in entry]
    names.append(_bounded('_'.join(parts)))
  return names


def join(root: str, name: str) -> str:
  return f'{root.rstrip("/")}/{name}' if '://' in root else os.path.join(root, name)


def expand(sweep: Sequence[dict[str, Any]], workdir_root: str) -> list[Run]:
  """One Run per sweep entry; every entry must name its 'config' and differ from the others."""
  entries = []
  for index, entry in enumerate(sweep):
    if 'config' not in entry:
      raise ValueError(f'Sweep entry {index} {entry} has no "config" (e.g. configs/clm.py:tiny).')
    entries.append(dict(entry))
  seen: dict[str, int] = {}
  for index, entry in enumerate(entries):
    key = json.dumps(entry, sort_keys=True, default=str)
    if key in seen:
      raise ValueError(f'Sweep entries {seen[key]} and {index} are the same run {entry}.')
    seen[key] = index
  names = run_names(entries)
  for index, name in enumerate(names):  # distinct entries whose names collide after cleaning
    if names.count(name) > 1:
      digest = hashlib.sha1(json.dumps(entries[index], sort_keys=True, default=str).encode())
      names[index] = _bounded(f'{name[:MAX_NAME_CHARS - 7]}-{digest.hexdigest()[:6]}')
  for index, name in enumerate(names):  # '' is the root itself, '..' its parent
    if name in ('', '.', '..'):
      raise ValueError(f'Sweep entry {index} {entries[index]} gets the run name {name!r}, not a '
                       'folder of its own under --workdir_root: give every entry each key that '
                       f'varies ({", ".join(varying_keys(entries)) or "config"}), with a value '
                       'other than "." or "..".')
  runs = []
  for index, (entry, name) in enumerate(zip(entries, names)):
    config = str(entry.pop('config'))
    runs.append(Run(name, config, tuple(entry.items()), join(workdir_root, name), index))
  return runs


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
  if '://' not in args.workdir_root and os.path.abspath(os.getcwd()) != REPO:
    args.workdir_root = os.path.abspath(args.workdir_root)  # train.py runs in the repository
  backend = backends.get(args.backend)(args)
  for flag in SHELL_FLAGS:
    value = getattr(args, flag, '')
    if value and private.redact(value) != value:
      print(f'launch.py: warning: --{flag} holds what looks like a credential; launch.json and '
            'logs mask it, but the job itself carries it (docs/security.md).', file=sys.stderr)
  try:
    runs = expand(load_sweep(args.sweep), args.workdir_root)
    runs = [run for run in runs if args.only in run.name]
    if not runs:
      raise ValueError(f'--only {args.only!r} matches no run of {args.sweep}.')
    backend.check(runs)
    check_keys(runs)
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
