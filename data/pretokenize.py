"""Writing pre-tokenized shards: a source's documents tokenized once into memory-mappable arrays.

Per shard, every document's ids and every sentence's ids end to end with their offset tables
(the layout is in data/sources/pretokenized.py); `metadata.json` holds the corpus and
tokenizer fingerprints, the cleaning counts and the shard names, and `tokenizer.model` is
copied alongside. Arrays are streamed to disk as they grow, so a shard never has to fit in
memory. Called by tools/pretokenize.py.

Every file is written to a new, randomly named file in the output folder and renamed into
place, never opened by its final name: a link planted there by another local user (an output
under /tmp) is replaced, not followed. An output folder that is a link, or another user's, is
refused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from data.formats.pairs import split_sentences
from data.sources import pretokenized
from data.sources.documents import corpus_fingerprint
from data.tokens import tokenizer_fingerprint

BATCH_DOCUMENTS = 256  # documents per batched tokenizer call


class NpyAppender:
  """Rows appended to a raw temporary file, written out as one `.npy` array by `close`."""

  def __init__(self, path: str, dtype: Any, row_shape: tuple[int, ...] = ()):
    self.path = path
    self.dtype = np.dtype(dtype)
    self.row_shape = row_shape
    self.rows = 0
    self._raw, self._raw_path = new_file(path)

  def append(self, rows: Any) -> None:
    rows = np.asarray(rows, self.dtype).reshape((-1,) + self.row_shape)
    self._raw.write(rows.tobytes())
    self.rows += len(rows)

  def close(self) -> None:
    self._raw.close()
    header = {'descr': np.lib.format.dtype_to_descr(self.dtype), 'fortran_order': False,
              'shape': (self.rows,) + self.row_shape}
    out, temporary = new_file(self.path)
    with out, open(self._raw_path, 'rb') as raw:
      np.lib.format.write_array_header_2_0(out, header)
      shutil.copyfileobj(raw, out, 1 << 24)
    os.replace(temporary, self.path)
    os.remove(self._raw_path)


def new_file(final: str) -> tuple[Any, str]:
  """A new file (binary, open for writing) beside `final`, and its path, to be renamed over
  `final`: created exclusively under a random name, so no link is followed."""
  descriptor, path = tempfile.mkstemp(dir=os.path.dirname(final) or '.',
                                      prefix=f'.{os.path.basename(final)}.', suffix='.tmp')
  os.fchmod(descriptor, 0o644)  # shards are for reading by whoever trains on them
  return os.fdopen(descriptor, 'wb'), path


def check_output_dir(directory: str) -> None:
  """Raises ValueError (one line) for an existing output folder that is a link or another
  user's: what is in it may be links to that user's choice of files."""
  if not os.path.lexists(directory):
    return
  info = os.lstat(directory)
  if stat.S_ISLNK(info.st_mode):
    raise ValueError(f'--output {directory} is a symbolic link: give the folder itself, or a '
                     'new one.')
  if not stat.S_ISDIR(info.st_mode):
    raise ValueError(f'--output {directory} is not a folder: give a new one.')
  if info.st_uid != os.geteuid():
    raise ValueError(f'--output {directory} belongs to user id {info.st_uid}, not to you: give '
                     'a folder of your own (not a fixed name under /tmp).')


def write_shard(documents: Sequence[str], indices: range, tokenizer: Any, directory: str,
                shard: str) -> int:
  """Tokenizes `documents[indices]` into the arrays of one shard, reading them a batch at a
  time; returns how many ids its documents hold."""
  read = getattr(documents, 'read', None)  # one batched read where the source has it
  dtype = pretokenized.token_dtype(tokenizer.vocab.size)
  arrays = {'tokens': NpyAppender(pretokenized.array_path(directory, shard, 'tokens'), dtype),
            'document_index': NpyAppender(
                pretokenized.array_path(directory, shard, 'document_index'), np.int64, (2,)),
            'sentence_tokens': NpyAppender(
                pretokenized.array_path(directory, shard, 'sentence_tokens'), dtype),
            'sentence_index': NpyAppender(
                pretokenized.array_path(directory, shard, 'sentence_index'), np.int64)}
  tokens = sentence_tokens = sentences = 0
  for start in range(indices.start, indices.stop, BATCH_DOCUMENTS):
    wanted = range(start, min(indices.stop, start + BATCH_DOCUMENTS))
    batch = list(read(list(wanted))) if read is not None else [documents[i] for i in wanted]
    split = [split_sentences(text) for text in batch]
    # Every sentence of the batch in one call: a document's few sentences per call would pay
    # the call's overhead for each document.
    flat = tokenizer.encode_batch([s for parts in split for s in parts]) if any(split) else []
    ends = np.cumsum([len(parts) for parts in split])
    for ids, end, parts in zip(tokenizer.encode_batch(batch), ends, split):
      sentence_ids = flat[end - len(parts):end]
      arrays['document_index'].append([tokens, sentences])
      arrays['tokens'].append(ids)
      tokens += len(ids)
      lengths = np.asarray([len(s) for s in sentence_ids], np.int64)
      arrays['sentence_index'].append(sentence_tokens + np.cumsum(lengths) - lengths)
      if sentence_ids:
        arrays['sentence_tokens'].append(np.concatenate(
            [np.asarray(s, dtype) for s in sentence_ids]))
      sentence_tokens += int(lengths.sum())
      sentences += len(sentence_ids)
  arrays['document_index'].append([tokens, sentences])  # closes the last document
  arrays['sentence_index'].append([sentence_tokens])  # closes the last sentence
  for array in arrays.values():
    array.close()
  return tokens


def write_split(documents: Sequence[str], tokenizer: Any, directory: str, split: str,
                num_shards: int) -> dict[str, Any]:
  """Writes `split`'s documents as `num_shards` shards; returns its metadata."""
  count = len(documents)
  num_shards = max(1, min(num_shards, count))
  per_shard = math.ceil(count / num_shards)
  shards, tokens = [], 0
  for shard in range(num_shards):
    name = f'{split}-{shard:05d}-of-{num_shards:05d}'
    indices = range(shard * per_shard, min(count, (shard + 1) * per_shard))
    tokens += write_shard(documents, indices, tokenizer, directory, name)
    shards.append(name)
  return {'documents': count, 'tokens': tokens, 'shards': shards,
          'corpus_fingerprint': corpus_fingerprint(documents),
          'cleaning': dict(getattr(documents, 'cleaning', {}) or {})}


def write(data_config: Any, directory: str, splits: Sequence[str], num_shards: int,
          tokenizer: Any, load_documents) -> dict[str, Any]:
  """Tokenizes `splits` of `config.data.source` into `directory`; returns the metadata."""
  check_output_dir(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, pretokenized.TOKENIZER)
  if os.path.abspath(tokenizer.path) != os.path.abspath(target):
    out, temporary = new_file(target)
    with out, open(tokenizer.path, 'rb') as source:
      shutil.copyfileobj(source, out)
    os.replace(temporary, target)
  metadata = {'version': pretokenized.FORMAT_VERSION,
              'tokenizer_fingerprint': tokenizer_fingerprint(tokenizer.encode),
              'source': data_config.source,
              'splits': {split: write_split(load_documents(data_config, split), tokenizer,
                                            directory, split, num_shards) for split in splits}}
  final = os.path.join(directory, pretokenized.METADATA)
  out, temporary = new_file(final)
  with out:
    out.write(json.dumps(metadata, indent=2).encode('utf-8'))
  os.replace(temporary, final)
  return metadata
