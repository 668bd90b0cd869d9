"""The registry of data formats: a name, the format class and its `config.data` defaults.

A format is one file under data/formats/ that registers a class with `@register(name,
defaults)`; see data/formats/base.py for what the class provides. Every module of the folder
but `base` and this one is imported on the first lookup (data/discovery.py). Registering
imports only numpy, so configs load without JAX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from data import discovery

_FORMATS: dict[str, tuple[type, dict[str, Any]]] = {}


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Class decorator registering a format under `name` with its config defaults."""

  def wrap(cls):
    if name in _FORMATS:
      raise ValueError(f'Data format {name!r} is registered twice.')
    _FORMATS[name] = (cls, dict(defaults or {}))
    return cls

  return wrap


def _import_all() -> None:
  discovery.import_modules('data.formats', skip=('base', 'registry'))


def names() -> list[str]:
  _import_all()
  return sorted(_FORMATS)


def get(name: str) -> type:
  _import_all()
  if name not in _FORMATS:
    raise ValueError(f'Unknown data format {name!r}; choose one of '
                     f'{", ".join(repr(n) for n in names())} (config.data.format).')
  return _FORMATS[name][0]


def defaults() -> dict[str, Any]:
  """Every registered format's config keys with their defaults."""
  _import_all()
  merged: dict[str, Any] = {}
  for _, values in _FORMATS.values():
    merged.update(values)
  return merged
