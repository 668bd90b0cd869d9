"""Corpora built once by a tfds builder into array_record files, and read back without TF.

The builtin and local-text sources' builders (data/sources/builders.py) derive from
`TextBuilder`; the tfds source uses the registered ones. `build_and_load` builds under a file
lock (concurrent processes build once) and returns the split as `DocumentSource` over a
`RecordSource`. Importing this module imports tensorflow_datasets, so sources import it only
when loading.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.proto import tf_example_pb2

from data.cache import cache_root
from data.cleaning import why_empty
from data.sources.documents import DocumentSource


def data_dir_for(data_config: ml_collections.ConfigDict) -> str:
  """The tfds data_dir: `config.data.data_dir`, or `<cache root>/tfds` when empty."""
  return data_config.data_dir or os.path.join(cache_root(), 'tfds')


def checksum(texts: list[str]) -> str:
  """A hash of a split's every document, stored with the build to fingerprint the corpus."""
  digest = hashlib.sha256()
  for text in texts:
    digest.update(hashlib.sha256(text.encode('utf-8')).digest())
  return digest.hexdigest()[:16]


class TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder of documents with one `text` feature, defined outside any tfds package.

  `_split_generators` stores each split's cleaning counts in `info.metadata['cleaning']` and
  a hash of its documents in `info.metadata['checksums']`.
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

  def _log_download_bytes(self) -> None:
    # tfds announces a "download" here; these corpora are built from local text, offline.
    print(f'Building the corpus {self.name} in {self.data_dir} (once; later runs reuse it).',
          flush=True)

  def _log_download_done(self) -> None:
    pass

  def _generate_examples(self, items):
    for key, text, _ in items:
      yield key, {'text': text}

  def _record_checksums(self, splits: dict[str, list]) -> None:
    self.info.metadata['checksums'] = {
        name: checksum([text for _, text, _ in items]) for name, items in splits.items()}


@contextlib.contextmanager
def build_lock(data_dir: str, name: str) -> Iterator[None]:
  """An exclusive file lock so concurrent processes build a dataset once."""
  if '://' in data_dir:  # Remote data_dirs are prepared elsewhere; nothing to lock.
    yield
    return
  lock_path = os.path.join(data_dir, f'.{name.replace("/", "_").replace(":", "_")}.lock')
  try:
    os.makedirs(data_dir, exist_ok=True)
    lock = open(lock_path, 'a')  # pylint: disable=consider-using-with
  except OSError:
    # A read-only cache (shared, or mounted read-only) is read as it is; building into it
    # fails later with a one-line error.
    yield
    return
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _writable(directory: str) -> bool:
  """Whether files can be created in `directory` (made if missing)."""
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return False
  return os.access(directory, os.W_OK)


