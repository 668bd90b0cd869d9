"""The one discovery rule of every registry: each module in a plugin folder is imported once.

Objectives, data sources, data formats, downstream tasks and launcher backends are each one
file in their folder that registers itself on import; `import_modules` imports them all, so
adding one never means editing a list. The folder's shared helpers are named in `skip`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Collection, Mapping
from typing import Any, Callable


def import_modules(package: str, skip: Collection[str] = ()) -> list[str]:
  """Imports every module of `package` (dotted name) except those in `skip`; their names."""
  path = importlib.import_module(package).__path__
  names = sorted(info.name for info in pkgutil.iter_modules(path)
                 if not info.ispkg and info.name not in skip)
  for name in names:
    importlib.import_module(f'{package}.{name}')
  return names


def declared_defaults(kind: str, name: str, factory: Callable[..., Any],
                      defaults: Mapping[str, Any] | None, sections: Mapping[str, Mapping],
                      sections_file: str, package: str,
                      registered: Mapping[str, Callable[..., Any]]) -> dict[str, Any]:
  """The defaults a plugin registers under: its section in `sections_file` (a plugin of
  `package` must have one, and may not register others), or `defaults` for one registered
  elsewhere (a test's). One-line errors for a missing or differing section and a second
  registration of `name`."""
  declared = sections.get(name)
  where = f'{kind} {name!r} ({factory.__module__})'
  if declared is None and factory.__module__.startswith(f'{package}.'):
    raise ValueError(f'{where} has no section in {sections_file}: add SECTIONS[{name!r}] (its '
                     'settings, {} if none).')
  if declared is not None and defaults is not None and dict(defaults) != declared:
    raise ValueError(f'{where} registers defaults other than its section in {sections_file}: '
                     'register it with defaults=SECTIONS[name].')
  if name in registered and registered[name] is not factory:
    raise ValueError(f'{kind} {name!r} is registered twice.')
  return dict(declared if declared is not None else defaults or {})
