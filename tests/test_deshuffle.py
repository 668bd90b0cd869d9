"""Deshuffling: the target is the permutation-inverse of the input, the loss falls on the
target only, and a short train.py run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.vocab import toy_vocab
from objectives import base, deshuffle, registry
from tests.test_prefix_lm import assert_train_loss_falls, runs_root, trained_run  # noqa: F401

VOCAB = toy_vocab(64)


def test_target_is_the_permutation_inverse_of_the_input():
  seq_len, real = 40, [20, 20, 13, 1]
  objective = deshuffle.make({}, vocab=VOCAB, seq_len=seq_len)
  tokens = np.random.default_rng(0).integers(7, VOCAB.size, (4, seq_len)).astype(np.int32)
  segments = (np.arange(seq_len)[None, :] < np.asarray(real)[:, None]).astype(np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
           'positions': jnp.broadcast_to(jnp.arange(seq_len), tokens.shape)}
  inputs, targets = jax.jit(lambda r, b: objective.prepare(r, b, base.base_inputs(b)))(
      jax.random.key(0), batch)
  joined, order = np.asarray(inputs.tokens), np.asarray(inputs.attn_order)
  weights, ids = np.asarray(targets['weights']), np.asarray(targets['targets'])
  index = np.asarray(inputs.predict_index)
  for row, n in enumerate(real):
    shuffled, original = joined[row, :n], joined[row, n:2 * n]
    np.testing.assert_array_equal(original, tokens[row, :n])
    # Reconstruction: the permutation drawn with the same key puts the prefix back in order.
    key = jax.random.split(jax.random.key(0), 4)[row]
    again, perm = deshuffle.shuffle(key, jnp.asarray(tokens[row, :20]), n)
    perm = np.asarray(perm)[:n]
    np.testing.assert_array_equal(np.asarray(again)[:n], shuffled)
    assert sorted(perm) == list(range(n))
    restored = np.empty(n, np.int32)
    restored[perm] = shuffled
    np.testing.assert_array_equal(restored, original)
    # Bidirectional prefix, causal target that alone carries the loss, nothing after it.
    assert (order[row, :n] == 0).all()
    np.testing.assert_array_equal(order[row, n:2 * n], np.arange(1, n + 1))
    assert (np.asarray(inputs.segment_ids)[row] > 0).sum() == 2 * n
    assert weights[row].sum() == n
    np.testing.assert_array_equal(ids[row, :n], original)
    np.testing.assert_array_equal(joined[row, index[row, :n] + 1], original)


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


def test_trains_through_train_py_with_a_falling_loss(runs_root, shared_cache):
  workdir = trained_run(runs_root, 'deshuffle:tiny', shared_cache)
  assert_train_loss_falls(workdir, margin=0.5)
