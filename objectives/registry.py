"""Name -> objective factory; every module in objectives/ registers itself on import.

A factory takes the objective's settings (`config.<name>`, possibly empty), the
vocabulary and the sequence length, validates them (one-line errors, before any
compilation) and returns an objective.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Mapping

_FACTORIES: dict[str, Callable[..., Any]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Decorator: `@register('mlm', defaults={...}) def make(settings, *, vocab, seq_len)`.

  `defaults` become the config section `config.<name>`, so every setting can be
  overridden from the command line (`--config.mlm.mask_rate=0.2`).
  """

  def wrap(factory):
    if name in _FACTORIES and _FACTORIES[name] is not factory:
      raise ValueError(f'Objective {name!r} is registered twice.')
    _FACTORIES[name] = factory
    _DEFAULTS[name] = dict(defaults or {})
    return factory

  return wrap


def defaults(name: str) -> dict[str, Any]:
  """The default settings of objective `name` (its config section)."""
  get_factory(name)
  return dict(_DEFAULTS[name])


def _import_all() -> None:
  import objectives  # pylint: disable=import-outside-toplevel

  for module in pkgutil.iter_modules(objectives.__path__):
    if module.name not in ('base', 'registry'):
      importlib.import_module(f'objectives.{module.name}')


def names() -> list[str]:
  _import_all()
  return sorted(_FACTORIES)


def get_factory(name: str) -> Callable[..., Any]:
  _import_all()
  if name not in _FACTORIES:
    raise ValueError(f'Unknown objective {name!r} in config.objective: choose from {names()} '
                     'or add a file under objectives/ that registers it.')
  return _FACTORIES[name]


def build(objective: str | Mapping[str, float], settings_of: Callable[[str], Any], *, vocab,
          seq_len: int):
  """Builds the (weighted) objective named by `config.objective`.

  `objective` is a name or a mapping name -> weight; `settings_of(name)` returns that
  objective's settings (`config.<name>`).
  """
  from objectives.base import WeightedObjectives  # pylint: disable=import-outside-toplevel

  weights = {objective: 1.0} if isinstance(objective, str) else dict(objective)
  if not weights:
    raise ValueError('config.objective is empty: name an objective, e.g. "clm".')
  parts = []
  for name, weight in weights.items():
    if not isinstance(weight, (int, float)) or weight < 0:
      raise ValueError(f'config.objective.{name} must be a non-negative weight, got {weight!r}.')
    parts.append((name, float(weight), get_factory(name)(settings_of(name), vocab=vocab,
                                                         seq_len=seq_len)))
  return WeightedObjectives(tuple(parts))
