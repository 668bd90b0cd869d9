"""The grain pipelines benchmarks/grain_reader.py measures against the project's reader,
and the project's own iterator built the same way (no flags: tests import this module).

grain is not a dependency of the project: `pip install grain` to use this.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.host_rate import host_rate

# Documents per encode call in the batched variants, as the reader's prefetch.
ENCODE_BATCH = 64


def require_grain():
  """The grain module, or an exit in one line saying how to install it."""
  try:
    import grain  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit('benchmarks.grain_reader needs grain, which the project does not '
                     'depend on: pip install grain') from None
  return grain


def _shuffled(dataset: Any, seed: int, shuffle: bool, repeat: bool) -> Any:
  """A shard's MapDataset in grain's per-epoch order: reshuffled every epoch when repeated."""
  if shuffle:
    dataset = dataset.shuffle(seed)
  return dataset.repeat() if repeat else dataset


def grain_packed(documents: Sequence[str], tokenizer: Any, *, seq_len: int, batch_size: int,
                 seed: int = 0, shuffle: bool = True, repeat: bool = True,
                 process_index: int = 0, process_count: int = 1,
                 encode_batch: int = 0, num_threads: int = 0) -> Any:
  """A grain IterDataset of packed batches (tokens, segment_ids, positions) of `documents`.

  Empty documents are skipped and every other becomes [bos] ids [eos], as in
  data/formats/packed.py; grain's ConcatThenSplit cuts the stream into windows. With
  `encode_batch`, `encode_batch` documents are tokenized in one call and flattened back.
  """
  grain = require_grain()
  vocab = tokenizer.vocab

  def framed(ids: Sequence[int]) -> dict[str, np.ndarray] | None:
    if len(ids) == 0:
      return None
    tokens = np.empty(len(ids) + 2, np.int32)
    tokens[0], tokens[-1] = vocab.bos_id, vocab.eos_id
    tokens[1:-1] = ids
    return {'tokens': tokens}

  source = grain.MapDataset.source(documents)[process_index::process_count]
  source = _shuffled(source, seed, shuffle, repeat)
  read_options = grain.ReadOptions(num_threads=num_threads)
  if encode_batch:
    encode = lambda texts: tokenizer.encode_batch(list(texts), num_threads=1)
    texts = source.batch(encode_batch, batch_fn=list).map(encode)

    class Frame(grain.experimental.FlatMapTransform):
      max_fan_out = encode_batch

      def flat_map(self, element):
        return [example for example in map(framed, element) if example is not None]

    stream = grain.experimental.FlatMapIterDataset(texts.to_iter_dataset(read_options), Frame())
  else:
    stream = source.map(lambda text: framed(tokenizer.encode(text))).to_iter_dataset(read_options)
  packed = grain.experimental.ConcatThenSplitIterDataset(stream, length_struct={'tokens': seq_len})
  packed = packed.map(lambda window: {'tokens': window['tokens'],
                                      'segment_ids': window['tokens_segment_ids'],
                                      'positions': window['tokens_positions']})
  return packed.batch(batch_size)


class _CurrentDocument:
  """The tokenized view a pair builder reads: grain's ids for the document being read, the
  project's view for the random other documents that NSP's random next segments come from."""

  def __init__(self, view: Any, index: int, sentences: list[np.ndarray]):
    self._view, self._index, self._sentences = view, index, sentences

  def sentences(self, index: int) -> Any:
    return self._sentences if index == self._index else self._view.sentences(index)


@functools.cache
def _pairs_dataset_class() -> type:
  """An IterDataset running the project's pair builder on the documents grain reads."""
  grain = require_grain()
  from data.reader import plain  # pylint: disable=import-outside-toplevel

  class PairsIterator(grain.DatasetIterator):
    """Pairs of (index, sentence ids) from the parent; state: grain's plus the builder's."""

    def __init__(self, parent, fmt, view, reader, seed: int, repeat: bool):
      super().__init__(parent)
      self._view, self._reader, self._repeat = view, reader, repeat
      self._builder = fmt.builder(seed, reader.process_index)
      self._reads = 0
      self._finished = False

    def __next__(self) -> dict[str, np.ndarray]:
      builder = self._builder
      while builder.ready() == 0 and not self._finished:
        try:
          index, sentences = next(self._parent)
        except StopIteration:
          builder.end_of_pass(final=True)
          self._finished = True
          break
        builder.add(index, _CurrentDocument(self._view, index, sentences), self._reader)
        self._reads += 1
        if self._repeat and self._reads % len(self._reader.shard) == 0:
          builder.end_of_pass(final=False)
      if builder.ready() == 0:
        raise StopIteration
      return builder.take()

    def get_state(self) -> dict[str, Any]:
      return {'parent': self._parent.get_state(), 'builder': plain(self._builder.get_state()),
              'reads': self._reads, 'finished': self._finished}

    def set_state(self, state: dict[str, Any]) -> None:
      self._parent.set_state(state['parent'])
      self._builder.set_state(state['builder'])
      self._reads, self._finished = int(state['reads']), bool(state['finished'])

  class PairsDataset(grain.IterDataset):

    def __init__(self, parent, **settings):
      super().__init__(parent)
      self._settings = settings

    def __iter__(self):
      return PairsIterator(self._parent.__iter__(), **self._settings)

  return PairsDataset


