"""Source `text`: a user's local text or JSON-lines files as train/validation documents.

`.jsonl`/`.json` files hold one document per line at `config.data.text_field`. Other files are
split into documents by `config.data.text_documents`: 'blank_lines' (each block between blank
lines), 'file' (the whole file) or 'heading' (a document starts at every line matching the
regular expression `config.data.text_heading`, such as WikiText's ` = Title = `). Without
`validation_files` about 3% of documents are held out by hash.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence

import ml_collections

from data.cleaning import clean_text, decode_utf8
from data.sources.registry import register

DOCUMENT_MODES = ('blank_lines', 'file', 'heading')
WIKITEXT_HEADING = r'^ = [^=].* = $'  # ' = Title = ' but not ' = = Section = = '
_BLANK_LINES = re.compile(rb'\n(?:[ \t\r\f\v]*\n)+')
_LEADING_BLANK_LINES = re.compile(r'^(?:[ \t\r\f\v]*\n)+')


def resolve_globs(patterns: str, setting: str) -> list[str]:
  """Sorted files matching comma-separated globs; a pattern matching nothing is an error."""
  files = []
  for pattern in (p.strip() for p in patterns.split(',')):
    if not pattern:
      continue
    matches = sorted(m for m in glob.glob(os.path.expanduser(pattern), recursive=True)
                     if os.path.isfile(m))
    if not matches:
      raise FileNotFoundError(f'{setting}: {pattern!r} matches no files; fix the glob or the path.')
    files.extend(os.path.abspath(m) for m in matches)
  return list(dict.fromkeys(files))


def _raw_blocks(data: bytes, mode: str, heading: str) -> list[bytes]:
  """One file's raw documents under `mode` (see the module docstring), before decoding."""
  if mode == 'blank_lines':
    return _BLANK_LINES.split(data)
  if mode == 'file':
    return [data]
  pattern = re.compile(heading.encode('utf-8'))
  starts, offset = {0}, 0
  for line in data.split(b'\n'):  # a line of its own, without a CRLF file's '\r'
    if pattern.search(line.removesuffix(b'\r')):
      starts.add(offset)
    offset += len(line) + 1
  starts = sorted(starts)
  return [data[start:end] for start, end in zip(starts, starts[1:] + [len(data)])]


def read_local_documents(path: str, text_field: str = 'text',
                         skipped: collections.Counter | None = None, *,
                         mode: str = 'blank_lines', heading: str = WIKITEXT_HEADING
                         ) -> Iterator[tuple[str, dict[str, int]]]:
  """(text, repairs) of one file's documents: JSON lines' `text_field` for .jsonl/.json, else
  blocks of text chosen by `mode` (see the module docstring).

  Bad bytes never stop a build. Invalid UTF-8 becomes U+FFFD and control characters go (see
  `clean_text`); `repairs` counts both for the document. Documents left empty and malformed
  JSON lines are skipped and counted in `skipped` ('skipped_empty', 'skipped_bad_json'). A
  record without a string `text_field` is an error: the setting is wrong, not the line.
  """
  skipped = collections.Counter() if skipped is None else skipped
  with open(path, 'rb') as f:
    data = f.read().removeprefix(b'\xef\xbb\xbf')  # a UTF-8 byte-order mark

  def cleaned(text: str, invalid: int) -> tuple[str, dict[str, int]] | None:
    text, surrogates, controls = clean_text(text)
    if not text.strip():
      skipped['skipped_empty'] += 1
      return None
    return text, {'invalid_utf8': invalid + surrogates, 'control_chars': controls}

  if path.endswith(('.jsonl', '.json')):
    for line_number, raw in enumerate(data.split(b'\n'), 1):
      if not raw.strip():
        continue
      line, invalid = decode_utf8(raw)
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        skipped['skipped_bad_json'] += 1
        continue
      if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(f'{path}:{line_number}: no string field {text_field!r}; set '
                         'config.data.text_field to the field holding the text.')
      if invalid:  # count the invalid bytes of the text field only, not of other fields
        kept = json.loads(raw.decode('utf-8', errors='surrogateescape'))[text_field]
        invalid = record[text_field].count('\ufffd') - kept.count('\ufffd')
      document = cleaned(record[text_field], invalid)
      if document is not None:
        yield document
    return
  # Blank lines (possibly holding spaces) separate documents in 'blank_lines' mode; every
  # document keeps its first line's indentation but no surrounding blank lines or trailing
  # whitespace.
  for raw in _raw_blocks(data, mode, heading):
    if raw.strip():
      document = cleaned(*decode_utf8(raw))
      if document is not None:
        text, repairs = document
        yield _LEADING_BLANK_LINES.sub('', text).rstrip(), repairs


