"""Document corpora as random-access sequences of str, built once with tfds into array_record.

Three sources share one path: the standard library's docstrings (offline, built in), a
user's local text files, and any registered TFDS text dataset. Each is prepared by a tfds
builder in array_record format and read back through `as_data_source`, which needs no
TensorFlow.

Bad input in the builtin and local corpora is repaired or skipped at build time, never fatal,
and counted per split in the dataset's metadata (`DocumentSource.cleaning`): invalid UTF-8
becomes U+FFFD, control characters are removed, empty documents and malformed JSON lines are
skipped. Long and one-sentence documents are kept whole; what the objectives' iterators do with
them is theirs to count. A train split left empty is an error naming the files; so is an empty
validation split, but only when it is loaded, so `config.eval_steps=0` trains without one.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import fcntl
import glob
import hashlib
import importlib
import json
import logging
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

CACHE_ENV = 'PRETRAINING_OBJECTIVES_CACHE'
DEFAULT_CACHE_ROOT = '~/.cache/pretraining-objectives'
VALIDATION_FRACTION = 0.03
SPLITS = ('train', 'validation')

# Parts of the stdlib that are tests, vendored code, demos or generated tables rather than
# documented library code.
_SKIPPED_DIRS = frozenset({
    'site-packages', 'dist-packages', '__pycache__', 'test', 'tests', 'idle_test', 'idlelib',
    'lib2to3', 'turtledemo', 'ensurepip', 'pydoc_data'})
_VERSION_PATTERN = re.compile(r'^\d+(\.\d+){2}$')
# Control characters other than tab, line feed and carriage return carry no text (NUL, bells,
# terminal escapes, C1 codes from mis-decoded bytes); form feed and vertical tab break lines.
_CONTROL_CHARACTERS = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]')
_SURROGATES = re.compile('[\ud800-\udfff]')  # lone ones, from JSON escapes; not encodable
_UTF8_REPLACEMENT = '\ufffd'.encode('utf-8')
_BLANK_LINES = re.compile(rb'\n(?:[ \t\r\f\v]*\n)+')


def cache_root() -> str:
  """Root of every cache this package writes: `$PRETRAINING_OBJECTIVES_CACHE` or ~/.cache/..."""
  return os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT)


def data_dir_for(data_config: ml_collections.ConfigDict) -> str:
  """The tfds data_dir: `config.data.data_dir`, or `<cache root>/tfds` when empty."""
  return data_config.data_dir or os.path.join(cache_root(), 'tfds')


def _hash_fraction(key: str) -> float:
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def in_validation(key: str, fraction: float = VALIDATION_FRACTION) -> bool:
  """Stable train/validation assignment of a document by a hash of its identity."""
  return _hash_fraction(key) < fraction


def _split_assigned(items: Iterator[tuple[str, str, Any]], fraction: float, what: str,
                    fix: str) -> dict[str, list]:
  """Splits (key, text, extra) items into train/validation by hash of the key, neither empty.

  A small corpus may hash nothing below `fraction`; then its lowest-hash document goes to
  validation, so the choice stays a deterministic function of the keys.
  """
  items = [(_hash_fraction(item[0]), *item) for item in items]
  if len(items) < 2:
    raise ValueError(f'{what} has {len(items)} non-empty document(s); at least 2 are needed to '
                     f'carve a validation split: {fix}.')
  validation = [item for item in items if item[0] < fraction] or [min(items)]
  chosen = {item[1] for item in validation}
  train = [item for item in items if item[1] not in chosen]
  return {'train': [item[1:] for item in train], 'validation': [item[1:] for item in validation]}


# ------------------------------------------------------------------------------------------
# Cleaning: bad bytes and characters are repaired or skipped, and counted, never fatal.


def decode_utf8(raw: bytes) -> tuple[str, int]:
  """`raw` as text with U+FFFD for each invalid UTF-8 sequence, and how many were replaced."""
  text = raw.decode('utf-8', errors='replace')
  return text, text.count('\ufffd') - raw.count(_UTF8_REPLACEMENT)


def clean_text(text: str) -> tuple[str, int, int]:
  """(text safe to store and tokenize, surrogates replaced, control characters removed).

  Lone surrogates become U+FFFD; form feed and vertical tab become line breaks; other control
  characters except tab, line feed and carriage return are removed.
  """
  text, surrogates = _SURROGATES.subn('\ufffd', text)
  text, controls = _CONTROL_CHARACTERS.subn(
      lambda match: '\n' if match.group() in '\x0b\x0c' else '', text)
  return text, surrogates, controls


def split_stats(items: Sequence[tuple[str, str, dict[str, int]]],
                skipped: collections.Counter | None = None) -> dict[str, int]:
  """Cleaning counts of one split: its documents, their repairs and what was skipped."""
  stats = collections.Counter(skipped or {})
  stats['documents'] = len(items)
  for _, _, repairs in items:
    for key, count in repairs.items():
      if count:
        stats[key] += count
        stats[f'{key}_documents'] += 1
  return dict(stats)


def _plural(count: int, noun: str) -> str:
  return f'{count} {noun}' + ('' if count == 1 else 's')


def cleaning_notes(stats: dict[str, int]) -> list[str]:
  """What cleaning skipped or repaired in a split, as phrases for a log line or an error."""
  notes = []
  if stats.get('skipped_empty'):
    notes.append(f'{_plural(stats["skipped_empty"], "empty document")} skipped')
  if stats.get('skipped_bad_json'):
    notes.append(f'{_plural(stats["skipped_bad_json"], "malformed JSON line")} skipped')
  if stats.get('invalid_utf8'):
    notes.append(f'{_plural(stats["invalid_utf8"], "invalid UTF-8 sequence")} replaced by '
                 f'U+FFFD in {_plural(stats["invalid_utf8_documents"], "document")}')
  if stats.get('control_chars'):
    notes.append(f'{_plural(stats["control_chars"], "control character")} removed from '
                 f'{_plural(stats["control_chars_documents"], "document")}')
  return notes


def _why_empty(stats: dict[str, int]) -> str:
  """What was skipped from files that left no document, for an error message."""
  return ', '.join(cleaning_notes(stats)) or 'only blank lines'


def describe_cleaning(stats: dict[str, int]) -> str:
  """'41 documents (3 empty documents skipped, ...)': a split's cleaning counts for the log."""
  notes = cleaning_notes(stats)
  text = _plural(stats.get('documents', 0), 'document')
  return f'{text} ({", ".join(notes)})' if notes else text


