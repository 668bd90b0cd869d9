"""The registry of document sources: a name, a loader and the source's own config defaults.

A source is one file under data/sources/ that calls `@register(name, defaults)` on a function
`load(data_config, split) -> Documents`; every module of the folder but the shared helpers
(`HELPERS`) is imported on the first lookup (data/discovery.py). Its defaults become keys of
`config.data` (all sources' keys are present so `--config.data.source=...` can switch sources
from the command line); two sources may share a key only with the same default. Registering
imports nothing heavy, so configs load without TensorFlow Datasets or JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from data import discovery

SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  load: Callable[..., Any]
  defaults: Mapping[str, Any]
  doc: str


_SOURCES: dict[str, Source] = {}
# Modules of data/sources/ that are shared helpers, not sources (store and builders import
# tensorflow_datasets, which configs must load without).
HELPERS = ('builders', 'documents', 'registry', 'split', 'store')


def _import_all() -> None:
  discovery.import_modules('data.sources', skip=HELPERS)


def register(name: str, defaults: Mapping[str, Any] | None = None):
  """Decorator registering `load(data_config, split)` as source `name` with its defaults."""

  def wrap(load):
    if name in _SOURCES:
      raise ValueError(f'Data source {name!r} is registered twice.')
    for source in _SOURCES.values():
      for key, value in (defaults or {}).items():
        if key in source.defaults and source.defaults[key] != value:
          raise ValueError(f'Sources {source.name!r} and {name!r} give config.data.{key} '
                           f'different defaults ({source.defaults[key]!r}, {value!r}).')
    doc = (load.__doc__ or '').strip().splitlines()[0] if load.__doc__ else ''
    _SOURCES[name] = Source(name, load, dict(defaults or {}), doc)
    return load

  return wrap


def names() -> list[str]:
  _import_all()
  return sorted(_SOURCES)


def get(name: str) -> Source:
  _import_all()
  if name not in _SOURCES:
    raise ValueError(f'config.data.source={name!r} is not a data source; choose one of '
                     f'{", ".join(repr(n) for n in names())}.')
  return _SOURCES[name]


def defaults() -> dict[str, Any]:
  """Every registered source's config keys with their defaults."""
  _import_all()
  merged: dict[str, Any] = {}
  for source in _SOURCES.values():
    merged.update(source.defaults)
  return merged
