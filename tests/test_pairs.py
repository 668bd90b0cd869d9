"""Sentence pairs: labels, continuity of true pairs, layout, single-sentence documents, resume."""


import numpy as np
import pytest

from data.vocab import Vocab
from tests import helpers

SPECIAL = 7


def _corpus(num_docs: int, seed: int = 0, single_every: int = 0):
  """Documents of 'x{doc}_{sentence}_{word}' words; every word has its own id, given in
  corpus order, so a token tells its document and consecutive text has consecutive ids. Every `single_every`-th document has one sentence."""
  rng = np.random.default_rng(seed)
  documents, ids = [], {}
  for d in range(num_docs):
    num_sentences = 1 if single_every and d % single_every == 0 else int(rng.integers(2, 12))
    sentences = []
    for s in range(num_sentences):
      words = [f'x{d}_{s}_{w}' for w in range(int(rng.integers(3, 25)))]
      for word in words:
        ids[word] = SPECIAL + len(ids)
      sentences.append(' '.join(words) + '.')
    documents.append(' '.join(sentences))
  size = SPECIAL + len(ids)
  is_special = np.zeros(size, np.bool_)
  is_special[:SPECIAL] = True
  vocab = Vocab(size=size, pad_id=0, unk_id=1, bos_id=2, eos_id=3, cls_id=4, sep_id=5, mask_id=6,
                is_special=is_special, word_start=~is_special)
  where = {token: tuple(map(int, word[1:].split('_'))) for word, token in ids.items()}
  tokenize = lambda text: [ids[word.strip('.')] for word in text.split()]
  return documents, tokenize, vocab, where


def _iterator(documents, tokenize, vocab, **kwargs):
  settings = dict(seq_len=64, local_batch_size=16, process_index=0, process_count=1, seed=0,
                  shuffle=True, repeat=False)
  settings.update(kwargs)
  return helpers.pair_iterator(documents, tokenize, vocab, **settings)


def _segments(example_tokens, token_types, vocab):
  """(A, B) token lists of one example, checking the [CLS] A [SEP] B [SEP] layout."""
  real = example_tokens[example_tokens != vocab.pad_id]
  seps = np.flatnonzero(real == vocab.sep_id)
  assert real[0] == vocab.cls_id and len(seps) == 2 and seps[1] == len(real) - 1
  assert (token_types[:seps[0] + 1] == 0).all() and (token_types[seps[0] + 1:len(real)] == 1).all()
  assert (token_types[len(real):] == 0).all()
  return list(real[1:seps[0]]), list(real[seps[0] + 1:-1])


def test_layout_labels_and_true_continuations():
  documents, tokenize, vocab, where = _corpus(120)
  iterator = _iterator(documents, tokenize, vocab, repeat=True)
  batches = [next(iterator) for _ in range(60)]
  labels = np.concatenate([b['next_sentence_label'] for b in batches])
  assert set(labels) <= {0, 1} and abs(labels.mean() - 0.5) < 0.05
  for batch in batches:
    assert batch['tokens'].shape == (16, 64)
    for row in range(16):
      tokens, types = batch['tokens'][row], batch['token_types'][row]
      length = int((tokens != vocab.pad_id).sum())
      np.testing.assert_array_equal(batch['segment_ids'][row], np.arange(64) < length)
      np.testing.assert_array_equal(batch['positions'][row][:length], np.arange(length))
      assert (batch['positions'][row][length:] == 0).all()
      a, b = _segments(tokens, types, vocab)
      assert a and b and len(a) + len(b) + 3 <= 64
      for segment in (a, b):  # ids run in corpus order: a segment is a contiguous run
        assert segment == list(range(segment[0], segment[0] + len(segment)))
      if batch['next_sentence_label'][row] == 0:
        assert where[a[0]][0] == where[b[0]][0] and b[0] > a[-1]
      else:
        assert where[a[0]][0] != where[b[0]][0]
  stats = iterator.stats
  assert stats['pairs'] >= 960 and abs(stats['random_next_fraction'] - 0.5) < 0.05


def test_a_shard_of_one_document_pairs_true_continuations_and_never_an_empty_b():
  """With no other document to draw a random next segment from, B is the actual next one:
  every pair is labelled IsNext, and B is never empty (it was when A had taken the chunk)."""
  documents, tokenize, vocab, where = _corpus(1, seed=3)
  iterator = _iterator(documents, tokenize, vocab, repeat=True, seq_len=32)
  for _ in range(25):
    batch = next(iterator)
    assert (batch['next_sentence_label'] == 0).all()
    for row in range(16):
      a, b = _segments(batch['tokens'][row], batch['token_types'][row], vocab)
      assert a and b and b[0] > a[-1]
      assert b == list(range(b[0], b[0] + len(b)))  # the actual continuation, in order


def test_sentence_order_swaps_half_and_keeps_true_neighbours():
  documents, tokenize, vocab, where = _corpus(80, seed=1)
  iterator = _iterator(documents, tokenize, vocab, repeat=True, sentence_order=True)
  swapped = []
  for _ in range(40):
    batch = next(iterator)
    for row in range(16):
      a, b = _segments(batch['tokens'][row], batch['token_types'][row], vocab)
      first, second = where[a[0]], where[b[0]]
      assert first[0] == second[0]  # always the same document
      swapped.append(int(batch['next_sentence_label'][row]))
      assert (second[1:] < first[1:]) == bool(swapped[-1])
  assert abs(np.mean(swapped) - 0.5) < 0.05


def test_short_targets_give_shorter_pairs():
  documents, tokenize, vocab, _ = _corpus(60, seed=2)
  lengths = {}
  for prob in (0.0, 1.0):
    iterator = _iterator(documents, tokenize, vocab, short_seq_prob=prob)
    lengths[prob] = np.mean([b['segment_ids'].sum(1).mean() for b in iterator])
  assert lengths[1.0] < 0.8 * lengths[0.0]


def test_single_sentence_documents_are_skipped_and_counted():
  documents, tokenize, vocab, _ = _corpus(90, seed=3, single_every=3)
  iterator = _iterator(documents, tokenize, vocab)
  batches = list(iterator)
  assert batches
  stats = iterator.stats
  assert stats['documents'] == 90
  assert stats['skipped_single_sentence'] == 30
  assert stats['pairs'] > 16 * (len(batches) - 1)  # the last batch is padded


def test_no_multi_sentence_document_is_an_error():
  documents, tokenize, vocab, _ = _corpus(10, single_every=1)
  with pytest.raises(ValueError, match='multi-sentence') as error:
    next(_iterator(documents, tokenize, vocab, name='my corpus'))
  assert 'my corpus' in str(error.value) and '\n' not in str(error.value)


def test_state_resume_is_exact():
  documents, tokenize, vocab, _ = _corpus(40, seed=4)
  # 9 batches take the iterator past one pass over the documents.
  helpers.check_exact_resume(
      lambda: _iterator(documents, tokenize, vocab, repeat=True, local_batch_size=7), skip=9,
      compare=12)


def test_processes_read_disjoint_shards():
  documents, tokenize, vocab, where = _corpus(40, seed=5)
  for process in (0, 1):
    iterator = _iterator(documents, tokenize, vocab, process_index=process, process_count=2)
    for batch in iterator:
      real = batch['tokens'][~np.isin(batch['tokens'], [0, 4, 5])]
      assert all(where[t][0] % 2 == process for t in real)
