"""Sentence-pair examples for next-sentence (BERT) and sentence-order (ALBERT) prediction.

Follows the construction of BERT's pretraining data: each document is split into
sentences; sentences accumulate into a chunk until a target length (seq_len - 3, or with
probability short_seq_prob a random length in [2, seq_len - 3]); segment A is a random
number of the chunk's leading sentences and B is the rest (true continuation, label 0) or,
half of the time, sentences from another random document of this process's shard (label 1),
in which case the unused continuation is put back to start the next chunk. The longer
segment loses tokens at random from its front or back until the pair fits. For sentence
order, B is always the continuation and the two are swapped half of the time (label 1).

Unlike the reference, a chunk is closed only once it holds two sentences, so no pair is
forced to be random-next; a document with fewer than two sentences yields no pair (it is
counted) and a single sentence left at a document's end is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from data.vocab import Vocab

# A sentence ends after ., ! or ? (optionally closed by quotes or brackets) followed by
# whitespace, or at a line break. Simple on purpose: abbreviations split too.
_SENTENCE_BREAK = re.compile(r'([.!?]["\')\]]*)\s+|[ \t]*\n\s*')
RANDOM_DOCUMENT_TRIES = 10


def split_sentences(text: str) -> list[str]:
  """Sentences of `text`: breaks after ./!/? (plus closing quotes) and whitespace, and at newlines."""
  sentences, start = [], 0
  for match in _SENTENCE_BREAK.finditer(text):
    end = match.end(1) if match.group(1) else match.start()
    sentences.append(text[start:end])
    start = match.end()
  sentences.append(text[start:])
  return [s.strip() for s in sentences if s.strip()]


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int,
                  rng: np.random.Generator) -> None:
  """Removes tokens from the front or back (at random) of the longer segment until both fit."""
  while len(tokens_a) + len(tokens_b) > max_tokens:
    longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def pack_pair(tokens_a: Sequence[int], tokens_b: Sequence[int], vocab: Vocab,
              seq_len: int) -> dict[str, np.ndarray]:
  """`[CLS] A [SEP] B [SEP]` padded to seq_len, with token types, positions and segment ids."""
  tokens = [vocab.cls_id, *tokens_a, vocab.sep_id, *tokens_b, vocab.sep_id]
  length = len(tokens)
  if length > seq_len:
    raise ValueError(f'A pair of {length} tokens does not fit seq_len={seq_len}.')
  example = {
      'tokens': np.full(seq_len, vocab.pad_id, np.int32),
      'segment_ids': np.zeros(seq_len, np.int32),
      'positions': np.zeros(seq_len, np.int32),
      'token_types': np.zeros(seq_len, np.int32),
  }
  example['tokens'][:length] = tokens
  example['segment_ids'][:length] = 1
  example['positions'][:length] = np.arange(length)
  example['token_types'][len(tokens_a) + 2:length] = 1
  return example


class SentencePairIterator:
  """Endless (or one-pass) batches of sentence pairs from this process's share of documents.

  Yields dicts of int32 arrays: tokens, segment_ids, positions, token_types [B, seq_len]
  and next_sentence_label [B]. Process p reads documents i with i % process_count == p.
  The state (pair RNG, epoch, cursor, buffered pairs, stats) is JSON-serialisable and
  restoring it reproduces the following batches exactly. Without repeat the last partial
  batch is dropped.
  """

  def __init__(self, documents: Sequence[str], tokenize: Callable[[str], list[int]],
               vocab: Vocab, seq_len: int, local_batch_size: int, process_index: int,
               process_count: int, seed: int, shuffle: bool, repeat: bool,
               short_seq_prob: float = 0.1, sentence_order: bool = False,
               name: str = 'the training documents'):
    if seq_len < 5:
      raise ValueError(f'config.seq_len must be at least 5 for sentence pairs, got {seq_len}.')
    if local_batch_size < 1:
      raise ValueError(f'The local batch size must be positive, got {local_batch_size}.')
    if not 0.0 <= short_seq_prob <= 1.0:
      raise ValueError(f'config.data.short_seq_prob must be in [0, 1], got {short_seq_prob}.')
    if vocab.cls_id < 0 or vocab.sep_id < 0:
      raise ValueError('Sentence pairs need [CLS] and [SEP] tokens; the vocabulary lacks one.')
    self._documents = documents
    self._tokenize = tokenize
    self._vocab = vocab
    self._seq_len = seq_len
    self._batch_size = local_batch_size
    self._shard = np.arange(process_index, len(documents), process_count)
    self._process = (process_index, process_count)
    self._seed = seed
    self._shuffle = shuffle
    self._repeat = repeat
    self._short_seq_prob = short_seq_prob
    self._sentence_order = sentence_order
    self._name = name
    self._rng = np.random.default_rng([seed, process_index])
    self._epoch = 0
    self._cursor = 0
    self._buffer: list[tuple[list[int], list[int], int]] = []
    self._counts = {'documents': 0, 'skipped_single_sentence': 0, 'pairs': 0, 'random_next': 0,
                    'pass_multi_sentence': 0}

  # -- state ---------------------------------------------------------------------------

  @property
  def stats(self) -> dict[str, Any]:
    """Documents read, documents skipped for having < 2 sentences, pairs, and the fraction
    of pairs labelled 1 (random next; for sentence order, swapped)."""
    counts = {key: value for key, value in self._counts.items() if key != 'pass_multi_sentence'}
    counts['random_next_fraction'] = counts['random_next'] / max(counts['pairs'], 1)
    return counts

  def get_state(self) -> dict[str, Any]:
    return {'rng': self._rng.bit_generator.state, 'epoch': self._epoch, 'cursor': self._cursor,
            'buffer': [[list(a), list(b), label] for a, b, label in self._buffer],
            'counts': dict(self._counts)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._rng.bit_generator.state = state['rng']
    self._epoch = int(state['epoch'])
    self._cursor = int(state['cursor'])
    self._buffer = [(list(a), list(b), int(label)) for a, b, label in state['buffer']]
    self._counts = dict(state['counts'])

  # -- iteration -----------------------------------------------------------------------

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    while len(self._buffer) < self._batch_size:
      if not self._read_next_document():
        raise StopIteration
    pairs, self._buffer = self._buffer[:self._batch_size], self._buffer[self._batch_size:]
    examples = [pack_pair(a, b, self._vocab, self._seq_len) for a, b, _ in pairs]
    batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
    batch['next_sentence_label'] = np.asarray([label for _, _, label in pairs], np.int32)
    return batch

  def _order(self) -> np.ndarray:
    if not self._shuffle:
      return self._shard
    return np.random.default_rng([self._seed, self._process[0], self._epoch]).permutation(
        self._shard)

  def _read_next_document(self) -> bool:
    """Adds the next document's pairs to the buffer; False once a single pass has ended."""
    if len(self._shard) == 0:
      raise ValueError(f'{self._name}: process {self._process[0]} of {self._process[1]} has no '
                       'documents to read.')
    if self._cursor == len(self._shard):
      if self._counts['pass_multi_sentence'] == 0:
        raise ValueError(f'{self._name}: no document of process {self._process[0]}\'s '
                         f'{len(self._shard)} has two sentences; NSP/SOP needs multi-sentence '
                         'documents.')
      if not self._repeat:
        return False
      self._epoch += 1
      self._cursor = 0
      self._counts['pass_multi_sentence'] = 0
    document_index = int(self._order()[self._cursor])
    self._cursor += 1
    self._counts['documents'] += 1
    sentences = self._sentences(document_index)
    if len(sentences) < 2:
      self._counts['skipped_single_sentence'] += 1
      return True
    self._counts['pass_multi_sentence'] += 1
    for tokens_a, tokens_b, label in self._pairs(document_index, sentences):
      self._buffer.append((tokens_a, tokens_b, label))
      self._counts['pairs'] += 1
      self._counts['random_next'] += label
    return True

  def _sentences(self, document_index: int) -> list[list[int]]:
    tokenized = (self._tokenize(s) for s in split_sentences(self._documents[document_index]))
    return [list(tokens) for tokens in tokenized if len(tokens)]

  def _pairs(self, document_index: int, sentences: list[list[int]]):
    """The pairs of one document, as BERT's create_instances_from_document builds them."""
    rng = self._rng
    max_tokens = self._seq_len - 3
    target = max_tokens
    if rng.random() < self._short_seq_prob:
      target = int(rng.integers(2, max_tokens + 1))
    chunk: list[list[int]] = []
    chunk_length = 0
    i = 0
    while i < len(sentences):
      chunk.append(sentences[i])
      chunk_length += len(sentences[i])
      last = i == len(sentences) - 1
      if len(chunk) >= 2 and (last or chunk_length >= target):
        a_end = int(rng.integers(1, len(chunk)))
        tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
        label = 0
        tokens_b: list[int] = []
        if not self._sentence_order and rng.random() < 0.5:
          tokens_b = self._random_segment(document_index, target - len(tokens_a))
          if tokens_b:
            label = 1
            i -= len(chunk) - a_end  # the unused continuation starts the next chunk
        if not tokens_b:
          tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
        truncate_pair(tokens_a, tokens_b, max_tokens, rng)
        if self._sentence_order and rng.random() < 0.5:
          tokens_a, tokens_b, label = tokens_b, tokens_a, 1
        yield tokens_a, tokens_b, label
        chunk, chunk_length = [], 0
      elif last:
        chunk, chunk_length = [], 0
      i += 1

  def _random_segment(self, document_index: int, target_length: int) -> list[int]:
    """Sentences from a random other document of the shard, from a random start, up to
    target_length tokens (at least one sentence); [] when no other usable document exists."""
    rng = self._rng
    for _ in range(RANDOM_DOCUMENT_TRIES):
      other = int(self._shard[rng.integers(len(self._shard))])
      if other == document_index:
        continue
      sentences = split_sentences(self._documents[other])
      if not sentences:
        continue
      tokens: list[int] = []
      for sentence in sentences[int(rng.integers(len(sentences))):]:
        tokens.extend(self._tokenize(sentence))
        if len(tokens) >= target_length:
          break
      if tokens:
        return tokens
    return []