class _NoCustomConfigWarning(logging.Filter):
  """Drops tfds' warnings that a builder uses a config it does not list (ours all do) and
  that a corpus about to be built has no dataset_info.json yet."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return ('Using custom data configuration' not in message
            and 'has no dataset_info.json' not in message)


logging.getLogger('absl').addFilter(_NoCustomConfigWarning())


def _plain_text(features: Any, field: str | None) -> bool:
  """Whether `field` is a top-level tfds `Text` feature without an encoder (stored as one
  utf-8 value of a bytes_list), which can be read without decoding the whole example."""
  feature = features[field] if field is not None and field in features else None
  exactly_text = type(feature) is tfds.features.Text  # pylint: disable=unidiomatic-typecheck
  return exactly_text and getattr(feature, 'encoder', None) is None


class RecordSource(Sequence):
  """A built split's examples by index, decoded as tfds decodes them, read in the caller's
  thread: one record per `[index]`, many per `__getitems__` (each file's records of a batch in
  one `ArrayRecordReader.read(positions)` call).

  tfds' and array_record's data sources read a batch in a new thread pool per call, which cost
  about half as much CPU again per document in batches of 64 (105 us against 68 us, with
  decoding; a single-record read is about 200 us: BENCHMARKS.md, host pipeline).

  With `text_field` naming a plain `Text` feature, an example is `{text_field: bytes}` parsed
  straight from its `tf.train.Example`, the same bytes as tfds' decoding at 2.3 us a record
  instead of 14 (its parser turns every feature into numpy first).
  """

  def __init__(self, file_instructions: Sequence[Any], features: Any,
               text_field: str | None = None):
    self._files = [(os.fspath(instruction.filename), int(instruction.skip))
                   for instruction in file_instructions]
    self._ends = list(itertools.accumulate(int(i.take) for i in file_instructions))
    self._features = features
    self._text_field = text_field if _plain_text(features, text_field) else None
    self._readers: list[Any] = [None] * len(self._files)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getitem__(self, index: int) -> Any:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[Any]:
    by_file: dict[int, tuple[list[int], list[int]]] = {}
    for slot, index in enumerate(indices):
      index = int(index)
      if not 0 <= index < len(self):
        raise IndexError(f'record {index} out of range ({len(self)} records).')
      file = bisect.bisect_right(self._ends, index)
      slots, positions = by_file.setdefault(file, ([], []))
      slots.append(slot)
      positions.append(index - (self._ends[file - 1] if file else 0) + self._files[file][1])
    records: list[Any] = [None] * len(indices)
    for file, (slots, positions) in by_file.items():
      for slot, record in zip(slots, self._reader(file).read(positions)):
        records[slot] = record
    return [self._decode(record) for record in records]

  def _decode(self, record: bytes) -> Any:
    if self._text_field is not None:
      feature = tf_example_pb2.Example.FromString(record).features.feature.get(self._text_field)
      if feature is not None and len(feature.bytes_list.value) == 1:
        return {self._text_field: feature.bytes_list.value[0]}
    return self._features.deserialize_example_np(record)  # anything else, as tfds decodes it

  def _reader(self, file: int) -> Any:
    """The file's reader, opened on first use (once, however many threads ask)."""
    if self._readers[file] is None:
      with self._lock:
        if self._readers[file] is None:
          # Random access: no readahead, and no reader threads of its own.
          self._readers[file] = array_record_module.ArrayRecordReader(
              self._files[file][0], 'readahead_buffer_size:0,max_parallelism:0',
              file_reader_buffer_size=32768)
    return self._readers[file]


def build_and_load(make_builder: Callable[[], Any], data_dir: str, split_name: str,
                   text_field: str, *, setting: str, empty_fix: str) -> DocumentSource:
  """Builds (once, under a lock) and opens `split_name` of the builder as documents.

  `setting` names the config key that chose the split, for errors; `empty_fix` says what to
  do when a split was built but nothing was left in it.
  """
  builder = make_builder()
  config_name = builder.builder_config.name if builder.builder_config else ''
  # Builders constructed before another process finished would hold a stale DatasetInfo, so
  # re-create the builder under the lock.
  with build_lock(data_dir, f'{builder.name}-{config_name}'):
    builder = make_builder()
    tfds.disable_progress_bar()
    if not builder.is_prepared():
      if not _writable(data_dir):
        raise ValueError(f'The corpus {builder.name} is not built in {data_dir}, which is not '
                         'writable: set config.data.data_dir to a writable directory (or to one '
                         'that holds the built corpus).')
      builder.download_and_prepare(file_format='array_record')
  info = builder.info
  if info.file_format is None or info.file_format.value != 'array_record':
    stored = info.file_format.value if info.file_format is not None else 'an unknown format'
    raise ValueError(f'{builder.name} in {data_dir} is stored as {stored}, which cannot be read '
                     'without TensorFlow; point config.data.data_dir at an empty directory so it '
                     'is rebuilt as array_record.')
  if text_field not in info.features:
    raise ValueError(f'config.data.text_field={text_field!r} is not a feature of {builder.name} '
                     f'(features: {", ".join(info.features)}).')
  metadata = info.metadata or {}
  cleaning = metadata.get('cleaning', {})
  base_split = split_name.split('[')[0]
  if base_split not in info.splits and base_split in cleaning:  # built, but nothing was left
    raise ValueError(f'{setting} holds no non-empty documents ({why_empty(cleaning[base_split])})'
                     f': {empty_fix}.')
  if base_split not in info.splits:
    raise ValueError(f'{setting}={split_name!r} is not a split of {builder.name} '
                     f'(splits: {", ".join(info.splits)}).')
  source = RecordSource(info.splits[split_name].file_instructions, info.features, text_field)
  checksums = metadata.get('checksums', {})
  identity = f'{info.full_name}[{split_name}]'
  if base_split in checksums and base_split == split_name:
    identity += f':{checksums[base_split]}'
  return DocumentSource(source, text_field, f'{info.full_name}[{split_name}]',
                        cleaning.get(split_name), identity=identity)