class _TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of documents with one `text` feature, defined outside any tfds package.

  `_split_generators` stores each split's cleaning counts in `info.metadata['cleaning']`.
  """

  DESCRIPTION = ''

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # No checksums or metadata files live next to this code; without this tfds inspects
    # package resources, which needs `importlib_resources`, to look for them.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, metadata=tfds.core.MetadataDict(),
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _generate_examples(self, items):
    for key, text, _ in items:
      yield key, {'text': text}


# ------------------------------------------------------------------------------------------
# Standard-library docstrings.


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


class StdlibDocstringsConfig(tfds.core.BuilderConfig):
  """Which stdlib files to read and which docstrings to keep; the name keys the cache."""

  def __init__(self, *, max_files: int = 0, min_doc_chars: int = 200):
    python = f'py{sys.version_info.major}{sys.version_info.minor}'
    files = f'files{max_files}' if max_files > 0 else 'allfiles'
    super().__init__(name=f'{python}_{files}_min{min_doc_chars}',
                     description='Docstrings of the standard library, one document each.')
    self.max_files = max_files
    self.min_doc_chars = min_doc_chars


class StdlibDocstrings(_TextBuilder):
  """Docstrings of the running interpreter's stdlib: an offline corpus of real English prose."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Module, class and function docstrings, split 97/3 by hash.',
                   '1.1.0': 'Control characters removed; cleaning counts in the metadata.'}
  BUILDER_CONFIG_CLASS = StdlibDocstringsConfig
  DESCRIPTION = 'Docstrings of the Python standard library, parsed with ast.'

  def __init__(self, *, max_files: int = 0, min_doc_chars: int = 200, **kwargs):
    super().__init__(
        config=StdlibDocstringsConfig(max_files=max_files, min_doc_chars=min_doc_chars), **kwargs)


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

    splits = _split_assigned(
        documents(), VALIDATION_FRACTION,
        f'The stdlib corpus (config.data.builtin_max_files={config.max_files})',
        'raise config.data.builtin_max_files or lower config.data.min_doc_chars')
    self.info.metadata['cleaning'] = {name: split_stats(items) for name, items in splits.items()}
    return {name: self._generate_examples(items) for name, items in splits.items()}


# ------------------------------------------------------------------------------------------
# Local text files.


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


