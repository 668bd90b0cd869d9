"""Formats `sentence_pairs` (BERT's NSP) and `sentence_order_pairs` (ALBERT's SOP).

Follows the construction of BERT's pretraining data (create_instances_from_document): each
document is split into sentences; sentences accumulate into a chunk until a target length
(seq_len - 3, or with probability short_seq_prob a random length in [2, seq_len - 3]);
segment A is a random number of the chunk's leading sentences and B is the rest (true
continuation, label 0) or, half of the time, sentences from another random document of the
shard (label 1), in which case the unused continuation is put back to start the next chunk.
The longer segment loses tokens at random from its front or back until the pair fits. For
sentence order, B is always the continuation and the two are swapped half of the time.

Unlike the reference, a chunk is closed only once it holds two sentences, so no pair is
forced to be random-next by a short chunk, and a document with fewer than two sentences yields
no pair (it is counted). A document's last sentence is never dropped: when it would be left
alone it joins the chunk before it, and when a random-next pair would put back only it,
segment A takes it too (the reference pairs it alone with a forced random segment, which
skews the labels).

Examples: int32 `tokens` ([CLS] A [SEP] B [SEP], padded), `segment_ids` (1 on the pair, 0 on
padding), `positions`, `token_types` (0 for [CLS] A [SEP], 1 for B [SEP]) and a scalar
`next_sentence_label`, and the scalar `lengths` (real tokens: the model attends by length,
with no dense mask).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from data.formats.base import Example, Spec, token_spec
from data.formats.registry import register
from data.vocab import Vocab

# A sentence ends after ., ! or ? (optionally closed by quotes or brackets) followed by
# whitespace, or at a line break. Simple on purpose: abbreviations split too.
_SENTENCE_BREAK = re.compile(r'([.!?]["\')\]]*)\s+|[ \t]*\n\s*')
RANDOM_DOCUMENT_TRIES = 10
DEFAULTS = {'short_seq_prob': 0.1}  # chance of a shorter target length (BERT)


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
  length = len(tokens_a) + len(tokens_b) + 3
  if length > seq_len:
    raise ValueError(f'A pair of {length} tokens does not fit seq_len={seq_len}.')
  tokens = np.full(seq_len, vocab.pad_id, np.int32)
  tokens[0] = vocab.cls_id
  tokens[1:len(tokens_a) + 1] = tokens_a
  tokens[len(tokens_a) + 1] = vocab.sep_id
  tokens[len(tokens_a) + 2:length - 1] = tokens_b
  tokens[length - 1] = vocab.sep_id
  positions = np.zeros(seq_len, np.int32)
  positions[:length] = np.arange(length)
  token_types = np.zeros(seq_len, np.int32)
  token_types[len(tokens_a) + 2:length] = 1
  segment_ids = (np.arange(seq_len) < length).astype(np.int32)
  return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions,
          'token_types': token_types, 'lengths': np.int32(length)}


class _Pairs:
  """Sentence pairs; `sentence_order` picks SOP's swap instead of NSP's random next."""

  unit = 'sentences'
  sentence_order = False

  def __init__(self, vocab: Vocab, seq_len: int, settings: Any = None):
    short_seq_prob = (settings or {}).get('short_seq_prob', DEFAULTS['short_seq_prob'])
    if seq_len < 5:
      raise ValueError(f'config.seq_len must be at least 5 for sentence pairs, got {seq_len}.')
    if not 0.0 <= short_seq_prob <= 1.0:
      raise ValueError(f'config.data.short_seq_prob must be in [0, 1], got {short_seq_prob}.')
    if vocab.cls_id < 0 or vocab.sep_id < 0:
      raise ValueError('Sentence pairs need [CLS] and [SEP] tokens; the vocabulary lacks one.')
    self.vocab = vocab
    self.seq_len = seq_len
    self.short_seq_prob = float(short_seq_prob)

  @classmethod
  def spec(cls, batch_size: int, seq_len: int, settings: Any = None) -> Spec:
    del settings
    spec = token_spec(batch_size, seq_len)
    spec['token_types'] = ((batch_size, seq_len), np.int32)
    spec['next_sentence_label'] = ((batch_size,), np.int32)
    spec['lengths'] = ((batch_size,), np.int32)  # one segment then padding: no dense mask
    return spec

  def builder(self, seed: int, process_index: int = 0) -> PairBuilder:
    return PairBuilder(self, np.random.default_rng([seed, process_index]))


@register('sentence_pairs', defaults=DEFAULTS)
class SentencePairs(_Pairs):
  """Pairs whose B is the true continuation or (label 1) from another document: NSP."""

  name = 'sentence_pairs'


@register('sentence_order_pairs', defaults=DEFAULTS)
class SentenceOrderPairs(_Pairs):
  """Pairs of consecutive segments, swapped half of the time (label 1): SOP."""

  name = 'sentence_order_pairs'
  sentence_order = True


class PairBuilder:
  """The pairs of the documents read so far, and the pair RNG."""

  def __init__(self, fmt: _Pairs, rng: np.random.Generator):
    self._format = fmt
    self._rng = rng
    self._buffer: list[tuple[list[int], list[int], int]] = []
    self._head = 0
    self._where = ''
    self._counts = {'documents': 0, 'skipped_single_sentence': 0, 'pairs': 0, 'random_next': 0,
                    'pass_multi_sentence': 0}

  @property
  def stats(self) -> dict[str, Any]:
    """Documents read, documents skipped for having < 2 sentences, pairs, and the fraction
    of pairs labelled 1 (random next; for sentence order, swapped)."""
    counts = {key: value for key, value in self._counts.items() if key != 'pass_multi_sentence'}
    counts['random_next_fraction'] = counts['random_next'] / max(counts['pairs'], 1)
    return counts

  def ready(self) -> int:
    return len(self._buffer) - self._head

  def take(self) -> Example:
    tokens_a, tokens_b, label = self._buffer[self._head]
    self._head += 1
    if self._head > 64 and self._head * 2 > len(self._buffer):
      del self._buffer[:self._head]
      self._head = 0
    example = pack_pair(tokens_a, tokens_b, self._format.vocab, self._format.seq_len)
    example['next_sentence_label'] = np.asarray(label, np.int32)
    return example

  def end_of_pass(self, final: bool) -> None:
    del final
    if self._counts['pass_multi_sentence'] == 0:
      raise ValueError(f'no document of {self._where} has two sentences; NSP/SOP needs '
                       'multi-sentence documents.')
    self._counts['pass_multi_sentence'] = 0

  def get_state(self) -> dict[str, Any]:
    return {'rng': self._rng.bit_generator.state,
            'buffer': [[list(a), list(b), label] for a, b, label in self._buffer[self._head:]],
            'counts': dict(self._counts)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._rng.bit_generator.state = state['rng']
    self._buffer = [(list(a), list(b), int(label)) for a, b, label in state['buffer']]
    self._head = 0
    self._counts = {key: int(value) for key, value in state['counts'].items()}

  def add(self, index: int, documents: Any, reader: Any) -> None:
    self._where = reader.where
    self._counts['documents'] += 1
    sentences = [np.asarray(ids).tolist() for ids in documents.sentences(index) if len(ids)]
    if len(sentences) < 2:
      self._counts['skipped_single_sentence'] += 1
      return
    self._counts['pass_multi_sentence'] += 1
    for tokens_a, tokens_b, label in self._pairs(index, sentences, documents, reader):
      self._buffer.append((tokens_a, tokens_b, label))
      self._counts['pairs'] += 1
      self._counts['random_next'] += label

  def _pairs(self, index: int, sentences: list[list[int]], documents: Any, reader: Any):
    """The pairs of one document, as BERT's create_instances_from_document builds them."""
    rng = self._rng
    sentence_order = self._format.sentence_order
    max_tokens = self._format.seq_len - 3
    target = max_tokens
    if rng.random() < self._format.short_seq_prob:
      target = int(rng.integers(2, max_tokens + 1))
    chunk: list[list[int]] = []
    chunk_length = 0
    i = 0
    while i < len(sentences):
      chunk.append(sentences[i])
      chunk_length += len(sentences[i])
      last = i == len(sentences) - 1
      if len(chunk) >= 2 and (last or chunk_length >= target):
        if i == len(sentences) - 2:  # the last sentence would be left alone: it joins
          i += 1
          chunk.append(sentences[i])
          chunk_length += len(sentences[i])
        a_end = int(rng.integers(1, len(chunk)))
        tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
        label = 0
        tokens_b: list[int] = []
        if not sentence_order and rng.random() < 0.5:
          split = a_end
          if a_end == len(chunk) - 1 and i == len(sentences) - 1:
            # Only the document's last sentence would be put back, to be left alone: A takes
            # it too (the reference would pair it with a forced random segment).
            a_end = len(chunk)
            tokens_a = [t for sentence in chunk for t in sentence]
          tokens_b = self._random_segment(index, target - len(tokens_a), documents, reader)
          if tokens_b:
            label = 1
            i -= len(chunk) - a_end  # the unused continuation starts the next chunk
          elif a_end != split:  # no other document to draw from: B is the actual next after all
            a_end = split
            tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
        if not tokens_b:
          tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
        truncate_pair(tokens_a, tokens_b, max_tokens, rng)
        if sentence_order and rng.random() < 0.5:
          tokens_a, tokens_b, label = tokens_b, tokens_a, 1
        yield tokens_a, tokens_b, label
        chunk, chunk_length = [], 0
      elif last:
        chunk, chunk_length = [], 0
      i += 1

  def _random_segment(self, index: int, target_length: int, documents: Any,
                      reader: Any) -> list[int]:
    """Sentences from a random other document of the shard, from a random start, up to
    target_length tokens (at least one sentence); [] when no other usable document exists."""
    rng = self._rng
    for _ in range(RANDOM_DOCUMENT_TRIES):
      other = reader.random_document(rng)
      if other == index:
        continue
      sentences = documents.sentences(other)
      if not len(sentences):
        continue
      tokens: list[int] = []
      for position in range(int(rng.integers(len(sentences))), len(sentences)):
        tokens.extend(np.asarray(sentences[position]).tolist())
        if len(tokens) >= target_length:
          break
      if tokens:
        return tokens
    return []
