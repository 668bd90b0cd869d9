"""Source `pretokenized`: documents tokenized once by tools/pretokenize.py, read back by id.

`config.data.pretokenized_dir` holds `metadata.json`, the `tokenizer.model` that made the ids
and, per split and shard, four memory-mapped `.npy` arrays (the layout of Megatron's indexed
datasets): every document's ids end to end (`tokens`), every sentence's ids end to end
(`sentence_tokens`, for sentence pairs), and two offset tables into them. Reading a document
is a slice of a memory map, about 2 us, where a record of an ArrayRecord file costs 25-40 us
(BENCHMARKS.md, host pipeline); each host touches only the pages of its own documents, so a
pod-scale run neither tokenizes nor loads the corpus at start. The fingerprint stored with
the shards is the one of the source corpus, so a run resumes across the on-the-fly and
pretokenized paths of the same corpus and tokenizer.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from typing import Any

import ml_collections
import numpy as np

from data.sources.registry import register

METADATA = 'metadata.json'
TOKENIZER = 'tokenizer.model'
FORMAT_VERSION = 2
# The arrays of one shard, as `<shard>.<name>.npy`:
#   tokens           [T]      every document's ids, end to end (uint16 when the vocabulary fits)
#   document_index   [D+1, 2] per document: offset of its first id in tokens, index of its
#                             first sentence in sentence_index (row D closes the last one)
#   sentence_tokens  [S]      every sentence's ids, end to end
#   sentence_index   [S+1]    offset of each sentence's first id in sentence_tokens
ARRAYS = ('tokens', 'document_index', 'sentence_tokens', 'sentence_index')


def array_path(directory: str, shard: str, name: str) -> str:
  return os.path.join(directory, f'{shard}.{name}.npy')


def token_dtype(vocab_size: int) -> np.dtype:
  """The narrowest unsigned integer type that holds every id of the vocabulary."""
  return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


class _Shard:
  """One shard's arrays, memory-mapped (plain ndarray views: slicing them is cheap)."""

  def __init__(self, directory: str, shard: str):
    arrays = {}
    for name in ARRAYS:
      path = array_path(directory, shard, name)
      if not os.path.exists(path):
        raise ValueError(f'{path} is missing: run tools/pretokenize.py again for this directory.')
      arrays[name] = np.load(path, mmap_mode='r').view(np.ndarray)
    # Offset tables stay mapped too (16 bytes per document, 8 per sentence: 1 GB for a corpus
    # of 100M sentences), so the processes of one host share them in the page cache.
    self.tokens, self.sentence_tokens = arrays['tokens'], arrays['sentence_tokens']
    self.document_index, self.sentence_index = arrays['document_index'], arrays['sentence_index']

  def __len__(self) -> int:
    return len(self.document_index) - 1

  def document(self, index: int) -> np.ndarray:
    start, end = self.document_index[index, 0], self.document_index[index + 1, 0]
    return self.tokens[start:end].astype(np.int32)

  def sentences(self, index: int) -> list[np.ndarray]:
    first, last = self.document_index[index, 1], self.document_index[index + 1, 1]
    if last == first:
      return []
    offsets = self.sentence_index[first:last + 1]
    ids = self.sentence_tokens[offsets[0]:offsets[-1]].astype(np.int32)
    offsets = (offsets - offsets[0]).tolist()
    return [ids[start:end] for start, end in zip(offsets, offsets[1:])]


class PretokenizedDocuments:
  """One split's stored documents: the tokenized view formats read (see data/tokens.py).

  Indexing gives a document's text, decoded from its ids (SentencePiece round-trips text
  exactly), for what needs text rather than ids.
  """

  def __init__(self, directory: str, split: str, metadata: dict[str, Any]):
    info = metadata['splits'][split]
    self.directory = directory
    self.name = f'pretokenized {directory}[{split}]'
    self.cleaning = dict(info.get('cleaning', {}))
    self._fingerprint = {'corpus': info['corpus_fingerprint'],
                         'tokenizer': metadata['tokenizer_fingerprint'],
                         'documents': info['documents']}
    self._shards = [_Shard(directory, shard) for shard in info['shards']]
    self._ends = list(itertools.accumulate(len(shard) for shard in self._shards))
    if len(self) != info['documents']:
      raise ValueError(f'{self.name} holds {len(self)} documents but {METADATA} says '
                       f'{info["documents"]}: run tools/pretokenize.py again.')
    self._tokenizer = None

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def _locate(self, index: int) -> tuple[_Shard, int]:
    index = int(index)
    shard = bisect.bisect_right(self._ends, index)
    return self._shards[shard], index - (self._ends[shard - 1] if shard else 0)

  def document(self, index: int) -> np.ndarray:
    shard, local = self._locate(index)
    return shard.document(local)

  def sentences(self, index: int) -> list[np.ndarray]:
    shard, local = self._locate(index)
    return shard.sentences(local)

  def fingerprint(self) -> dict[str, Any]:
    return dict(self._fingerprint)

  def __getitem__(self, index: int) -> str:
    if self._tokenizer is None:
      from data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

      self._tokenizer = Tokenizer(os.path.join(self.directory, TOKENIZER))
    if not -len(self) <= index < len(self):
      raise IndexError(f'document {index} out of range for {self.name} ({len(self)} documents).')
    return self._tokenizer.decode(self.document(index % len(self)).tolist())

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def read_metadata(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, METADATA)
  if not directory or not os.path.exists(path):
    raise ValueError(f'config.data.pretokenized_dir={directory!r} holds no {METADATA}; make it '
                     'with tools/pretokenize.py.')
  with open(path, encoding='utf-8') as f:
    metadata = json.load(f)
  if metadata.get('version') != FORMAT_VERSION:
    raise ValueError(f'{path} is version {metadata.get("version")}, this code reads version '
                     f'{FORMAT_VERSION}: run tools/pretokenize.py again (the same corpus and '
                     'tokenizer give the same ids and fingerprint, so runs still resume).')
  return metadata


@register('pretokenized', defaults={'pretokenized_dir': ''})
def load(data_config: ml_collections.ConfigDict, split: str) -> PretokenizedDocuments:
  """Shards written by tools/pretokenize.py, with the tokenizer and fingerprint alongside."""
  directory = os.path.expanduser(data_config.pretokenized_dir)
  metadata = read_metadata(directory)
  if split not in metadata['splits']:
    raise ValueError(f'config.data.pretokenized_dir={directory!r} has no {split!r} split '
                     f'(it has {", ".join(metadata["splits"])}); pretokenize that split too.')
  return PretokenizedDocuments(directory, split, metadata)