def read_local_documents(path: str, text_field: str = 'text',
                         skipped: collections.Counter | None = None
                         ) -> Iterator[tuple[str, dict[str, int]]]:
  """(text, repairs) of one file's documents: JSON lines' `text_field` for .jsonl/.json, else
  paragraphs separated by blank lines.

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
      document = cleaned(record[text_field], invalid)
      if document is not None:
        yield document
  else:
    # Blank lines (possibly holding spaces) separate documents; a document keeps its
    # first line's indentation but no surrounding blank lines or trailing whitespace.
    for raw in _BLANK_LINES.split(data):
      if raw.strip():
        document = cleaned(*decode_utf8(raw))
        if document is not None:
          text, repairs = document
          yield re.sub(r'^(?:[ \t\r\f\v]*\n)+', '', text).rstrip(), repairs


def _files(paths: Sequence[str]) -> str:
  shown = ', '.join(paths[:3])
  return shown + (f' and {len(paths) - 3} more' if len(paths) > 3 else '')


class LocalTextConfig(tfds.core.BuilderConfig):
  """A set of local files; the name is a hash of the files, sizes and mtimes."""

  def __init__(self, *, train_files: Sequence[str], validation_files: Sequence[str],
               text_field: str = 'text'):
    identity = [text_field] + [
        [split, path, os.path.getsize(path), os.stat(path).st_mtime_ns]
        for split, paths in (('train', train_files), ('validation', validation_files))
        for path in paths]
    digest = hashlib.sha256(json.dumps(identity).encode('utf-8')).hexdigest()[:16]
    super().__init__(name=f'files_{digest}', description='Local text files.')
    self.train_files = list(train_files)
    self.validation_files = list(validation_files)
    self.text_field = text_field


class LocalText(_TextBuilder):
  """A user's local text or JSON-lines files as train/validation documents."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Blank-line separated text and JSON lines.',
                   '1.1.0': 'Invalid UTF-8 replaced, control characters removed, empty documents '
                            'and malformed JSON lines skipped; all counted in the metadata.'}
  BUILDER_CONFIG_CLASS = LocalTextConfig
  DESCRIPTION = 'Local text files, one document per paragraph or JSON line.'


  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config

    def documents(paths: Sequence[str], skipped: collections.Counter) -> list:
      return [(f'{path}:{index}', text, repairs) for path in paths
              for index, (text, repairs) in enumerate(
                  read_local_documents(path, config.text_field, skipped))]

    skipped = {'train': collections.Counter(), 'validation': collections.Counter()}
    train = documents(config.train_files, skipped['train'])
    if not train:
      raise ValueError(f'config.data.train_files ({_files(config.train_files)}) holds no '
                       f'non-empty documents ({_why_empty(skipped["train"])}): add text to the '
                       'files or fix the glob.')
    if config.validation_files:
      splits = {'train': train,
                'validation': documents(config.validation_files, skipped['validation'])}
    else:  # Skipped documents belong to no split; they are counted with train's.
      splits = _split_assigned(train, VALIDATION_FRACTION, 'config.data.train_files',
                               'add documents, or give config.data.validation_files')
    self.info.metadata['cleaning'] = {name: split_stats(splits[name], skipped[name])
                                      for name in splits}
    # tfds cannot write an empty split; load_documents explains an absent validation split.
    return {name: self._generate_examples(items) for name, items in splits.items() if items}


# ------------------------------------------------------------------------------------------
# Loading.


