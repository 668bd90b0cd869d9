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
import json
import os
import re
from collections.abc import Iterator

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


@register('text', defaults={'train_files': '', 'validation_files': '', 'text_field': 'text',
                            'text_documents': 'blank_lines', 'text_heading': WIKITEXT_HEADING,
                            'data_dir': ''})
def load(data_config: ml_collections.ConfigDict, split: str):
  """Local files: comma-separated globs of text or JSON lines, one document per block or line."""
  # pylint: disable-next=import-outside-toplevel  (they import tensorflow_datasets)
  from data.sources import builders, store

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
  config = builders.LocalTextConfig(train_files=train, validation_files=validation,
                          text_field=data_config.text_field, mode=mode,
                          heading=heading)
  data_dir = store.data_dir_for(data_config)
  return store.build_and_load(
      lambda: builders.LocalText(data_dir=data_dir, config=config), data_dir, split, 'text',
      setting=(f'config.data.validation_files={data_config.validation_files!r}'
               if split == 'validation' else 'config.data.train_files'),
      empty_fix='add validation text, or set config.eval_steps=0 to train without evaluation')
