"""The one reader every format shares: sharding, epoch order, exact position, fingerprint.

`Reader` decides which document a process reads next: process p of n reads documents
i % n == p, in a permutation that is a function of (seed, epoch) only, so every format reads
the same documents in the same order. `ExampleIterator` joins a reader, a tokenized view of
the documents and a format's builder into batches; its state (reader position, builder
state, a fingerprint of corpus and tokenizer) is JSON-serialisable and restores the stream
exactly, and a changed corpus or tokenizer is refused in one line. `ExactPassIterator` makes
one deterministic pass for evaluation: every example of the split exactly once across all
processes, the same number of batches on every process, the rest padded with all-padding
rows (segment_ids 0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from data.formats.base import padding_example

# Upcoming documents read in one batched call (and encoded in one, where the tokenizer can):
# with tfds' decoding, about 40 us of CPU per text record in calls of 256 against 68 us in
# calls of 64 (15.5 us in calls of 256 since RecordSource parses the text field itself).
PREFETCH_DOCUMENTS = 256


class Reader:
  """This process's document order: shard, per-epoch permutation and cursor."""

  def __init__(self, num_documents: int, *, process_index: int = 0, process_count: int = 1,
               seed: int = 0, shuffle: bool = True):
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
    self.shard = np.arange(process_index, num_documents, process_count, dtype=np.int64)
    if len(self.shard) == 0:
      raise ValueError(f'{num_documents} documents cannot give each of {process_count} '
                       'processes one; use a larger corpus or split.')
    self.num_documents = num_documents
    self.process_index = process_index
    self.process_count = process_count
    self.seed = seed
    self.shuffle = shuffle
    self.where = f'shard {process_index} of {process_count}'
    self.epoch = 0
    self.index = 0
    self._order_epoch = -1
    self._order = self.shard

  def order(self) -> np.ndarray:
    """The current epoch's order, computed once per epoch (so a pass is linear in its size)."""
    if self._order_epoch != self.epoch:
      if self.shuffle:
        rng = np.random.default_rng([self.seed, self.epoch])
        self._order = self.shard[rng.permutation(len(self.shard))]
      else:
        self._order = self.shard
      self._order_epoch = self.epoch
    return self._order

  def next(self) -> int | None:
    """The next document index of this epoch; None once the epoch is read."""
    order = self.order()
    if self.index >= len(order):
      return None
    self.index += 1
    return int(order[self.index - 1])

  def upcoming(self, count: int) -> np.ndarray:
    return self.order()[self.index:self.index + count]

  def next_epoch(self) -> None:
    self.epoch += 1
    self.index = 0

  def random_document(self, rng: np.random.Generator) -> int:
    """A uniformly random document of the shard (for NSP's random next segment)."""
    return int(self.shard[rng.integers(len(self.shard))])

  def get_state(self) -> dict[str, int]:
    return {'epoch': self.epoch, 'index': self.index}

  def set_state(self, state: dict[str, Any]) -> None:
    self.epoch, self.index = int(state['epoch']), int(state['index'])


