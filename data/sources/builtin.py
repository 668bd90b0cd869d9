"""Source `builtin`: docstrings of the running interpreter's standard library (offline).

Parsed with `ast` (never imported), each module, class and function docstring of at least
`config.data.min_doc_chars` characters is a document; split 97/3 by a hash of (file, name).
"""

from __future__ import annotations

import ast
import os
import sysconfig
import warnings
from collections.abc import Iterator

import ml_collections

from data.sources.registry import register

# Parts of the stdlib that are tests, vendored code, demos or generated tables rather than
# documented library code.
_SKIPPED_DIRS = frozenset({
    'site-packages', 'dist-packages', '__pycache__', 'test', 'tests', 'idle_test', 'idlelib',
    'lib2to3', 'turtledemo', 'ensurepip', 'pydoc_data'})


def stdlib_files(max_files: int = 0) -> list[str]:
  """Sorted .py files of the running interpreter's stdlib, minus tests and vendored code."""
  root = sysconfig.get_paths()['stdlib']
  files = []
  for directory, subdirs, names in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs
                        if d not in _SKIPPED_DIRS and not d.startswith(('config-', 'test_')))
    files.extend(os.path.join(directory, n) for n in names
                 if n.endswith('.py') and not n.startswith('test_'))
  files.sort(key=lambda path: os.path.relpath(path, root))
  return files[:max_files] if max_files > 0 else files


def file_docstrings(path: str) -> Iterator[tuple[str, str]]:
  """(qualified name, docstring) of a module and its classes and functions, by parsing only."""
  with open(path, 'rb') as f:
    source = f.read()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      tree = ast.parse(source, filename=path)
  except (SyntaxError, ValueError, UnicodeDecodeError):
    return

  def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        name = f'{prefix}{child.name}'
        docstring = ast.get_docstring(child)
        if docstring:
          yield name, docstring
        yield from visit(child, name + '.')
      elif not isinstance(child, ast.expr):
        yield from visit(child, prefix)  # Definitions nested in if/try/with blocks.

  docstring = ast.get_docstring(tree)
  if docstring:
    yield '<module>', docstring
  yield from visit(tree, '')


@register('builtin', defaults={'builtin_max_files': 0, 'min_doc_chars': 200, 'data_dir': ''})
def load(data_config: ml_collections.ConfigDict, split: str):
  """Docstrings of the standard library: offline, about 2,100 train / 80 validation documents."""
  # pylint: disable-next=import-outside-toplevel  (they import tensorflow_datasets)
  from data.sources import builders, store

  if data_config.builtin_max_files < 0 or data_config.min_doc_chars < 1:
    raise ValueError('config.data.builtin_max_files must be >= 0 and config.data.min_doc_chars '
                     '>= 1.')
  if split == 'test':
    raise ValueError("The builtin source has no 'test' split; it has 'train' and 'validation'.")
  data_dir = store.data_dir_for(data_config)
  return store.build_and_load(
      lambda: builders.StdlibDocstrings(data_dir=data_dir,
                                        max_files=data_config.builtin_max_files,
                                        min_doc_chars=data_config.min_doc_chars),
      data_dir, split, 'text', setting=f'The builtin {split} split',
      empty_fix='raise config.data.builtin_max_files')
