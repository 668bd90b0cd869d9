"""Deshuffling: one document chunk per example, the target is the permutation-inverse of the
input, both end with EOS, the loss falls on the target only, and a short train.py run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import formats, reader
from data.vocab import toy_vocab
from objectives import base, deshuffle, registry
from tests.helpers import assert_train_loss_falls, trained_run

VOCAB = toy_vocab(64)


def test_target_is_the_permutation_inverse_of_the_input():
  seq_len, real = 40, [19, 19, 13, 1, 0]
  objective = deshuffle.make({}, vocab=VOCAB, seq_len=seq_len)
  assert objective.raw_len == 19 and objective.data_format == 'document_chunks'
  tokens = np.random.default_rng(0).integers(7, VOCAB.size, (5, seq_len)).astype(np.int32)
  segments = (np.arange(seq_len)[None, :] < np.asarray(real)[:, None]).astype(np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
           'positions': jnp.broadcast_to(jnp.arange(seq_len), tokens.shape)}
  inputs, targets = jax.jit(lambda r, b: objective.prepare(r, b, base.base_inputs(b)))(
      jax.random.key(0), batch)
  joined, order = np.asarray(inputs.tokens), np.asarray(inputs.attn_order)
  weights, ids = np.asarray(targets['weights']), np.asarray(targets['targets'])
  index = np.asarray(inputs.predict_index)
  eos = VOCAB.eos_id
  for row, n in enumerate(real):
    used = 2 * (n + 1) if n else 0  # T5: EOS after the shuffled input and after the target
    assert (np.asarray(inputs.segment_ids)[row] > 0).sum() == used
    assert weights[row].sum() == (n + 1 if n else 0)  # the loss is over real target tokens
    if not n:
      continue
    shuffled, original = joined[row, :n], joined[row, n + 1:2 * n + 1]
    assert joined[row, n] == joined[row, 2 * n + 1] == eos
    np.testing.assert_array_equal(original, tokens[row, :n])
    # Reconstruction: the permutation drawn with the same key puts the prefix back in order.
    key = jax.random.split(jax.random.key(0), 5)[row]
    again, perm = deshuffle.shuffle(key, jnp.asarray(tokens[row, :19]), n)
    perm = np.asarray(perm)[:n]
    np.testing.assert_array_equal(np.asarray(again)[:n], shuffled)
    assert sorted(perm) == list(range(n))
    restored = np.empty(n, np.int32)
    restored[perm] = shuffled
    np.testing.assert_array_equal(restored, original)
    # Bidirectional prefix, causal target that alone carries the loss, nothing after it.
    assert (order[row, :n + 1] == 0).all()
    np.testing.assert_array_equal(order[row, n + 1:used], np.arange(1, n + 2))
    np.testing.assert_array_equal(ids[row, :n + 1], list(original) + [eos])
    np.testing.assert_array_equal(joined[row, index[row, :n + 1] + 1], list(original) + [eos])


class _Documents:
  """Documents as the formats read them: document i is ids 1000 * (i + 1) + 0..length - 1."""

  def __init__(self, lengths):
    self.ids = [np.arange(length, dtype=np.int32) + 1000 * (i + 1)
                for i, length in enumerate(lengths)]

  def __len__(self):
    return len(self.ids)

  def document(self, index):
    return self.ids[index]


def test_each_row_is_one_chunk_of_one_document():
  """T5's deshuffling reads one document at a time: every document's ids, cut into chunks of
  (seq_len - 2) // 2, one per row, in order; nothing from two documents in a row."""
  lengths = [45, 0, 19, 3, 20]
  documents = _Documents(lengths)
  fmt = formats.get('document_chunks')(VOCAB, 40)
  iterator = reader.ExampleIterator(fmt, documents, local_batch_size=3, shuffle=False,
                                    repeat=False)
  rows = [{key: value[r] for key, value in batch.items()} for batch in iterator
          for r in range(3)]
  real = [row for row in rows if row['segment_ids'].any()]
  chunks = [row['tokens'][row['segment_ids'] > 0] for row in real]
  assert [len(chunk) for chunk in chunks] == [19, 19, 7, 19, 3, 19, 1]
  for row, chunk in zip(real, chunks):
    n = len(chunk)
    np.testing.assert_array_equal(row['segment_ids'], np.arange(40) < n)
    np.testing.assert_array_equal(row['positions'][:n], np.arange(n))
    assert (row['tokens'][n:] == VOCAB.pad_id).all()
    assert len(set(chunk // 1000)) == 1  # one document
  np.testing.assert_array_equal(np.concatenate(chunks), np.concatenate(documents.ids))
  assert iterator.stats == {'documents': 5, 'skipped_empty': 1, 'chunks': 7}
  assert sum(not row['segment_ids'].any() for row in rows) == 2  # the last batch's padding


def test_shuffles_are_uniform():
  draws = 3000
  keys = jax.random.split(jax.random.key(1), draws)
  _, perms = jax.vmap(lambda k: deshuffle.shuffle(k, jnp.arange(8), 4))(keys)
  perms = np.asarray(perms)
  np.testing.assert_array_equal(perms[:, 4:], np.broadcast_to(np.arange(4, 8), (draws, 4)))
  frequencies = np.stack([np.bincount(perms[:, i], minlength=4)[:4] for i in range(4)]) / draws
  np.testing.assert_allclose(frequencies, np.full((4, 4), 0.25), atol=0.035)


def test_bad_settings_fail_in_one_line():
  with pytest.raises(ValueError, match='config.deshuffle takes no settings') as error:
    registry.build('deshuffle', lambda _: {'x': 1}, vocab=VOCAB, seq_len=16)
  assert '\n' not in str(error.value)


@pytest.mark.slow
def test_trains_through_train_py_with_a_falling_loss(runs_root, shared_cache):
  workdir = trained_run(runs_root, 'deshuffle:tiny', shared_cache)
  assert_train_loss_falls(workdir, margin=0.5)