def plain(value: Any) -> Any:
  """`value` with numpy scalars and arrays turned into Python numbers and lists (for JSON)."""
  if isinstance(value, dict):
    return {key: plain(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(item) for item in value]
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def check_fingerprint(saved: dict[str, Any] | None, current: dict[str, Any], what: str) -> None:
  """One-line error when a saved position belongs to another corpus or tokenizer."""
  if not saved:
    return
  if saved.get('corpus') != current['corpus']:
    raise ValueError(
        f'The saved data position of {what} belongs to a different corpus (then '
        f'{saved.get("documents")} documents, fingerprint {saved.get("corpus")}; now '
        f'{current["documents"]}, {current["corpus"]}): resume with the same config.data and '
        'files, or start a new workdir.')
  if saved.get('tokenizer') != current['tokenizer']:
    raise ValueError(
        f'The saved data position of {what} was made with a different tokenizer (fingerprint '
        f'{saved.get("tokenizer")}, now {current["tokenizer"]}): resume with the run\'s own '
        'tokenizer.model (config.data.tokenizer), or start a new workdir.')


class ExampleIterator:
  """Endless (repeat) or one-pass batches of a format from this process's shard.

  Batches are dicts of arrays with `local_batch_size` rows, as the format's spec says. A
  one-pass iterator pads its last batch with all-padding rows and then stops.
  """

  def __init__(self, fmt: Any, documents: Any, *, local_batch_size: int, process_index: int = 0,
               process_count: int = 1, seed: int = 0, shuffle: bool = True,
               repeat: bool = True, name: str = ''):
    if local_batch_size < 1:
      raise ValueError(f'The local batch size must be positive, got {local_batch_size}.')
    self.format = fmt
    self.documents = documents
    self.local_batch_size = local_batch_size
    self.repeat = repeat
    self.name = name or getattr(documents, 'name', 'the documents')
    self.reader = Reader(len(documents), process_index=process_index,
                         process_count=process_count, seed=seed, shuffle=shuffle)
    self.reader.where = f'{self.name}, {self.reader.where}'
    self.builder = fmt.builder(seed, process_index)
    self._padding = padding_example(fmt.spec(1, fmt.seq_len, getattr(fmt, 'settings', None)),
                                    fmt.vocab.pad_id)
    self._finished = False
    self._fingerprint: dict[str, Any] | None = None

  @property
  def stats(self) -> dict[str, Any]:
    return self.builder.stats

  def fingerprint(self) -> dict[str, Any]:
    if self._fingerprint is None:
      self._fingerprint = self.documents.fingerprint()
    return self._fingerprint

  def __iter__(self) -> ExampleIterator:
    return self

  def _pull(self) -> None:
    """Reads one more document into the builder, or ends a pass."""
    if getattr(self.documents, 'wants_prefetch', lambda: False)():
      # A view that works ahead (data/tokens.py, config.data.workers > 1) takes more windows.
      windows = getattr(self.documents, 'prefetch_chunks', 1)
      self.documents.prefetch(self.reader.upcoming(PREFETCH_DOCUMENTS * windows))
    index = self.reader.next()
    if index is not None:
      self.builder.add(index, self.documents, self.reader)
      return
    self.builder.end_of_pass(final=not self.repeat)
    if self.repeat:
      self.reader.next_epoch()
    else:
      self._finished = True

  def __next__(self) -> dict[str, np.ndarray]:
    while self.builder.ready() < self.local_batch_size and not self._finished:
      self._pull()
    count = min(self.builder.ready(), self.local_batch_size)
    if count == 0:
      raise StopIteration
    examples = [self.builder.take() for _ in range(count)]
    examples += [self._padding] * (self.local_batch_size - count)
    return stack(examples)

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position between batches, for `set_state`."""
    reader = self.reader
    return plain({'format': self.format.name, 'reader': reader.get_state(),
            'builder': self.builder.get_state(), 'finished': self._finished,
            'fingerprint': self.fingerprint(), 'seed': reader.seed, 'shuffle': reader.shuffle,
            'process_index': reader.process_index, 'process_count': reader.process_count,
            'num_documents': reader.num_documents})

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `get_state()` of an iterator over the same documents and settings."""
    state = _upgrade(state, self.format.name)
    check_fingerprint(state.get('fingerprint'), self.fingerprint(), self.name)
    reader = self.reader
    mine = {'format': self.format.name, 'seed': reader.seed, 'shuffle': reader.shuffle,
            'process_index': reader.process_index, 'process_count': reader.process_count,
            'num_documents': reader.num_documents}
    for key, value in mine.items():
      if state[key] != value:
        raise ValueError(f'Data iterator state has {key}={state[key]!r} but this run has '
                         f'{value!r}; resume with the same data settings and process count.')
    reader.set_state(state['reader'])
    self.builder.set_state(state['builder'])
    self._finished = bool(state['finished'])


def _upgrade(state: dict[str, Any], format_name: str) -> dict[str, Any]:
  """A state saved before the shared reader, in today's layout (packed windows only)."""
  if 'reader' in state:
    return state
  if 'carry' not in state:
    raise ValueError('The saved data position was written by an older sentence-pair iterator '
                     'whose stream differs from this one; start a new workdir to train on pairs.')
  return {'format': format_name, 'reader': {'epoch': state['epoch'], 'index': state['index']},
          'builder': {'carry': [state['carry']] if state['carry'] else [],
                      'epoch_tokens': state['epoch_tokens'], 'stats': state['stats']},
          'finished': False, 'fingerprint': None,
          **{key: state[key] for key in ('seed', 'shuffle', 'process_index', 'process_count',
                                         'num_documents')}}


class ExactPassIterator:
  """One deterministic pass over a whole split, for evaluation.

  Every process builds the split's examples in document order (no shuffle, the format's RNG
  seeded by `seed` alone) and keeps examples i % process_count == process_index, so the
  examples and their order do not depend on the process count. Every process yields
  `num_batches` batches; rows past its examples are all padding (segment_ids 0).
  """

  def __init__(self, fmt: Any, documents: Any, *, local_batch_size: int, process_index: int = 0,
               process_count: int = 1, seed: int = 0, name: str = ''):
    if local_batch_size < 1:
      raise ValueError(f'The local batch size must be positive, got {local_batch_size}.')
    self.format = fmt
    self.documents = documents
    self.local_batch_size = local_batch_size
    self.name = name or getattr(documents, 'name', 'the documents')
    whole = ExampleIterator(fmt, documents, local_batch_size=1, seed=seed, shuffle=False,
                            repeat=False, name=name)
    self._examples = []
    total = 0
    builder = whole.builder
    while True:
      while builder.ready() == 0 and not whole._finished:  # pylint: disable=protected-access
        whole._pull()  # pylint: disable=protected-access
      if builder.ready() == 0:
        break
      example = builder.take()
      if total % process_count == process_index:
        self._examples.append(example)
      total += 1
    if total == 0:
      raise ValueError(f'{self.name} gives no example for an evaluation pass.')
    self.total_examples = total
    self.num_batches = math.ceil(math.ceil(total / process_count) / local_batch_size)
    self.stats = builder.stats
    self._padding = padding_example(fmt.spec(1, fmt.seq_len, getattr(fmt, 'settings', None)),
                                    fmt.vocab.pad_id)
    self._fingerprint = whole.fingerprint
    self._batch = 0

  def __iter__(self) -> ExactPassIterator:
    return self

  def __len__(self) -> int:
    return self.num_batches

  def __next__(self) -> dict[str, np.ndarray]:
    if self._batch >= self.num_batches:
      raise StopIteration
    start = self._batch * self.local_batch_size
    examples = self._examples[start:start + self.local_batch_size]
    self._batch += 1
    return stack(examples + [self._padding] * (self.local_batch_size - len(examples)))

  def get_state(self) -> dict[str, Any]:
    return {'format': self.format.name, 'exact_pass_batch': self._batch,
            'fingerprint': self._fingerprint()}

  def set_state(self, state: dict[str, Any]) -> None:
    check_fingerprint(state.get('fingerprint'), self._fingerprint(), self.name)
    self._batch = int(state['exact_pass_batch'])
