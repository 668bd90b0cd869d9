"""The one discovery rule of every registry: each module in a plugin folder is imported once.

Objectives, data sources, data formats, downstream tasks and launcher backends are each one
file in their folder that registers itself on import; `import_modules` imports them all, so
adding one never means editing a list. The folder's shared helpers are named in `skip`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Collection


def import_modules(package: str, skip: Collection[str] = ()) -> list[str]:
  """Imports every module of `package` (dotted name) except those in `skip`; their names."""
  path = importlib.import_module(package).__path__
  names = sorted(info.name for info in pkgutil.iter_modules(path)
                 if not info.ispkg and info.name not in skip)
  for name in names:
    importlib.import_module(f'{package}.{name}')
  return names
