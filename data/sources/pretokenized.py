"""Source `pretokenized`: documents tokenized once by tools/pretokenize.py, read back by id.

`config.data.pretokenized_dir` holds `metadata.json`, the `tokenizer.model` that made the ids
and, per split, ArrayRecord shards with one record per document: its ids and each
sentence's ids (what packed windows and sentence pairs read). Each host reads only the
records of its own documents, with random access, so a pod-scale run does not tokenize at
start. The fingerprint stored with the shards is the one of the source corpus, so a run
resumes across the on-the-fly and pretokenized paths of the same corpus and tokenizer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from data.sources.registry import register

METADATA = 'metadata.json'
TOKENIZER = 'tokenizer.model'
FORMAT_VERSION = 1


def encode_record(document_ids: Sequence[int], sentence_ids: Sequence[Sequence[int]]) -> bytes:
  """One document as bytes: [len(ids), len(sentences)], ids, sentence lengths, sentence ids."""
  lengths = [len(ids) for ids in sentence_ids]
  parts = [np.asarray([len(document_ids), len(lengths)], np.int32),
           np.asarray(document_ids, np.int32), np.asarray(lengths, np.int32)]
  parts += [np.asarray(ids, np.int32) for ids in sentence_ids]
  return np.concatenate(parts).astype('<i4').tobytes()


def decode_record(record: bytes) -> tuple[np.ndarray, list[np.ndarray]]:
  """(document ids, [ids of each sentence]) of `encode_record`'s bytes."""
  values = np.frombuffer(record, '<i4')
  num_ids, num_sentences = int(values[0]), int(values[1])
  ids = values[2:2 + num_ids]
  start = 2 + num_ids
  lengths = values[start:start + num_sentences]
  ends = start + num_sentences + np.cumsum(lengths)
  return ids, [values[end - length:end] for end, length in zip(ends, lengths)]


class PretokenizedDocuments:
  """One split's stored documents: the tokenized view formats read (see data/tokens.py).

  Indexing gives a document's text, decoded from its ids (SentencePiece round-trips text
  exactly), for what needs text rather than ids.
  """

  def __init__(self, directory: str, split: str, metadata: dict[str, Any]):
    from array_record.python import array_record_data_source  # pylint: disable=import-outside-toplevel

    info = metadata['splits'][split]
    self.directory = directory
    self.name = f'pretokenized {directory}[{split}]'
    self.cleaning = dict(info.get('cleaning', {}))
    self._fingerprint = {'corpus': info['corpus_fingerprint'],
                         'tokenizer': metadata['tokenizer_fingerprint'],
                         'documents': info['documents']}
    paths = [os.path.join(directory, shard) for shard in info['shards']]
    self._records = array_record_data_source.ArrayRecordDataSource(paths)
    if len(self._records) != info['documents']:
      raise ValueError(f'{self.name} holds {len(self._records)} documents but {METADATA} says '
                       f'{info["documents"]}: run tools/pretokenize.py again.')
    self._tokenizer = None

  def __len__(self) -> int:
    return len(self._records)

  def document(self, index: int) -> np.ndarray:
    values = np.frombuffer(self._records[int(index)], '<i4')
    return values[2:2 + int(values[0])]  # the ids alone, as decode_record gives them

  def sentences(self, index: int) -> list[np.ndarray]:
    return decode_record(self._records[int(index)])[1]

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
                     f'{FORMAT_VERSION}: run tools/pretokenize.py again.')
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
