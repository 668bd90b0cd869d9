"""Prefix LM: masks equal a brute-force construction, no leak from the continuation, loss on
the continuation only; and a run through train.py whose loss falls."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.vocab import toy_vocab
from models import masks
from models.config import ModelConfig
from models.transformer import Transformer
from objectives import base, prefix_lm, registry
from tests.helpers import assert_train_loss_falls, trained_run

VOCAB = toy_vocab(64)


def packed_batch(lengths_per_row, seq_len, seed=0):
  """Packed windows: documents of the given lengths end to end, then padding."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths_per_row), seq_len), np.int32)
  segments, positions = np.zeros_like(tokens), np.zeros_like(tokens)
  for row, lengths in enumerate(lengths_per_row):
    cursor = 0
    for doc, length in enumerate(lengths, start=1):
      tokens[row, cursor:cursor + length] = rng.integers(7, VOCAB.size, length)
      segments[row, cursor:cursor + length] = doc
      positions[row, cursor:cursor + length] = np.arange(length)
      cursor += length
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
          'positions': jnp.asarray(positions)}


def brute_force_mask(segments, prefix_of_doc):
  """Query i sees key j: same document, and j in the prefix, or both in the continuation
  with j <= i. prefix_of_doc[s] is document s's prefix length."""
  length = len(segments)
  start = {s: int(np.flatnonzero(segments == s)[0]) for s in set(segments.tolist()) if s}
  in_prefix = lambda i: i - start[segments[i]] < prefix_of_doc[segments[i]]
  mask = np.zeros((length, length), bool)
  for i in range(length):
    for j in range(length):
      if segments[i] == 0 or segments[i] != segments[j]:
        continue
      mask[i, j] = in_prefix(j) or (not in_prefix(i) and j <= i)
  return mask


LENGTHS = [[24], [10, 7, 1, 6], [5, 2, 9], [3]]
_PREPARE = jax.jit(lambda rng, batch: registry.build(
    'prefix_lm', lambda _: {}, vocab=VOCAB, seq_len=24).prepare(rng, batch))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mask_equals_brute_force_and_loss_is_on_the_continuation_only(seed):
  batch = packed_batch(LENGTHS, 24, seed)
  inputs, (targets,) = _PREPARE(jax.random.key(seed), batch)
  segments, tokens = np.asarray(batch['segment_ids']), np.asarray(batch['tokens'])
  order, weights = np.asarray(inputs.attn_order), np.asarray(targets['weights'])
  mask = np.asarray(masks.attention_mask(inputs.segment_ids, inputs.segment_ids,
                                         inputs.attn_order, inputs.attn_order))[:, 0]
  for row, lengths in enumerate(LENGTHS):
    # The prefix of a document: its tokens of order 0, a contiguous start of 1..n-1 tokens.
    prefix, cursor = {}, 0
    for doc, length in enumerate(lengths, start=1):
      doc_order = order[row, cursor:cursor + length]
      prefix[doc] = int((doc_order == 0).sum())
      assert 1 <= prefix[doc] <= max(1, length - 1)
      np.testing.assert_array_equal(doc_order[prefix[doc]:], np.arange(1, length - prefix[doc] + 1))
      # Loss on the next token only where it is a continuation token of this document.
      np.testing.assert_array_equal(weights[row, cursor:cursor + length],
                                    [1.0 if prefix[doc] <= i + 1 < length else 0.0
                                     for i in range(length)])
      cursor += length
    assert weights[row, cursor:].sum() == 0  # padding
    np.testing.assert_array_equal(mask[row], brute_force_mask(segments[row], prefix))
    predicted = weights[row] > 0
    np.testing.assert_array_equal(np.asarray(targets['targets'])[row][predicted],
                                  tokens[row][1:][predicted[:-1]])


def test_prefix_lengths_are_uniform_over_one_to_n_minus_one():
  segments = jnp.ones((4000, 6), jnp.int32)
  lengths = np.asarray(prefix_lm.sample_prefix_lengths(jax.random.key(0), segments))[:, 0]
  frequencies = np.bincount(lengths, minlength=6)[1:] / len(lengths)
  np.testing.assert_allclose(frequencies, [0.2] * 5, atol=0.025)


def test_changing_a_continuation_token_never_changes_an_earlier_logit():
  cfg = ModelConfig(vocab_size=64, num_layers=2, embed_dim=32, num_heads=2, mlp_dim=64,
                    max_len=24, position='rotary')
  model = Transformer(cfg)
  batch = packed_batch([[14, 10]], 24, seed=3)
  inputs, _ = _PREPARE(jax.random.key(5), batch)
  params = jax.jit(lambda key: nn.unbox(model.init(key, inputs)['params']))(jax.random.key(0))
  apply = jax.jit(lambda tokens: model.apply({'params': params},
                                             inputs.replace(tokens=tokens)).logits)
  order = np.asarray(inputs.attn_order)[0]
  base_logits = np.asarray(apply(inputs.tokens))
  checked = 0
  for position in range(14):
    if order[position] == 0:
      continue  # prefix token: changing it may change every logit of the document
    changed = np.asarray(apply(inputs.tokens.at[0, position].set(
        7 + (int(inputs.tokens[0, position]) - 6) % 57)))
    np.testing.assert_array_equal(changed[0, :position], base_logits[0, :position])
    np.testing.assert_array_equal(changed[0, 14:], base_logits[0, 14:])  # the other document
    assert np.abs(changed[0, position] - base_logits[0, position]).max() > 1e-4
    checked += 1
  assert checked >= 1


def test_loss_equals_hand_computation():
  batch = packed_batch([[15, 9]], 24, seed=1)
  objective = registry.build('prefix_lm', lambda _: {}, vocab=VOCAB, seq_len=24)
  _, targets = _PREPARE(jax.random.key(2), batch)
  logits = np.random.default_rng(0).normal(size=(1, 24, 64)).astype(np.float32)
  loss, metrics = objective.loss(base.ModelOutputs(hidden=None, logits=jnp.asarray(logits)),
                                 targets)
  weights, tokens = np.asarray(targets[0]['weights'][0]), np.asarray(batch['tokens'][0])
  logp = logits[0] - np.log(np.exp(logits[0]).sum(-1, keepdims=True))
  picked = [-logp[i, tokens[i + 1]] for i in range(23) if weights[i]]
  assert len(picked) == float(metrics['prefix_lm_predictions'][0]) > 0
  np.testing.assert_allclose(float(loss), np.mean(picked), rtol=1e-5)


def test_settings_are_rejected_in_one_line():
  with pytest.raises(ValueError, match='config.prefix_lm takes no settings') as error:
    registry.build('prefix_lm', lambda _: {'rate': 0.5}, vocab=VOCAB, seq_len=10)
  assert '\n' not in str(error.value)


@pytest.mark.slow
def test_trains_through_train_py_with_a_falling_loss(runs_root, shared_cache):
  workdir = trained_run(runs_root, 'prefix_lm:tiny', shared_cache)
  assert_train_loss_falls(workdir, margin=0.5)