def grain_pairs(fmt: Any, documents: Sequence[str], tokenizer: Any, *, batch_size: int,
                seed: int = 0, shuffle: bool = True, repeat: bool = True,
                process_index: int = 0, process_count: int = 1, num_threads: int = 0) -> Any:
  """A grain IterDataset of sentence-pair batches of `fmt` (sentence_pairs or sentence order).

  grain reads and tokenizes each document's sentences; the project's builder makes the pairs.
  """
  grain = require_grain()
  from data import pipeline, reader  # pylint: disable=import-outside-toplevel
  from data.formats.pairs import split_sentences  # pylint: disable=import-outside-toplevel

  view = pipeline.tokenized_view(documents, tokenizer)
  shard_reader = reader.Reader(len(documents), process_index=process_index,
                               process_count=process_count, seed=seed)

  def sentences(index: int) -> tuple[int, list[np.ndarray]]:
    texts = split_sentences(documents[index])
    ids = tokenizer.encode_batch(texts, num_threads=1) if len(texts) > 1 else map(
        tokenizer.encode, texts)
    return int(index), [np.asarray(piece, np.int32) for piece in ids]

  indices = grain.MapDataset.range(len(documents))[process_index::process_count]
  stream = _shuffled(indices, seed, shuffle, repeat).map(sentences)
  stream = stream.to_iter_dataset(grain.ReadOptions(num_threads=num_threads))
  pairs = _pairs_dataset_class()(stream, fmt=fmt, view=view, reader=shard_reader, seed=seed,
                                 repeat=repeat)
  return pairs.batch(batch_size)


def grain_iterator(config, data_format: str, documents: Sequence[str], tokenizer: Any, *,
                   batch_size: int, shuffle: bool = True, repeat: bool = True,
                   process_index: int = 0, process_count: int = 1, encode_batch: int = 0,
                   num_threads: int = 0) -> Any:
  """grain's checkpointable iterator of `data_format` batches at config.seq_len."""
  from data import formats  # pylint: disable=import-outside-toplevel

  common = dict(batch_size=batch_size, seed=config.seed, shuffle=shuffle, repeat=repeat,
                process_index=process_index, process_count=process_count,
                num_threads=num_threads)
  if data_format == 'packed':
    dataset = grain_packed(documents, tokenizer, seq_len=config.seq_len,
                           encode_batch=encode_batch, **common)
  else:
    fmt = formats.get(data_format)(tokenizer.vocab, config.seq_len, config.data)
    dataset = grain_pairs(fmt, documents, tokenizer, **common)
  return iter(dataset)


def project_iterator(config, data_format: str, documents: Sequence[str], tokenizer: Any, *,
                     batch_size: int, shuffle: bool = True, repeat: bool = True,
                     process_index: int = 0, process_count: int = 1,
                     batched_encode: bool = True) -> Any:
  """The project's iterator: data/pipeline.py's training iterator, or with `repeat=False` or
  one encode call per text the same reader built directly."""
  from data import formats, pipeline, reader  # pylint: disable=import-outside-toplevel
  from data.tokens import EncodedDocuments  # pylint: disable=import-outside-toplevel

  if repeat and batched_encode:
    config = copy.deepcopy(config)
    config.data.shuffle = shuffle
    return pipeline.make_iterator(config, data_format, 'train', tokenizer, documents,
                                  local_batch_size=batch_size, process_index=process_index,
                                  process_count=process_count)
  fmt = formats.get(data_format)(tokenizer.vocab, config.seq_len, config.data)
  view = (pipeline.tokenized_view(documents, tokenizer) if batched_encode
          else EncodedDocuments(documents, tokenizer.encode))
  return reader.ExampleIterator(fmt, view, local_batch_size=batch_size,
                                process_index=process_index, process_count=process_count,
                                seed=config.seed, shuffle=shuffle, repeat=repeat)


def same_batch(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def throughput(iterator, batches: int) -> dict[str, float]:
  """host_rate's tokens/s, rounded for the JSON lines."""
  return {key: round(value) for key, value in host_rate(iterator, batches).items()}


def state_costs(iterator, make: Callable[[], Any]) -> dict[str, Any]:
  """Saves `iterator`'s state as JSON, restores it into a fresh iterator, compares one batch."""
  iterator.get_state()  # the project fingerprints its corpus on the first save
  start = time.process_time()
  text = json.dumps(iterator.get_state())
  save = time.process_time() - start
  expected = next(iterator)
  restored = make()
  start = time.process_time()
  restored.set_state(json.loads(text))
  restore = time.process_time() - start
  return {'state_bytes': len(text.encode('utf-8')), 'save_ms': round(save * 1e3, 2),
          'restore_ms': round(restore * 1e3, 2),
          'restored_next_batch_exact': same_batch(next(restored), expected)}


def makers(config, data_format: str, documents, tokenizer, shard: dict[str, int],
           threads: int = 0) -> dict[str, Callable[..., Any]]:
  """Variant name -> a function of `shuffle` making that variant's iterator."""
  return {
      'project': lambda shuffle=True: project_iterator(
          config, data_format, documents, tokenizer, shuffle=shuffle, **shard),
      'project_per_text': lambda shuffle=True: project_iterator(
          config, data_format, documents, tokenizer, shuffle=shuffle, batched_encode=False,
          **shard),
      'grain': lambda shuffle=True: grain_iterator(
          config, data_format, documents, tokenizer, shuffle=shuffle, num_threads=threads,
          **shard),
      'grain_batched': lambda shuffle=True: grain_iterator(
          config, data_format, documents, tokenizer, shuffle=shuffle,
          encode_batch=ENCODE_BATCH, num_threads=threads, **shard),
  }
