"""Source `builtin`: docstrings of the running interpreter's standard library (offline).

Parsed with `ast` (never imported), each module, class and function docstring of at least
`config.data.min_doc_chars` characters is a document; split 97/3 by a hash of (file, name).
"""

from __future__ import annotations

import ast
import os
import sys
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


def _builder_class():
  """The tfds builder, defined on first use so registering this source imports no tfds."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from data.cleaning import clean_text, split_stats  # pylint: disable=import-outside-toplevel
  from data.sources import split as split_lib  # pylint: disable=import-outside-toplevel
  from data.sources.store import TextBuilder  # pylint: disable=import-outside-toplevel

  class StdlibDocstringsConfig(tfds.core.BuilderConfig):
    """Which stdlib files to read and which docstrings to keep; the name keys the cache."""

    def __init__(self, *, max_files: int = 0, min_doc_chars: int = 200):
      python = f'py{sys.version_info.major}{sys.version_info.minor}'
      files = f'files{max_files}' if max_files > 0 else 'allfiles'
      super().__init__(name=f'{python}_{files}_min{min_doc_chars}',
                       description='Docstrings of the standard library, one document each.')
      self.max_files = max_files
      self.min_doc_chars = min_doc_chars

  class StdlibDocstrings(TextBuilder):
    """Docstrings of the running interpreter's stdlib: an offline corpus of real English prose."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Module, class and function docstrings, split 97/3 by hash.',
                     '1.1.0': 'Control characters removed; cleaning counts in the metadata.'}
    BUILDER_CONFIG_CLASS = StdlibDocstringsConfig
    DESCRIPTION = 'Docstrings of the Python standard library, parsed with ast.'

    def __init__(self, *, max_files: int = 0, min_doc_chars: int = 200, **kwargs):
      super().__init__(config=StdlibDocstringsConfig(max_files=max_files,
                                                     min_doc_chars=min_doc_chars), **kwargs)

    def _split_generators(self, dl_manager):
      del dl_manager
      config = self.builder_config
      root = sysconfig.get_paths()['stdlib']
      seen = set()

      def documents() -> Iterator[tuple[str, str, dict[str, int]]]:
        for path in stdlib_files(config.max_files):
          relative = os.path.relpath(path, root)
          for name, text in file_docstrings(path):
            key = f'{relative}:{name}'
            text, surrogates, controls = clean_text(text)
            # Identical docstrings (re-exports, property setters) would leak across splits.
            if len(text) >= config.min_doc_chars and key not in seen and text not in seen:
              seen.update((key, text))
              yield key, text, {'invalid_utf8': surrogates, 'control_chars': controls}

      splits = split_lib.split_assigned(
          documents(), split_lib.VALIDATION_FRACTION,
          f'The stdlib corpus (config.data.builtin_max_files={config.max_files})',
          'raise config.data.builtin_max_files or lower config.data.min_doc_chars')
      self.info.metadata['cleaning'] = {name: split_stats(items) for name, items in splits.items()}
      self._record_checksums(splits)
      return {name: self._generate_examples(items) for name, items in splits.items()}

  _BUILDER = StdlibDocstrings
  return _BUILDER


_BUILDER = None


@register('builtin', defaults={'builtin_max_files': 0, 'min_doc_chars': 200, 'data_dir': ''})
def load(data_config: ml_collections.ConfigDict, split: str):
  """Docstrings of the standard library: offline, about 2,100 train / 80 validation documents."""
  from data.sources import store  # pylint: disable=import-outside-toplevel

  if data_config.builtin_max_files < 0 or data_config.min_doc_chars < 1:
    raise ValueError('config.data.builtin_max_files must be >= 0 and config.data.min_doc_chars '
                     '>= 1.')
  if split == 'test':
    raise ValueError("The builtin source has no 'test' split; it has 'train' and 'validation'.")
  data_dir = store.data_dir_for(data_config)
  builder = _builder_class()
  return store.build_and_load(
      lambda: builder(data_dir=data_dir, max_files=data_config.builtin_max_files,
                      min_doc_chars=data_config.min_doc_chars),
      data_dir, split, 'text', setting=f'The builtin {split} split',
      empty_fix='raise config.data.builtin_max_files')
