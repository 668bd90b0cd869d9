"""Where a sweep's runs go: one module per backend in this folder, found by name here.

  from launching import backends
  backend_class = backends.get('tpu_vm')

A backend module defines a `launching.base.Backend` subclass and decorates it with
`@register('name')`; every module of the folder is imported on the first lookup
(data/discovery.py).
"""

from __future__ import annotations

from data import discovery
from launching.base import Backend

_REGISTRY: dict[str, type[Backend]] = {}


def register(name: str):
  """Class decorator: makes a Backend subclass available as --backend NAME."""

  def add(cls: type[Backend]) -> type[Backend]:
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f'Backend {name!r} is registered twice.')
    cls.name = name
    _REGISTRY[name] = cls
    return cls

  return add


def _load_all() -> None:
  discovery.import_modules('launching.backends')


def names() -> list[str]:
  """Every registered backend, in a stable order."""
  _load_all()
  return sorted(_REGISTRY)


def get(name: str) -> type[Backend]:
  """The backend class registered as `name` ('tpu-vm' and 'tpu_vm' are the same)."""
  _load_all()
  key = name.replace('-', '_')
  if key not in _REGISTRY:
    raise ValueError(f'Unknown --backend {name!r}: choose from {", ".join(names())}.')
  return _REGISTRY[key]
