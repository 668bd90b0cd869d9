"""Pretrain the shared Transformer with any registered objective.

  python train.py --config configs/clm.py[:preset] --workdir runs/clm [--config.key=value ...]

Running it again on the same workdir resumes from the latest checkpoint. Errors a user can
fix (bad config or data, a full disk, non-finite losses under the stop policy) end the command
with one line on stderr; the library modules load lazily, so a broken --config file is reported
before jax is imported.
"""

# pylint: disable=import-outside-toplevel

from __future__ import annotations

import os
import re
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from tools import cli

_COMMAND = 'train.py'


class SetupError(Exception):
  """Bad input found before compilation; printed as one line."""


def setup(config, workdir: str):
  """Validates the config and assembles the run (training/experiment.py); compiles nothing."""
  from training import experiment

  return experiment.build(config, workdir)


def train(exp) -> dict[str, float]:
  """Trains an assembled run to its step count or compute budget (training/loop.py)."""
  from training import loop

  return loop.train(exp)


def run(config, workdir: str, objective: Any = None) -> dict[str, float]:
  """Validates, assembles and trains under the workdir lock; the library entry point behind
  the command line. `objective` replaces config.objective (--config.objective). Bad input
  raises `SetupError` with one line, before compilation and before the workdir is made."""
  import contextlib

  import jax
  from etils import epath

  from training import checks, distributed, experiment, loop, workdir_lock
  from training.metrics import WriteError

  with contextlib.ExitStack() as stack:
    try:
      checks.validate(config, objective)
      distributed.maybe_initialize(config.distributed)  # before asking for the process index
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      stack.enter_context(workdir_lock.workdir_lock(workdir, enabled=jax.process_index() == 0))
    except (ValueError, OSError, KeyError, workdir_lock.WorkdirLocked) as error:
      raise SetupError(cli.one_line(error)) from error  # OSError: e.g. an unwritable workdir
    try:
      try:
        exp = experiment.assemble(config, workdir)
      except (ValueError, OSError, KeyError) as error:
        raise SetupError(cli.one_line(error)) from error
      try:
        return train(exp)
      except loop.RestoreError as error:  # no checkpoint fits this config's model
        raise SetupError(cli.one_line(error)) from error
    except (WriteError, FloatingPointError) as error:
      # A run that failed while training says why in status.json (the lock is ours). A start
      # that failed (SetupError) changes nothing in the workdir.
      _record_failure(workdir, cli.one_line(error))
      raise


def dry_run(config, workdir: str, objective: Any = None) -> dict[str, Any]:
  """Validates, builds the data and the model's shapes, prints parameters and FLOPs; trains
  nothing and writes nothing but the tokenizer."""
  import jax
  import numpy as np

  from training import experiment, loop

  try:
    exp = experiment.build(config, workdir, objective=objective)
    steps = loop.planned_steps(exp)
  except (ValueError, OSError, KeyError) as error:
    raise SetupError(cli.one_line(error)) from error
  shapes = jax.eval_shape(exp.init_params_fn(), jax.random.key(0))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  summary = {'objective': loop.describe_objective(config.objective), 'data_format':
             exp.data_format, 'params': params, 'flops_per_step': exp.flops_per_step,
             'steps': steps, 'total_flops': steps * exp.flops_per_step,
             'vocab_size': exp.tokenizer.size, 'mesh': dict(exp.mesh.shape)}
  print(' | '.join(f'{key} {value}' for key, value in summary.items()))
  return summary


_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/clm.py:tiny.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False,
                                  'Print the resolved config (after overrides) and exit.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Validate, build the data and the tokenizer, print '
                             'parameters and FLOPs, and exit without training.')


def _config_help(spec: str | None) -> None:
  """Prints the usage, the flags and the settings of the --config file given, FILE[:PRESET]
  (or the causal-LM default) with their values."""
  from configs import base

  print(__doc__.strip() + '\n')
  print(flags.FLAGS.main_module_help())
  spec = spec or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'clm.py')
  try:
    config = cli.load_config_spec(spec)
  except Exception as error:  # pylint: disable=broad-exception-caught
    print(f'\n(cannot list the settings of {spec}: {cli.one_line(error)})')
    return
  lines = [f'Settings of {spec} (override any with --config.KEY=VALUE):']
  lines += [f'  --config.{key}={value!r}' for key, value in base.flatten(config).items()]
  print('\n' + '\n'.join(lines))


def _config_error(error: BaseException, path: str | None) -> str | None:
  """The one line for an error absl raised loading the --config file (file and line) or
  applying a --config.* override that names no setting."""
  located = cli.config_frame_error(error, path)
  if located:
    return located
  if isinstance(error, (AttributeError, KeyError)):  # --config.key=value for no such key
    name = re.search(r"'([\w.-]+)", str(error))
    hint = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', str(error))
    return ('A --config.* override names no setting of the config'
            f'{f" ({name.group(1)!r})" if name else ""}{f": {hint.group()}" if hint else "."}')
  return None


_objective_override: list[str] = []  # a --config.objective value, applied after parsing


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a broken --config file is one line naming file and line.
  --config.objective is taken out first: absl would keep the type of the config's value."""
  line = cli.scan(argv)  # the one pass over argv before absl's
  if line.objective is not None:
    _objective_override.append(line.objective)
  path = line.config_spec.split(':', 1)[0] if line.config_spec is not None else None
  return cli.parse_flags(
      _COMMAND, line.argv, problem=lambda _: cli.config_file_problem(path) if path else None,
      config_error=lambda error: _config_error(error, path),
      show_help=lambda _: _config_help(line.config_spec), wants_help=line.wants_help)


def _quiet_platform_messages() -> None:
  """An offline CPU run should not print jax's search for TPU or GPU libraries."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import logging as std_logging
  for name in ('jax._src.xla_bridge', 'absl'):
    std_logging.getLogger(name).setLevel(std_logging.ERROR)


def _record_failure(workdir: str, reason: str) -> None:
  """Leaves the one-line reason in workdir/status.json when the workdir exists; a status that
  cannot be written (the disk that failed the run) is not a second error."""
  try:
    from training import loop
    loop.write_status(workdir, 'failed', reason=reason)
  except Exception:  # pylint: disable=broad-exception-caught
    pass


def main(argv):
  if cli.start(argv):
    _quiet_platform_messages()
  config = _CONFIG.value
  objective = _objective_override[-1] if _objective_override else None
  if _PRINT_CONFIG.value:
    from configs import base
    try:
      base.apply_objective(config, objective)
    except ValueError as error:
      cli.fail(_COMMAND, cli.one_line(error), 2)
    print(config.to_json(indent=2))
    return
  cli.require_workdir(_COMMAND, _WORKDIR.value, '--workdir is required (e.g. --workdir runs/clm).')
  from training.metrics import WriteError

  try:
    if _DRY_RUN.value:
      dry_run(config, _WORKDIR.value, objective)
    else:
      run(config, _WORKDIR.value, objective)
  except SetupError as error:
    cli.fail(_COMMAND, str(error), 2)
  except (WriteError, FloatingPointError) as error:
    cli.fail(_COMMAND, str(error), 1)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=_parse_flags)
