"""Sentence pairs over the shared reader, with the constructor older callers use.

The formats live in data/formats/pairs.py (with `split_sentences`, `truncate_pair` and
`pack_pair`) and the reader in data/reader.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from data.formats.pairs import (SentenceOrderPairs, SentencePairs, pack_pair,  # noqa: F401
                                split_sentences, truncate_pair)
from data.reader import ExampleIterator
from data.tokens import EncodedDocuments
from data.vocab import Vocab


class SentencePairIterator(ExampleIterator):
  """Endless (or one-pass) batches of sentence pairs from this process's share of documents.

  Yields dicts of int32 arrays: tokens, segment_ids, positions, token_types [B, seq_len]
  and next_sentence_label [B]. Process p reads documents i with i % process_count == p.
  """

  def __init__(self, documents: Sequence[str], tokenize: Callable[[str], list[int]],
               vocab: Vocab, seq_len: int, local_batch_size: int, process_index: int,
               process_count: int, seed: int, shuffle: bool, repeat: bool,
               short_seq_prob: float = 0.1, sentence_order: bool = False,
               name: str = 'the training documents'):
    fmt = (SentenceOrderPairs if sentence_order else SentencePairs)(
        vocab, seq_len, {'short_seq_prob': short_seq_prob})
    super().__init__(fmt, EncodedDocuments(documents, tokenize),
                     local_batch_size=local_batch_size, process_index=process_index,
                     process_count=process_count, seed=seed, shuffle=shuffle, repeat=repeat,
                     name=name)