class DocumentSource(Sequence):
  """Random-access documents as str, decoded from an array_record data source on access."""

  def __init__(self, data_source: Sequence[Any], text_field: str, name: str,
               cleaning: dict[str, int] | None = None):
    self._source = data_source
    self._field = text_field
    self.name = name
    self.cleaning = dict(cleaning or {})  # what the build skipped and repaired (builtin, text)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:
    if not isinstance(index, (int,)) and not hasattr(index, '__index__'):
      raise TypeError(f'DocumentSource indices must be integers, got {type(index).__name__}.')
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'document {index} out of range for {self.name} ({len(self)} documents).')
    value = self._source[index][self._field]
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)

  def __repr__(self) -> str:
    return f'DocumentSource({self.name}, {len(self)} documents)'


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str) -> Iterator[None]:
  """An exclusive file lock so concurrent processes build a dataset once."""
  if '://' in data_dir:  # Remote data_dirs are prepared elsewhere; nothing to lock.
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  lock_path = os.path.join(data_dir, f'.{name.replace("/", "_").replace(":", "_")}.lock')
  with open(lock_path, 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  tfds.disable_progress_bar()
  builder.download_and_prepare(file_format='array_record')


def _tfds_builder(data_config: ml_collections.ConfigDict, data_dir: str):
  """A registered tfds builder for `config.data.tfds_name`, checked before any download."""
  name = data_config.tfds_name.strip()
  if not name:
    raise ValueError("config.data.tfds_name is empty; set it to a tfds dataset such as 'lm1b' "
                     "when config.data.source is 'tfds'.")
  base, _, rest = name.partition('/')
  base = base.split(':')[0]
  if '/' in name and ':' not in rest and _VERSION_PATTERN.match(rest):
    name = f'{base}:{rest}'  # 'lm1b/1.1.1' means a version, not a config called '1.1.1'.
  # tfds imports its legacy builder packages (c4, wikipedia, ...) lazily, and builder lookup
  # does not trigger that import, so load the packages that hold text datasets first.
  for package in ('text', 'summarization', 'question_answering', 'translate'):
    with contextlib.suppress(ImportError):
      importlib.import_module(f'tensorflow_datasets.{package}')
  known = base in tfds.list_builders(with_community_datasets=False)
  if not known and not ('://' not in data_dir and os.path.isdir(os.path.join(data_dir, base))):
    raise ValueError(f'config.data.tfds_name={data_config.tfds_name!r} is not a registered tfds '
                     'dataset; see tfds.list_builders() for the names.')
  try:
    return tfds.builder(name, data_dir=data_dir)
  except (AssertionError, ValueError) as error:  # Unknown version or config of a known dataset.
    reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    raise ValueError(f'config.data.tfds_name={data_config.tfds_name!r}: {reason}') from error


class _NoCustomConfigWarning(logging.Filter):
  """Drops tfds' warning that a builder uses a config it does not list; ours all do."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'Using custom data configuration' not in record.getMessage()


logging.getLogger('absl').addFilter(_NoCustomConfigWarning())


def _builder(data_config: ml_collections.ConfigDict, data_dir: str):
  source = data_config.source
  if source == 'builtin':
    if data_config.builtin_max_files < 0 or data_config.min_doc_chars < 1:
      raise ValueError('config.data.builtin_max_files must be >= 0 and config.data.min_doc_chars '
                       '>= 1.')
    return StdlibDocstrings(data_dir=data_dir, max_files=data_config.builtin_max_files,
                            min_doc_chars=data_config.min_doc_chars)
  if source == 'text':
    if not data_config.train_files.strip():
      raise ValueError("config.data.train_files is empty; set comma-separated globs of text or "
                       ".jsonl files when config.data.source is 'text'.")
    train = resolve_globs(data_config.train_files, 'config.data.train_files')
    validation = (resolve_globs(data_config.validation_files, 'config.data.validation_files')
                  if data_config.validation_files.strip() else [])
    # A validation file that a broad train glob also matches is held out of training.
    train = [path for path in train if path not in set(validation)]
    if not train:
      raise ValueError('config.data.train_files matches only validation files; narrow '
                       'config.data.validation_files or widen config.data.train_files.')
    config = LocalTextConfig(train_files=train, validation_files=validation,
                             text_field=data_config.text_field)
    return LocalText(data_dir=data_dir, config=config)
  if source == 'tfds':
    return _tfds_builder(data_config, data_dir)
  raise ValueError(f"config.data.source={source!r} is not one of 'builtin', 'text', 'tfds'.")


def load_documents(data_config: ml_collections.ConfigDict, split: str) -> DocumentSource:
  """The documents of `split` ('train' or 'validation'), building the corpus on first use.

  For the 'tfds' source the split names come from `config.data.train_split` and
  `config.data.validation_split` (tfds slicing such as 'train[:1%]' works); the builtin and
  local text corpora always have 'train' and 'validation', except that local validation
  files holding no non-empty document give a one-line error here.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be 'train' or 'validation', got {split!r}.")
  data_dir = data_dir_for(data_config)
  builder = _builder(data_config, data_dir)
  split_name = split
  text_field = 'text'
  if data_config.source == 'tfds':
    split_name = data_config.train_split if split == 'train' else data_config.validation_split
    text_field = data_config.text_field
  # Builders constructed before another process finished would hold a stale DatasetInfo, so
  # re-create the builder under the lock.
  with _build_lock(data_dir, f'{builder.name}-{builder.builder_config.name if builder.builder_config else ""}'):
    builder = _builder(data_config, data_dir)
    _prepare(builder)
  info = builder.info
  if info.file_format is not None and info.file_format.value != 'array_record':
    raise ValueError(f'{builder.name} in {data_dir} is stored as {info.file_format.value}, which '
                     'cannot be read without TensorFlow; point config.data.data_dir at an empty '
                     'directory so it is rebuilt as array_record.')
  if text_field not in info.features:
    raise ValueError(f'config.data.text_field={text_field!r} is not a feature of {builder.name} '
                     f'(features: {", ".join(info.features)}).')
  cleaning = (info.metadata or {}).get('cleaning', {})
  base_split = split_name.split('[')[0]
  if base_split not in info.splits and base_split in cleaning:  # built, but nothing was left
    raise ValueError(f'config.data.validation_files={data_config.validation_files!r} holds no '
                     f'non-empty documents ({_why_empty(cleaning[base_split])}): add validation '
                     'text, or set config.eval_steps=0 to train without evaluation.')
  if base_split not in info.splits:
    setting = 'train_split' if split == 'train' else 'validation_split'
    raise ValueError(f'config.data.{setting}={split_name!r} is not a split of {builder.name} '
                     f'(splits: {", ".join(info.splits)}).')
  source = builder.as_data_source(split=split_name)
  return DocumentSource(source, text_field, f'{builder.info.full_name}[{split_name}]',
                        cleaning.get(split_name))
