"""Name -> objective factory; every module in objectives/ registers itself on import.

A factory takes the objective's settings (`config.<name>`, possibly empty), the
vocabulary and the sequence length, validates them (one-line errors, before any
compilation) and returns an objective.

Config files need only the names and default settings, so `names()` and `defaults()` read
them from the modules' source (the `@register(...)` call and a literal `defaults`) without
importing the modules, and so without importing jax: a config loads in milliseconds.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
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
  """The default settings of objective `name` (its config section), read without jax."""
  if name in _DEFAULTS:
    return dict(_DEFAULTS[name])
  declared = _declared()
  if name in declared and declared[name] is not None:
    return dict(declared[name])
  get_factory(name)  # not declared literally (or unknown): import to find out
  return dict(_DEFAULTS[name])


def _literal(node: ast.AST, constants: Mapping[str, ast.AST]) -> Any:
  """A literal expression's value; a module constant name or `dict(k=v)` are followed."""
  if isinstance(node, ast.Name) and node.id in constants:
    return _literal(constants[node.id], constants)
  if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict'
      and not node.args):
    return {kw.arg: _literal(kw.value, constants) for kw in node.keywords}
  return ast.literal_eval(node)


@functools.lru_cache(maxsize=None)
def _declared() -> dict[str, dict[str, Any] | None]:
  """name -> defaults (None: not a literal) of every `@register(...)` in objectives/*.py."""
  folder = os.path.dirname(os.path.abspath(__file__))
  found: dict[str, dict[str, Any] | None] = {}
  for file in sorted(os.listdir(folder)):
    if not file.endswith('.py') or file in ('base.py', 'registry.py', '__init__.py'):
      continue
    with open(os.path.join(folder, file), encoding='utf-8') as f:
      tree = ast.parse(f.read(), file)
    constants = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)}
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'register'
              and node.args and isinstance(node.args[0], ast.Constant)):
        continue
      given = node.args[1] if len(node.args) > 1 else next(
          (kw.value for kw in node.keywords if kw.arg == 'defaults'), None)
      try:
        found[node.args[0].value] = {} if given is None else dict(_literal(given, constants))
      except (ValueError, TypeError, SyntaxError):
        found[node.args[0].value] = None
  return found


def declared_names() -> list[str]:
  """The registered names, read from the source without importing the objectives."""
  return sorted(set(_declared()) | set(_FACTORIES))


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
