"""Host-side input: documents -> tokenizer -> examples of the format the objective reads."""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np

from data import corpora, packing, tokenizer as tokenizer_lib


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


def example_batch(data_format: str, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """A batch of zeros with the shapes and dtypes `data_format` produces (for tracing)."""
  ones = np.ones((batch_size, seq_len), np.int32)
  batch = {'tokens': ones * 7, 'segment_ids': ones,
           'positions': np.broadcast_to(np.arange(seq_len, dtype=np.int32), ones.shape).copy()}
  if data_format in ('sentence_pairs', 'sentence_order_pairs'):
    batch['token_types'] = np.zeros_like(ones)
    batch['next_sentence_label'] = np.zeros((batch_size,), np.int32)
  return batch


def make_iterator(config, data_format: str, split: str, tokenizer: tokenizer_lib.Tokenizer,
                  documents: corpora.DocumentSource, *, local_batch_size: int,
                  process_index: int, process_count: int) -> ExampleIterator:
  """This process's endless iterator: shuffled for training, in a fixed order for validation.

  Validation repeats too, so every process yields the same number of eval batches
  (config.eval_steps) even when their shards differ in length.
  """
  train = split == 'train'
  common = dict(
      documents=documents, tokenize=tokenizer.encode, seq_len=config.seq_len,
      local_batch_size=local_batch_size, process_index=process_index,
      process_count=process_count, seed=config.seed, shuffle=train and config.data.shuffle,
      repeat=True)
  if data_format == 'packed':
    return packing.PackedIterator(vocab=tokenizer.vocab, **common)
  if data_format in ('sentence_pairs', 'sentence_order_pairs'):
    from data import pairs  # pylint: disable=import-outside-toplevel

    return pairs.SentencePairIterator(
        vocab=tokenizer.vocab, short_seq_prob=config.data.get('short_seq_prob', 0.1),
        sentence_order=data_format == 'sentence_order_pairs',
        name=f'The {split} split ({getattr(documents, "name", "documents")})', **common)
  raise ValueError(f'Unknown data format {data_format!r} asked for by config.objective.')


def stats_values(iterator: ExampleIterator) -> dict[str, float]:
  """The iterator's counts (documents read, skipped, pairs made...) as `data_*` metrics."""
  return {f'data_{key}': value for key, value in iterator.stats.items()
          if isinstance(value, (int, float))}
