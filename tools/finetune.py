"""Evaluate a pretraining run downstream: fine-tune a task head (or prompt, or instruction-tune)
from one of its checkpoints and write mean ± std scores over seeds, with each seed's
per-example test scores, to <workdir>/downstream/<task>/<strategy>/step_<N>.json and
results.json beside it (schema: docs/downstream.md). The last line prints the selected
setting's dev and test scores; --config.random_init=True fine-tunes the run's architecture
from a random initialisation instead (the no-pretraining control, step 0).

  python tools/finetune.py --config configs/finetune.py:stdlib_package --workdir runs/clm \\
      --config.strategy=lora --config.step=300
  python tools/finetune.py --config configs/finetune.py:stdlib_package --workdir runs/clm \\
      --config.mode=prompt --config.prompting.shots='(0,4)'

A --config file, preset or --config.* override that names nothing, bad settings, a missing
or malformed task file, or a checkpoint that does not fit the task's tokenizer or model end the
command with one line on stderr, before anything compiles (docs/downstream.md lists the checks).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from tools import cli  # pylint: disable=wrong-import-position

_COMMAND = 'finetune.py'

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and task preset, e.g. configs/finetune.py:stdlib_package.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The pretraining run\'s workdir.')


def _load_config(spec: str) -> Any:
  """The config that `spec` (file[:preset]) builds; ValueError with one line when it cannot."""
  path = spec.partition(':')[0]
  if not os.path.isfile(path):
    raise ValueError(f'--config file {path} does not exist: give e.g. '
                     'configs/finetune.py:stdlib_package (the preset is the task).')
  try:
    return cli.load_config_spec(spec)
  except ValueError as error:
    raise ValueError(cli.one_line(error)) from error
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise ValueError(f'{spec}: {type(error).__name__}: {cli.one_line(error)} (the --config '
                     'file).') from error


def _unknown_override(config: Any, dotted: str) -> str | None:
  """Why --config.<dotted> names no setting of `config` (None when it does)."""
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel

  node, parts = config, dotted.split('.')
  for depth, part in enumerate(parts):
    if isinstance(node, ConfigDict) and part in node:
      node = node[part]
      continue
    section = '.'.join(['config', *parts[:depth]])
    if not isinstance(node, ConfigDict):
      return f'--config.{dotted} names no setting: {section} is a value, not a section.'
    close = difflib.get_close_matches(part, sorted(node), n=1)
    hint = f' (did you mean {section}.{close[0]}?)' if close else ''
    if section == 'config.model':
      return (f'--config.model.{part} names no setting{hint}: config.model takes only '
              f"{sorted(node)}; the rest of the model is the checkpoint's (its config.json).")
    if section == 'config.task':
      return (f'--config.task.{part} is not a setting of task {config.task.name!r}{hint}: it '
              f'takes {sorted(node)}.')
    return f'--config.{dotted} names no setting{hint}: {section} has {sorted(node)}.'
  return None


def _config_problem(argv: list[str]) -> str | None:
  """A one-line reason the --config file, its preset or a --config.* override cannot work."""
  spec = cli.config_spec(argv)
  if spec is None:
    return None
  try:
    config = _load_config(spec)
  except ValueError as error:
    return str(error)
  for arg in argv[1:]:
    if arg == '--':
      break
    match = re.match(r'--?config\.([^=]+)', arg)
    problem = match and _unknown_override(config, match.group(1))
    if problem:
      return problem
  return None


def _config_error(error: BaseException) -> str | None:
  """The config file's own error, under absl's and ml_collections' wrappers, as one line; None
  for any other flag error."""
  if isinstance(error, flags.Error) and 'parsing config file' not in str(error):
    return None
  if not isinstance(error, (flags.Error, ValueError, AttributeError, KeyError)):
    return None
  root = error
  while root.__cause__ or root.__context__:
    root = root.__cause__ or root.__context__
  return cli.one_line(root)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a bad --config file, preset or override is one line."""
  return cli.parse_flags(_COMMAND, argv, problem=_config_problem, config_error=_config_error)


def main(argv):
  cli.start(argv)
  cli.require_workdir(
      _COMMAND, _WORKDIR.value,
      '--workdir is required: the pretraining run to evaluate (e.g. --workdir runs/clm).')
  from downstream import runner  # pylint: disable=import-outside-toplevel

  try:
    runner.run(_CONFIG.value, _WORKDIR.value, log=lambda line: print(line, flush=True))
  except (ValueError, OSError, KeyError) as error:
    cli.fail(_COMMAND, cli.one_line(error), 2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=_parse_flags)