def _files(paths: Sequence[str]) -> str:
  shown = ', '.join(paths[:3])
  return shown + (f' and {len(paths) - 3} more' if len(paths) > 3 else '')


def _builder_class():
  """The tfds builder, defined on first use so registering this source imports no tfds."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from data.cleaning import split_stats, why_empty  # pylint: disable=import-outside-toplevel
  from data.sources import split as split_lib  # pylint: disable=import-outside-toplevel
  from data.sources.store import TextBuilder  # pylint: disable=import-outside-toplevel

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
        raise ValueError(f'config.data.train_files ({_files(config.train_files)}) holds no '
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

  _BUILDER = (LocalText, LocalTextConfig)
  return _BUILDER


_BUILDER = None


@register('text', defaults={'train_files': '', 'validation_files': '', 'text_field': 'text',
                            'text_documents': 'blank_lines', 'text_heading': WIKITEXT_HEADING,
                            'data_dir': ''})
def load(data_config: ml_collections.ConfigDict, split: str):
  """Local files: comma-separated globs of text or JSON lines, one document per block or line."""
  from data.sources import store  # pylint: disable=import-outside-toplevel

  if not data_config.train_files.strip():
    raise ValueError("config.data.train_files is empty; set comma-separated globs of text or "
                     ".jsonl files when config.data.source is 'text'.")
  mode = data_config.get('text_documents', 'blank_lines')
  heading = data_config.get('text_heading', WIKITEXT_HEADING)
  if mode not in DOCUMENT_MODES:
    raise ValueError(f'config.data.text_documents={mode!r} is not one of '
                     f'{", ".join(repr(m) for m in DOCUMENT_MODES)}.')
  if mode == 'heading':
    try:
      re.compile(heading, re.MULTILINE)
    except re.error as error:
      raise ValueError(f'config.data.text_heading={heading!r} is not a regular '
                       f'expression ({error}).') from None
  if split == 'test':
    raise ValueError("The text source has no 'test' split; give the test files as "
                     'config.data.validation_files to evaluate on them.')
  train = resolve_globs(data_config.train_files, 'config.data.train_files')
  validation = (resolve_globs(data_config.validation_files, 'config.data.validation_files')
                if data_config.validation_files.strip() else [])
  # A validation file that a broad train glob also matches is held out of training.
  train = [path for path in train if path not in set(validation)]
  if not train:
    raise ValueError('config.data.train_files matches only validation files; narrow '
                     'config.data.validation_files or widen config.data.train_files.')
  builder, builder_config = _builder_class()
  config = builder_config(train_files=train, validation_files=validation,
                          text_field=data_config.text_field, mode=mode,
                          heading=heading)
  data_dir = store.data_dir_for(data_config)
  return store.build_and_load(
      lambda: builder(data_dir=data_dir, config=config), data_dir, split, 'text',
      setting=(f'config.data.validation_files={data_config.validation_files!r}'
               if split == 'validation' else 'config.data.train_files'),
      empty_fix='add validation text, or set config.eval_steps=0 to train without evaluation')
