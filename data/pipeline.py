"""Host-side input: documents -> tokenizer -> examples of the format the objective reads.

The facade the trainer and tools call. Sources live in data/sources/, formats in
data/formats/, and the reader every format shares in data/reader.py.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Protocol

import numpy as np

from data import formats, reader as reader_lib, sources
from data.sources import pretokenized
from data.tokens import AheadEncodedDocuments, EncodedDocuments, tokenizer_fingerprint


class ExampleIterator(Protocol):
  """An iterator of host batches whose position can be saved and restored exactly."""

  stats: dict[str, Any]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    ...

  def __next__(self) -> dict[str, np.ndarray]:
    ...

  def get_state(self) -> dict[str, Any]:
    ...

  def set_state(self, state: dict[str, Any]) -> None:
    ...


def load_documents(data_config, split: str):
  """The documents of `split` ('train', 'validation' or 'test') of `config.data.source`."""
  return sources.load_documents(data_config, split)


def example_batch(data_format: str, batch_size: int, seq_len: int,
                  data_config: Any = None) -> dict[str, np.ndarray]:
  """A batch with the shapes and dtypes `data_format` produces under `data_config` (for
  tracing): token 7 on every position of one segment, positions 0..seq_len-1, lengths
  seq_len, other fields zero."""
  spec = formats.get(data_format).spec(batch_size, seq_len, data_config)
  batch = {name: np.zeros(shape, dtype) for name, (shape, dtype) in spec.items()}
  batch['tokens'][...] = 7
  batch['segment_ids'][...] = 1
  batch['positions'][...] = np.arange(seq_len, dtype=np.int32)
  if 'lengths' in batch:
    batch['lengths'][...] = seq_len
  return batch


def _same_file(first: str | None, second: str) -> bool:
  try:
    return bool(first) and os.path.samefile(first, second)
  except OSError:
    return False


def tokenized_view(documents: Any, tokenizer: Any, workers: int = 1,
                   unit: str = 'document') -> Any:
  """Documents as the formats read them: stored ids (pretokenized) or text encoded on the fly.

  With `workers` > 1 text is read and encoded ahead in a background thread, `unit` (the
  format's: whole documents or their sentences) at a time, on `workers - 1` SentencePiece
  threads; the ids are the same. Stored ids made by another tokenizer than the run's are a
  one-line error.
  """
  if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
    raise ValueError(f'config.data.workers must be a positive integer (host cores the on-the-fly '
                     f'tokenizer may use), got {workers!r}.')
  if hasattr(documents, 'document') and hasattr(documents, 'sentences'):
    made_by = documents.fingerprint()['tokenizer']
    if made_by != tokenizer_fingerprint(tokenizer.encode):
      stored = os.path.join(getattr(documents, 'directory', ''), pretokenized.TOKENIZER)
      fix = ('write the shards again with tools/pretokenize.py' if _same_file(tokenizer.path, stored)
             else 'leave config.data.tokenizer empty to use the tokenizer.model stored with the '
             'shards')
      raise ValueError(f'{documents.name} was tokenized by another tokenizer than the run\'s '
                       f'({tokenizer.path}): {fix}.')
    return documents
  batch = getattr(tokenizer, 'encode_batch', None)
  if workers > 1 and batch is not None:
    return AheadEncodedDocuments(documents, tokenizer.encode,
                                 lambda texts, threads: batch(texts, num_threads=threads),
                                 workers=workers, unit=unit, chunk=reader_lib.PREFETCH_DOCUMENTS)
  # One thread, so encoding never takes cores from the training step. Batching saves little
  # once records are read in batches (about 25 us per document either way, BENCHMARKS.md).
  encode_batch = (lambda texts: batch(texts, num_threads=1)) if batch is not None else None
  return EncodedDocuments(documents, tokenizer.encode, encode_batch)


def make_iterator(config, data_format: str, split: str, tokenizer, documents, *,
                  local_batch_size: int, process_index: int, process_count: int,
                  exact_pass: bool = False) -> ExampleIterator:
  """This process's iterator over `split` in `data_format`.

  Training reads an endless stream, shuffled when config.data.shuffle. Other splits repeat in
  a fixed order, so every process yields the same number of batches (config.eval_steps) even
  when shards differ in length; `exact_pass=True` instead makes one deterministic pass where
  every example of the split appears exactly once across processes (see
  reader.ExactPassIterator).
  """
  fmt = formats.get(data_format)(tokenizer.vocab, config.seq_len, config.data)
  view = tokenized_view(documents, tokenizer, config.data.get('workers', 1), fmt.unit)
  name = f'The {split} split ({getattr(documents, "name", "documents")})'
  if exact_pass:
    return reader_lib.ExactPassIterator(
        fmt, view, local_batch_size=local_batch_size, process_index=process_index,
        process_count=process_count, seed=config.seed, name=name)
  train = split == 'train'
  return reader_lib.ExampleIterator(
      fmt, view, local_batch_size=local_batch_size, process_index=process_index,
      process_count=process_count, seed=config.seed, shuffle=train and config.data.shuffle,
      repeat=True, name=name)


def stats_values(iterator: ExampleIterator) -> dict[str, float]:
  """The iterator's counts (documents read, skipped, pairs made...) as `data_*` metrics."""
  return {f'data_{key}': value for key, value in iterator.stats.items()
          if isinstance(value, (int, float))}
