"""Random-access documents, and the fingerprint a data position is saved with.

A source returns a `Documents`: `len`, integer indexing to str, `read` of many indices at
once, a `name` for messages, what cleaning did (`cleaning`) and an `identity` string that
says where the documents came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

# Documents read to fingerprint a corpus: evenly spaced, so a pass stays O(1) in corpus size.
FINGERPRINT_SAMPLES = 32


class DocumentSource(Sequence):
  """Random-access documents as str, decoded from a random-access record source on access."""

  def __init__(self, data_source: Sequence[Any], text_field: str | None, name: str,
               cleaning: dict[str, int] | None = None, identity: str = ''):
    self._source = data_source
    self._field = text_field
    self.name = name
    self.identity = identity or name
    self.cleaning = dict(cleaning or {})  # what the build skipped and repaired (builtin, text)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> str:
    return self._text(self._source[self._key(index)])

  def read(self, indices: Sequence[int]) -> list[str]:
    """The documents at `indices`, in order, from one batched read where the record source
    has one (`__getitems__`): a single-record read costs several times more per record."""
    keys = [self._key(index) for index in indices]
    read_many = getattr(self._source, '__getitems__', None)
    values = read_many(keys) if read_many is not None and keys else [self._source[k] for k in keys]
    return [self._text(value) for value in values]

  def _key(self, index: int) -> int:
    if not isinstance(index, int) and not hasattr(index, '__index__'):
      raise TypeError(f'DocumentSource indices must be integers, got {type(index).__name__}.')
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f'document {index} out of range for {self.name} ({len(self)} documents).')
    return index

  def _text(self, value: Any) -> str:
    if self._field is not None:
      value = value[self._field]
    return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)

  def __repr__(self) -> str:
    return f'DocumentSource({self.name}, {len(self)} documents)'


def sample_indices(count: int, samples: int = FINGERPRINT_SAMPLES) -> list[int]:
  """Up to `samples` evenly spaced indices of `count` items, first and last included."""
  if count <= samples:
    return list(range(count))
  return sorted({round(i * (count - 1) / (samples - 1)) for i in range(samples)})


def corpus_fingerprint(documents: Sequence[str]) -> str:
  """A short hash of a corpus: its size and a sample of its documents' text.

  Cheap on any corpus size. A corpus that grew, shrank or was edited where it was sampled
  changes it; an edit between samples may not (the sources' own identities, hashing file
  sizes and times, catch those).
  """
  digest = hashlib.sha256()
  digest.update(str(getattr(documents, 'identity', '')).encode('utf-8'))
  digest.update(str(len(documents)).encode('utf-8'))
  for index in sample_indices(len(documents)):
    digest.update(hashlib.sha256(str(documents[index]).encode('utf-8')).digest())
  return digest.hexdigest()[:16]
