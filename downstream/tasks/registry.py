"""Task name -> factory; every module in downstream/tasks/ registers its tasks on import.

A factory takes the task's settings (`config.task`, minus `name`) and returns a `base.Task`.
Settings every task accepts are in `COMMON`; a source adds its own with `defaults`.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from data import discovery
from downstream.tasks.base import Task

COMMON = dict(
    template='',  # prompting template with {text} (and {text_pair}); '' = the task's default
    label_words='',  # comma-separated, one per label; '' = the task's default
    max_train_examples=0,  # 0 = all
    max_eval_examples=0,  # caps validation and test; 0 = all
)

_FACTORIES: dict[str, Callable[[dict[str, Any]], Task]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Decorator: `@register('stdlib_package', defaults={...}) def make(settings) -> Task`."""

  def wrap(factory):
    if name in _FACTORIES and _FACTORIES[name] is not factory:
      raise ValueError(f'Task {name!r} is registered twice.')
    _FACTORIES[name] = factory
    _DEFAULTS[name] = {**COMMON, **dict(defaults or {})}
    return factory

  return wrap


def _import_all() -> None:
  discovery.import_modules('downstream.tasks', skip=('base', 'registry'))


def names() -> list[str]:
  _import_all()
  return sorted(_FACTORIES)


def defaults(name: str) -> dict[str, Any]:
  """Every setting task `name` accepts, with its default."""
  _check_name(name)
  return dict(_DEFAULTS[name])


def _check_name(name: str) -> None:
  _import_all()
  if name not in _FACTORIES:
    close = difflib.get_close_matches(name, sorted(_FACTORIES), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(f'Unknown task config.task.name={name!r}{hint}: choose from {names()} or '
                     'add a file under downstream/tasks/ that registers it.')


def build(task_config: Mapping[str, Any]) -> Task:
  """The task named by `config.task.name`, its other keys checked against the known settings."""
  settings = dict(task_config)
  name = settings.pop('name', '')
  _check_name(name)
  known = _DEFAULTS[name]
  for key in settings:
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), n=1)
      hint = f' (did you mean config.task.{close[0]}?)' if close else ''
      raise ValueError(f'Unknown setting config.task.{key} for task {name!r}{hint}: it takes '
                       f'{sorted(known)}.')
  return _FACTORIES[name]({**known, **settings})
