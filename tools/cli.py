"""What the absl commands (train.py, tools/evaluate.py, tools/finetune.py, tools/generate.py)
share: the start of main(), errors a user can fix as one line on stderr with an exit status,
and the parsing of a --config file and its overrides (`parse_flags`).

Light on purpose (absl only): train.py reports a broken --config file before jax is imported.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable, NamedTuple, NoReturn, Sequence

from absl import app, flags, logging


def one_line(error: BaseException) -> str:
  """The first line of an error's message, or its repr when the message is empty."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else repr(error)


def fail(command: str, message: str, code: int) -> NoReturn:
  """Prints '<command>: error: <message>' on stderr and exits with `code`."""
  print(f'{command}: error: {message}', file=sys.stderr)
  sys.exit(code)


def start(argv: Sequence[str]) -> bool:
  """Refuses positional arguments and, unless --verbosity is given, keeps absl's logging to
  warnings so the command's own lines stay readable; returns whether it quieted logging."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if flags.FLAGS['verbosity'].present:
    return False
  logging.set_verbosity(logging.WARNING)
  return True


def require_workdir(command: str, workdir: str | None, message: str) -> str:
  """`workdir`; when --workdir is missing or empty, exits with status 2 and `message`."""
  if not workdir:
    fail(command, message, 2)
  return workdir


def config_spec(argv: Sequence[str]) -> str | None:
  """The last --config value given, FILE[:PRESET] (absl's forms: --config=X, --config X,
  -config ...), or None."""
  return scan(argv, objective=False).config_spec


def load_config_spec(spec: str) -> Any:
  """What config_flags builds from FILE[:PRESET]: the file's get_config(preset); whatever the
  file raises propagates."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel

  path, _, preset = spec.partition(':')
  name = f'_config_{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]}'
  module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
  sys.modules[name] = module  # a dataclass in the file looks its module up while it is made
  try:
    module.__spec__.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()
  finally:
    sys.modules.pop(name, None)


OBJECTIVE_FLAG = '--config.objective'


def take_objective(argv: Sequence[str]) -> tuple[list[str], str | None]:
  """argv without --config.objective, and its last value (None if absent): absl would keep
  the type of the config's value (a name or a dict), while a name may replace a mix and the
  reverse. Apply it with configs.base.apply_objective after parsing."""
  line = scan(argv)
  return line.argv, line.objective


class CommandLine(NamedTuple):
  """What a command reads from its argv before absl parses it (`scan`)."""
  argv: list[str]  # argv without --config.objective (when taken out)
  objective: str | None  # the last --config.objective value, or None
  config_spec: str | None  # the last --config value, FILE[:PRESET], or None
  wants_help: bool  # --help or its kin among the arguments


def scan(argv: Sequence[str], objective: bool = True) -> CommandLine:
  """One pass over argv: takes --config.objective out (`objective`; see take_objective) and
  finds the last --config value (absl's forms: --config=X, --config X, -config ...; none after
  `--`) and any help flag among the remaining arguments."""
  kept, override, spec, wants_help = [argv[0]], None, None, False
  value_next = ended = False  # the next kept argument is a --config value; `--` seen
  index = 1
  while index < len(argv):
    arg = argv[index]
    index += 1
    if objective and arg == OBJECTIVE_FLAG and index < len(argv):
      override = argv[index]
      index += 1
      continue
    if objective and arg.startswith(OBJECTIVE_FLAG + '='):
      override = arg.split('=', 1)[1]
      continue
    kept.append(arg)
    wants_help = wants_help or arg in HELP_FLAGS
    if value_next:
      spec, value_next = arg, False
    if ended or arg == '--':
      ended = True
      continue
    for name in ('--config', '-config'):
      if arg == name:
        value_next = True
      elif arg.startswith(name + '='):
        spec = arg[len(name) + 1:]
  return CommandLine(kept, override, spec, wants_help)


# --- a command's --config flag: every problem with it is one line (train.py, tools/finetune.py)

HELP_FLAGS = ('--help', '-help', '-h', '--helpshort', '--helpfull')


def config_file_problem(path: str) -> str | None:
  """Why the --config file cannot load (missing, unreadable, not Python), naming file and line."""
  try:
    with open(path, 'rb') as f:
      source = f.read()
  except OSError as error:
    return (f'--config file {path} cannot be read: {error.strerror}; give a config file such as '
            'configs/clm.py:tiny.')
  try:
    compile(source, path, 'exec')
  except SyntaxError as error:
    return f'{path}:{error.lineno}: {type(error).__name__}: {error.msg} (the --config file).'
  except ValueError as error:  # e.g. null bytes
    return f'{path}: {error} (the --config file).'
  return None


def config_frame_error(error: BaseException, path: str | None) -> str | None:
  """'file:line: Error: message' for an exception raised while running the --config file."""
  if path is None:
    return None
  target = os.path.abspath(path)
  seen = error
  while seen is not None:
    frames = [f for f in traceback.extract_tb(seen.__traceback__)
              if os.path.abspath(f.filename) == target]
    if frames:
      lines = str(seen).strip().splitlines()
      return (f'{path}:{frames[-1].lineno}: {type(seen).__name__}: '
              f'{lines[0] if lines else ""} (the --config file).')
    seen = seen.__cause__ or seen.__context__
  return None


def parse_flags(command: str, argv: list[str], *,
                problem: Callable[[list[str]], str | None],
                config_error: Callable[[BaseException], str | None],
                show_help: Callable[[list[str]], None] | None = None,
                wants_help: bool | None = None) -> list[str]:
  """absl's flag parsing for a command with a --config file, in one pass over argv:

  `problem(argv)`: the one line that a bad --config file, preset or override gives before
  parsing (exit 2); `show_help(argv)`, when given, prints the help for --help and its
  kin (exit 0), `wants_help` saying whether one is given where the caller has scanned argv
  already; `config_error(error)`: the one line for an error absl raised while loading the
  --config file or applying an override (exit 2), or None. Any other flag error is one line
  with exit 1; anything else propagates.
  """
  message = problem(argv)
  if message:
    fail(command, message, 2)
  if wants_help is None:
    wants_help = any(arg in HELP_FLAGS for arg in argv[1:])
  if show_help is not None and wants_help:
    show_help(argv)
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-exception-caught
    message = config_error(error)
    if message:
      fail(command, message, 2)
    if not isinstance(error, flags.Error):
      raise
    fail(command, f'{one_line(error)} (pass --helpfull to see the flags).', 1)
