"""Format `packed`: documents laid end to end and cut into windows of exactly seq_len tokens.

Each document becomes [bos] + pieces + [eos]; no token is lost or repeated. A document cut
by a window's end continues in the next window as a new segment whose positions restart at
0. Examples: int32 `tokens`, `segment_ids` (1, 2, ... per document chunk in a window; 0 only
for padding) and `positions` (0 at each chunk's start).

With `config.data.attend_across_documents` (GPT-2's and RoBERTa's FULL-SENTENCES packing)
a window is instead one segment: its documents, still delimited by [bos]/[eos], see one
another, positions run 0..seq_len-1, and a scalar `lengths` (real tokens) lets the model
attend by length and `is_causal` with no dense mask. The targets are unchanged: a causal LM
still never predicts across a segment boundary, which now only padding makes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data.formats.base import Example, Spec, token_spec
from data.formats.registry import register
from data.vocab import Vocab


DEFAULTS = {'attend_across_documents': False}


@register('packed', defaults=DEFAULTS)
class Packed:
  """Packed windows for causal, masked and permutation LMs."""

  name = 'packed'
  unit = 'document'

  def __init__(self, vocab: Vocab, seq_len: int, settings: Any = None):
    across = (settings or {}).get('attend_across_documents', False)
    if not isinstance(across, bool):
      raise ValueError(f'config.data.attend_across_documents must be True or False, got {across!r}.')
    if seq_len < 1:
      raise ValueError(f'config.seq_len must be positive, got {seq_len}.')
    if vocab.bos_id < 0 or vocab.eos_id < 0 or vocab.pad_id < 0:
      raise ValueError('The tokenizer has no pad, bos or eos piece, which packing needs; train '
                       'one by leaving config.data.tokenizer empty.')
    self.vocab = vocab
    self.seq_len = seq_len
    self.settings = {'attend_across_documents': across}

  @classmethod
  def spec(cls, batch_size: int, seq_len: int, settings: Any = None) -> Spec:
    spec = token_spec(batch_size, seq_len)
    if (settings or {}).get('attend_across_documents', False):
      spec['lengths'] = ((batch_size,), np.int32)
    return spec

  def builder(self, seed: int, process_index: int = 0) -> PackedBuilder:
    del seed, process_index  # packing draws no random numbers
    return PackedBuilder(self.vocab, self.seq_len, self.settings['attend_across_documents'])


class PackedBuilder:
  """Pending documents (the first possibly part-read) and the windows cut from them."""

  def __init__(self, vocab: Vocab, seq_len: int, one_segment: bool = False):
    self._one_segment = one_segment
    self._bos, self._eos, self._pad = vocab.bos_id, vocab.eos_id, vocab.pad_id
    self.seq_len = seq_len
    self._pending: list[np.ndarray] = []
    self._pending_tokens = 0
    self._flush = False
    self._pass_tokens = 0
    self._where = ''
    self.stats = {'documents': 0, 'skipped_empty': 0}

  def ready(self) -> int:
    complete = self._pending_tokens // self.seq_len
    return complete + (1 if self._flush and self._pending_tokens % self.seq_len else 0)

  def add(self, index: int, documents: Any, reader: Any) -> None:
    self._where = reader.where
    self.stats['documents'] += 1
    ids = documents.document(index)
    if len(ids) == 0:
      self.stats['skipped_empty'] += 1
      return
    self._pass_tokens += len(ids)
    tokens = np.empty(len(ids) + 2, np.int32)
    tokens[0], tokens[-1] = self._bos, self._eos
    tokens[1:-1] = ids
    self._pending.append(tokens)
    self._pending_tokens += len(tokens)

  def take(self) -> Example:
    tokens = np.full(self.seq_len, self._pad, np.int32)
    segment_ids = np.zeros(self.seq_len, np.int32)
    positions = np.zeros(self.seq_len, np.int32)
    filled, segment = 0, 0
    while filled < self.seq_len and self._pending:
      piece = self._pending[0]
      take = min(len(piece), self.seq_len - filled)
      segment += 1
      tokens[filled:filled + take] = piece[:take]
      segment_ids[filled:filled + take] = segment
      positions[filled:filled + take] = np.arange(take, dtype=np.int32)
      filled += take
      if take == len(piece):
        self._pending.pop(0)
      else:
        self._pending[0] = piece[take:]
    self._pending_tokens -= filled
    if self._one_segment:
      segment_ids[:filled] = 1
      positions[:filled] = np.arange(filled, dtype=np.int32)
      return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions,
              'lengths': np.int32(filled)}
    return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions}

  def end_of_pass(self, final: bool) -> None:
    if final:
      self._flush = True
      return
    if self._pass_tokens == 0:
      raise ValueError(f'Every document in {self._where} encodes to nothing; check the corpus.')
    self._pass_tokens = 0

  def get_state(self) -> dict[str, Any]:
    # Arrays, not lists: the reader's plain() turns them into lists in C, so capturing the
    # position (every batch, with prefetch) costs no Python loop over the waiting tokens.
    return {'carry': list(self._pending),
            'epoch_tokens': self._pass_tokens, 'flush': self._flush, 'stats': dict(self.stats)}

  def set_state(self, state: dict[str, Any]) -> None:
    carry = state['carry']
    if carry and not isinstance(carry[0], list):  # a single part-read document
      carry = [carry]
    self._pending = [np.asarray(piece, np.int32) for piece in carry]
    self._pending_tokens = sum(len(piece) for piece in self._pending)
    self._pass_tokens = int(state['epoch_tokens'])
    self._flush = bool(state.get('flush', False))
    self.stats = {key: int(value) for key, value in state['stats'].items()}
