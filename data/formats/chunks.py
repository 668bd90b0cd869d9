"""Format `document_chunks`: one chunk of one document per row, then padding.

T5's deshuffling reads a document at a time (`select_random_chunk`, then
`split_tokens_to_inputs_length`, with no `reduce_concat_tokens`): each document's pieces are
cut into consecutive chunks of `chunk_length(seq_len)` = (seq_len - 2) // 2 tokens, the last
one shorter, and each chunk is one row. A chunk fills at most half the row less one, so an
objective can follow it with a target of the same length, each closed by EOS. No bos/eos is
added (T5 adds none; the objective appends EOS). Examples: int32 `tokens`, `segment_ids` (1 on
the chunk, 0 on padding) and `positions` (0 at the chunk's start), as `packed` gives them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data.formats.base import Example, Spec, token_spec
from data.formats.registry import register
from data.vocab import Vocab


def chunk_length(seq_len: int) -> int:
  """Tokens of a chunk: room for it and a target as long, each with an EOS, in seq_len."""
  return (seq_len - 2) // 2


@register('document_chunks')
class DocumentChunks:
  """Rows of one document chunk each, for objectives whose target repeats the input."""

  name = 'document_chunks'
  unit = 'document'

  def __init__(self, vocab: Vocab, seq_len: int, settings: Any = None):
    del settings
    if seq_len < 4:
      raise ValueError(f'config.seq_len must be at least 4 for document chunks, got {seq_len}.')
    self.vocab = vocab
    self.seq_len = seq_len

  @classmethod
  def spec(cls, batch_size: int, seq_len: int, settings: Any = None) -> Spec:
    del settings
    return token_spec(batch_size, seq_len)

  def builder(self, seed: int, process_index: int = 0) -> ChunkBuilder:
    del seed, process_index  # chunking draws no random numbers
    return ChunkBuilder(self.vocab.pad_id, self.seq_len)


class ChunkBuilder:
  """The chunks of the documents read so far that are not yet taken."""

  def __init__(self, pad_id: int, seq_len: int):
    self._pad = pad_id
    self.seq_len = seq_len
    self.chunk_len = chunk_length(seq_len)
    self._pending: list[np.ndarray] = []
    self._pass_tokens = 0
    self._where = ''
    self.stats = {'documents': 0, 'skipped_empty': 0, 'chunks': 0}

  def ready(self) -> int:
    return len(self._pending)

  def add(self, index: int, documents: Any, reader: Any) -> None:
    self._where = reader.where
    self.stats['documents'] += 1
    ids = np.asarray(documents.document(index), np.int32)
    if len(ids) == 0:
      self.stats['skipped_empty'] += 1
      return
    self._pass_tokens += len(ids)
    chunks = [ids[start:start + self.chunk_len] for start in range(0, len(ids), self.chunk_len)]
    self._pending.extend(chunks)
    self.stats['chunks'] += len(chunks)

  def take(self) -> Example:
    chunk = self._pending.pop(0)
    tokens = np.full(self.seq_len, self._pad, np.int32)
    tokens[:len(chunk)] = chunk
    segment_ids = (np.arange(self.seq_len) < len(chunk)).astype(np.int32)
    positions = np.where(segment_ids > 0, np.arange(self.seq_len), 0).astype(np.int32)
    return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions}

  def end_of_pass(self, final: bool) -> None:
    if final:
      return
    if self._pass_tokens == 0:
      raise ValueError(f'Every document in {self._where} encodes to nothing; check the corpus.')
    self._pass_tokens = 0

  def get_state(self) -> dict[str, Any]:
    return {'carry': list(self._pending), 'epoch_tokens': self._pass_tokens,
            'stats': dict(self.stats)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._pending = [np.asarray(chunk, np.int32) for chunk in state['carry']]
    self._pass_tokens = int(state['epoch_tokens'])
    self.stats = {key: int(value) for key, value in state['stats'].items()}
