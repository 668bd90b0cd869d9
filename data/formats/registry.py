"""The registry of data formats: a name, the format class and its `config.data` defaults.

A format is one file under data/formats/ that registers a class with `@register(name,
defaults)`; see data/formats/base.py for what the class provides. Registering imports only
numpy, so configs load without JAX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FORMATS: dict[str, tuple[type, dict[str, Any]]] = {}


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Class decorator registering a format under `name` with its config defaults."""

  def wrap(cls):
    if name in _FORMATS:
      raise ValueError(f'Data format {name!r} is registered twice.')
    _FORMATS[name] = (cls, dict(defaults or {}))
    return cls

  return wrap


def names() -> list[str]:
  return sorted(_FORMATS)


def get(name: str) -> type:
  if name not in _FORMATS:
    raise ValueError(f'Unknown data format {name!r}; choose one of '
                     f'{", ".join(repr(n) for n in names())} (config.data.format).')
  return _FORMATS[name][0]


def defaults() -> dict[str, Any]:
  """Every registered format's config keys with their defaults."""
  merged: dict[str, Any] = {}
  for _, values in _FORMATS.values():
    merged.update(values)
  return merged
