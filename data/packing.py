"""Packing of documents into fixed-length windows with segment ids, positions and exact resume.

Each document becomes [bos] + pieces + [eos]; documents are laid end to end and cut into
windows of exactly seq_len tokens, so no token is lost or repeated. A document cut by a
window's end continues in the next window as a new segment whose positions restart at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data.vocab import Vocab

Batch = dict[str, np.ndarray]


class PackedIterator:
  """Batches of packed windows from this process's shard of the documents.

  Process `p` of `n` reads documents i with i % n == p, in an order that is a deterministic
  function of (seed, epoch). Batches are dicts of int32 [local_batch_size, seq_len] arrays:
  `tokens`, `segment_ids` (1, 2, ... per document chunk in a window; 0 only for padding) and
  `positions` (0 at each chunk's start). With repeat=False one pass is made and the last
  batch is padded with pad tokens and segment id 0.

  The state between batches is (epoch, index into the epoch's order, the unread tail of a
  document cut at a window's end), so `get_state`/`set_state` resume exactly.
  """

  def __init__(self, documents: Sequence[str], tokenize: Callable[[str], list[int]], vocab: Vocab,
               *, seq_len: int, local_batch_size: int, process_index: int = 0,
               process_count: int = 1, seed: int = 0, shuffle: bool = True, repeat: bool = True):
    if seq_len < 1 or local_batch_size < 1:
      raise ValueError(f'seq_len ({seq_len}) and local_batch_size ({local_batch_size}) must be '
                       'positive.')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} is not in [0, {process_count}).')
    if vocab.bos_id < 0 or vocab.eos_id < 0 or vocab.pad_id < 0:
      raise ValueError('The tokenizer has no pad, bos or eos piece, which packing needs; train '
                       'one by leaving config.data.tokenizer empty.')
    shard_size = len(range(process_index, len(documents), process_count))
    if shard_size == 0:
      raise ValueError(f'{len(documents)} documents cannot give each of {process_count} '
                       'processes one; use a larger corpus or split.')
    self._documents = documents
    self._tokenize = tokenize
    self._bos, self._eos, self._pad = vocab.bos_id, vocab.eos_id, vocab.pad_id
    self.seq_len = seq_len
    self.local_batch_size = local_batch_size
    self.process_index = process_index
    self.process_count = process_count
    self.seed = seed
    self.shuffle = shuffle
    self.repeat = repeat
    self._shard = np.arange(process_index, len(documents), process_count, dtype=np.int64)
    self._order_epoch = -1
    self._order = self._shard
    self._epoch = 0
    self._index = 0
    self._carry = np.zeros(0, np.int32)
    self._epoch_tokens = 0
    self.stats = {'documents': 0, 'skipped_empty': 0}

  def __iter__(self) -> PackedIterator:
    return self

  def _epoch_order(self) -> np.ndarray:
    if self._order_epoch != self._epoch:
      if self.shuffle:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._order = self._shard[rng.permutation(len(self._shard))]
      else:
        self._order = self._shard
      self._order_epoch = self._epoch
    return self._order

  def _next_document(self) -> np.ndarray | None:
    """The next non-empty document as [bos] + ids + [eos]; None at the end of a finite pass."""
    while True:
      order = self._epoch_order()
      if self._index >= len(order):
        if not self.repeat:
          return None
        if self._epoch_tokens == 0:
          raise ValueError(f'Every document in shard {self.process_index} of '
                           f'{self.process_count} encodes to nothing; check the corpus.')
        self._epoch += 1
        self._index = 0
        self._epoch_tokens = 0
        continue
      text = self._documents[int(order[self._index])]
      self._index += 1
      self.stats['documents'] += 1
      ids = self._tokenize(text)
      if len(ids) == 0:
        self.stats['skipped_empty'] += 1
        continue
      self._epoch_tokens += len(ids)
      tokens = np.empty(len(ids) + 2, np.int32)
      tokens[0], tokens[-1] = self._bos, self._eos
      tokens[1:-1] = ids
      return tokens

  def _fill_window(self, tokens: np.ndarray, segment_ids: np.ndarray,
                   positions: np.ndarray) -> int:
    """Fills one window's rows in place; returns how many tokens it holds (< seq_len at end)."""
    filled, segment = 0, 0
    while filled < self.seq_len:
      if len(self._carry) == 0:
        document = self._next_document()
        if document is None:
          break
        self._carry = document
      take = min(len(self._carry), self.seq_len - filled)
      segment += 1
      tokens[filled:filled + take] = self._carry[:take]
      segment_ids[filled:filled + take] = segment
      positions[filled:filled + take] = np.arange(take, dtype=np.int32)
      self._carry = self._carry[take:]
      filled += take
    return filled

  def __next__(self) -> Batch:
    shape = (self.local_batch_size, self.seq_len)
    tokens = np.full(shape, self._pad, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    for row in range(self.local_batch_size):
      filled = self._fill_window(tokens[row], segment_ids[row], positions[row])
      if filled < self.seq_len:  # Only a finite pass runs out; later rows stay padding.
        if row == 0 and filled == 0:
          raise StopIteration
        break
    return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions}

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position between batches, for `set_state`."""
    return {'epoch': self._epoch, 'index': self._index, 'carry': self._carry.tolist(),
            'epoch_tokens': self._epoch_tokens, 'stats': dict(self.stats),
            'seed': self.seed, 'shuffle': self.shuffle,
            'process_index': self.process_index, 'process_count': self.process_count,
            'num_documents': len(self._documents)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `get_state()` of an iterator over the same documents and settings."""
    for key in ('seed', 'shuffle', 'process_index', 'process_count', 'num_documents'):
      mine = len(self._documents) if key == 'num_documents' else getattr(self, key)
      if state[key] != mine:
        raise ValueError(f'Data iterator state has {key}={state[key]!r} but this run has '
                         f'{mine!r}; resume with the same data settings and process count.')
    self._epoch = int(state['epoch'])
    self._index = int(state['index'])
    self._carry = np.asarray(state['carry'], np.int32)
    self._epoch_tokens = int(state['epoch_tokens'])
    self.stats = {key: int(value) for key, value in state['stats'].items()}
