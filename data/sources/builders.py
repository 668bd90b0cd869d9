"""The tfds builders of the `builtin` and `text` sources: each corpus is built once into
array_record files (data/sources/store.py) and read back without TensorFlow.

Importing this module imports tensorflow_datasets, so the sources import it only when they
load documents, and configs load without it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from data.cleaning import clean_text, split_stats, why_empty
from data.sources import split as split_lib
from data.sources.builtin import file_docstrings, stdlib_files
from data.sources.store import TextBuilder
from data.sources.text import WIKITEXT_HEADING, read_local_documents


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


def _shown(paths: Sequence[str]) -> str:
  shown = ', '.join(paths[:3])
  return shown + (f' and {len(paths) - 3} more' if len(paths) > 3 else '')


class LocalTextConfig(tfds.core.BuilderConfig):
  """A set of local files and how to cut them; the name is a hash of all of it."""

  def __init__(self, *, train_files: Sequence[str], validation_files: Sequence[str],
               text_field: str = 'text', mode: str = 'blank_lines',
               heading: str = WIKITEXT_HEADING):
    identity = [text_field] + [
        [split, path, os.path.getsize(path), os.stat(path).st_mtime_ns]
        for split, paths in (('train', train_files), ('validation', validation_files))
        for path in paths]
    if mode != 'blank_lines':  # the default keeps the names of caches built before modes
      identity.append([mode, heading if mode == 'heading' else ''])
    digest = hashlib.sha256(json.dumps(identity).encode('utf-8')).hexdigest()[:16]
    super().__init__(name=f'files_{digest}', description='Local text files.')
    self.train_files = list(train_files)
    self.validation_files = list(validation_files)
    self.text_field = text_field
    self.mode = mode
    self.heading = heading

class LocalText(TextBuilder):
  """A user's local text or JSON-lines files as train/validation documents."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Blank-line separated text and JSON lines.',
                   '1.1.0': 'Invalid UTF-8 replaced, control characters removed, empty '
                            'documents and malformed JSON lines skipped; all counted in the '
                            'metadata.',
                   '1.2.0': 'Held-out documents chosen by a hash of their text, not of their '
                            'path and position; headings found in CRLF files too.'}
  BUILDER_CONFIG_CLASS = LocalTextConfig
  DESCRIPTION = 'Local text files, one document per paragraph, file, heading or JSON line.'

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config

    def documents(paths: Sequence[str], skipped: collections.Counter) -> list:
      return [(f'{path}:{index}', text, repairs) for path in paths
              for index, (text, repairs) in enumerate(read_local_documents(
                  path, config.text_field, skipped, mode=config.mode, heading=config.heading))]

    skipped = {'train': collections.Counter(), 'validation': collections.Counter()}
    train = documents(config.train_files, skipped['train'])
    if not train:
      raise ValueError(f'config.data.train_files ({_shown(config.train_files)}) holds no '
                       f'non-empty documents ({why_empty(skipped["train"])}): add text to the '
                       'files or fix the glob.')
    if config.validation_files:
      splits = {'train': train,
                'validation': documents(config.validation_files, skipped['validation'])}
    else:  # Skipped documents belong to no split; they are counted with train's.
      # Held out by a hash of the text: the same corpus gets the same split wherever its
      # files live and whatever is inserted before a document, and copies stay together.
      splits = split_lib.split_assigned(
          train, split_lib.VALIDATION_FRACTION, 'config.data.train_files',
          'add documents, or give config.data.validation_files', by=lambda item: item[1])
    self.info.metadata['cleaning'] = {name: split_stats(splits[name], skipped[name])
                                      for name in splits}
    self._record_checksums({name: items for name, items in splits.items() if items})
    # tfds cannot write an empty split; the loader explains an absent validation split.
    return {name: self._generate_examples(items) for name, items in splits.items() if items}
