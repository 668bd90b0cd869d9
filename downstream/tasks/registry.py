"""Task name -> factory; every module in downstream/tasks/ registers its tasks on import.

A factory takes the task's settings (`config.task`, minus `name`) and returns a `base.Task`.
Settings every task accepts are in `COMMON`; a task adds its own, its section in
configs/task_sections.py, which holds them apart from the tasks so that configs/finetune.py
reads them without importing downstream.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from configs.task_sections import COMMON, SECTIONS
from data import discovery
from downstream.tasks.base import Task

_FACTORIES: dict[str, Callable[[dict[str, Any]], Task]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Decorator: `@register('stdlib_package', defaults=SECTIONS['stdlib_package'])
  def make(settings) -> Task`.

  A task of downstream/tasks/ takes its defaults from its section in configs/task_sections.py;
  one registered elsewhere (a test's) gives them here.
  """

  def wrap(factory):
    declared = discovery.declared_defaults('Task', name, factory, defaults, SECTIONS,
                                           'configs/task_sections.py', 'downstream.tasks',
                                           _FACTORIES)
    _FACTORIES[name] = factory
    _DEFAULTS[name] = {**COMMON, **declared}
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
  if name in SECTIONS and name not in _FACTORIES:
    raise ValueError(f'Task {name!r} has a section in configs/task_sections.py but no module '
                     'under downstream/tasks/ registers it.')
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
