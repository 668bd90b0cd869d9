"""Packed windows over the shared reader, with the constructor older callers use.

The format itself lives in data/formats/packed.py and the reader in data/reader.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from data.formats.packed import Packed
from data.reader import ExampleIterator
from data.tokens import EncodedDocuments
from data.vocab import Vocab


class PackedIterator(ExampleIterator):
  """Batches of packed windows from this process's shard of `documents` (see ExampleIterator).

  Process `p` of `n` reads documents i with i % n == p, in an order that is a deterministic
  function of (seed, epoch). With repeat=False one pass is made and the last batch is padded
  with pad tokens and segment id 0.
  """

  def __init__(self, documents: Sequence[str], tokenize: Callable[[str], list[int]],
               vocab: Vocab, *, seq_len: int, local_batch_size: int, process_index: int = 0,
               process_count: int = 1, seed: int = 0, shuffle: bool = True, repeat: bool = True,
               attend_across_documents: bool = False):
    if seq_len < 1 or local_batch_size < 1:
      raise ValueError(f'seq_len ({seq_len}) and local_batch_size ({local_batch_size}) must be '
                       'positive.')
    fmt = Packed(vocab, seq_len, {'attend_across_documents': attend_across_documents})
    super().__init__(fmt, EncodedDocuments(documents, tokenize),
                     local_batch_size=local_batch_size, process_index=process_index,
                     process_count=process_count, seed=seed, shuffle=shuffle, repeat=repeat)
