"""A sweep's runs: the entries of a sweep module, their names and workdirs, and the check that
every override names a setting of its config, before any run starts.

A run's workdir is named from the keys that vary across the sweep (`lr=0.001_seed=1`);
names are deterministic, so launching the same sweep again resumes every run where it
stopped.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
from typing import Any, Sequence

from launching.base import Run, format_value
from tools import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_NAME_CHARS = 120
# The entry key of a command the job runs after train.py succeeds (not a config override).
AFTER_KEY = 'after'
AFTER_SCRIPTS = ('tools/compare.py',)  # what a job may run after train.py
_UNSAFE = re.compile(r'[^A-Za-z0-9._=+-]')


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


def _after(index: int, value: Any) -> tuple[str, ...]:
  """An entry's "after" command as argument strings; one of AFTER_SCRIPTS, else a one-line
  error (the values reach the script as arguments, never through a shell)."""
  if (not isinstance(value, (list, tuple)) or not value
      or not all(isinstance(part, str) and '\0' not in part for part in value)
      or value[0] not in AFTER_SCRIPTS):
    raise ValueError(f'Sweep entry {index}: "{AFTER_KEY}" must be a list of strings starting with '
                     f'one of {", ".join(AFTER_SCRIPTS)} (the command run after train.py), '
                     'without NUL characters.')
  return tuple(value)


def expand(sweep: Sequence[dict[str, Any]], workdir_root: str) -> list[Run]:
  """One Run per sweep entry; every entry must name its 'config' and differ from the others.
  An entry's "after" command is run by its job once train.py succeeds; it names no setting
  and takes no part in the run's name."""
  entries, afters = [], []
  for index, entry in enumerate(sweep):
    if 'config' not in entry:
      raise ValueError(f'Sweep entry {index} {entry} has no "config" (e.g. configs/clm.py:tiny).')
    entry = dict(entry)
    afters.append(_after(index, entry.pop(AFTER_KEY)) if AFTER_KEY in entry else ())
    entries.append(entry)
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
    runs.append(Run(name, config, tuple(entry.items()), join(workdir_root, name), index,
                    afters[index]))
  return runs
