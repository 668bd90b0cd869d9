"""Name -> objective factory; every module in objectives/ registers itself on import.

A factory takes the objective's settings (`config.<name>`, possibly empty), the
vocabulary and the sequence length, validates them (one-line errors, before any
compilation) and returns an objective.

Config files need only the names and default settings, which objectives/sections.py holds
apart from the objectives (they import jax), so a config loads in milliseconds; the modules
are imported (data/discovery.py) only to build an objective.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from data import discovery
from objectives.sections import SECTIONS

_FACTORIES: dict[str, Callable[..., Any]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Decorator: `@register('mlm', defaults=SECTIONS['mlm']) def make(settings, *, vocab, seq_len)`.

  An objective of objectives/ takes its defaults from its section in objectives/sections.py,
  which becomes `config.<name>`, so every setting can be overridden from the command line
  (`--config.mlm.mask_rate=0.2`); one registered elsewhere (a test's) gives them here.
  """

  def wrap(factory):
    _DEFAULTS[name] = discovery.declared_defaults('Objective', name, factory, defaults, SECTIONS,
                                                  'objectives/sections.py', 'objectives',
                                                  _FACTORIES)
    _FACTORIES[name] = factory
    return factory

  return wrap


def defaults(name: str) -> dict[str, Any]:
  """The default settings of objective `name` (its config section), read without jax."""
  if name in _DEFAULTS:
    return dict(_DEFAULTS[name])
  if name in SECTIONS:
    return dict(SECTIONS[name])
  get_factory(name)  # unknown here: an error listing the known objectives
  return dict(_DEFAULTS[name])


def objective_names(objective: Any) -> list[str]:
  """The names `config.objective` lists: a name, or the keys of a mapping name -> weight."""
  if isinstance(objective, str):
    return [objective]
  if hasattr(objective, 'keys'):  # a dict (from config.json) or a ConfigDict
    return list(objective.keys())
  raise ValueError(f'config.objective must be a name or a dict name -> weight, got {objective!r}.')


def declared_names() -> list[str]:
  """The objectives with a config section, and any registered elsewhere; imports no jax."""
  return sorted(set(SECTIONS) | set(_FACTORIES))


def _import_all() -> None:
  discovery.import_modules('objectives', skip=('base', 'registry', 'sections'))


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
