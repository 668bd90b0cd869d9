"""Causal LM: targets never cross documents, loss equals a hand computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from data.vocab import toy_vocab
from objectives import registry
from objectives.clm import next_token_targets


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_targets_stop_at_document_boundaries_and_padding():
  tokens = np.array([[10, 11, 12, 20, 21, 0, 0]])
  segments = np.array([[1, 1, 1, 2, 2, 0, 0]])
  out = next_token_targets(jnp.asarray(tokens), jnp.asarray(segments))
  np.testing.assert_array_equal(out['targets'][0, :4], [11, 12, 20, 21])
  np.testing.assert_array_equal(out['weights'][0], [1, 1, 0, 1, 0, 0, 0])


def test_loss_equals_hand_computation_and_ignores_masked_positions():
  objective = registry.build('clm', lambda name: {}, vocab=toy_vocab(), seq_len=6)
  rng = np.random.default_rng(0)
  tokens = np.array([[7, 8, 9, 10, 11, 0]], np.int32)
  segments = np.array([[1, 1, 2, 2, 2, 0]], np.int32)
  batch = {'tokens': tokens, 'segment_ids': segments,
           'positions': np.array([[0, 1, 0, 1, 2, 0]], np.int32)}
  inputs, targets = objective.prepare(jax.random.key(0), batch)
  assert inputs.causal
  logits = rng.normal(size=(1, 6, 12)).astype(np.float32)

  class Out:  # the loss reads only the logits
    pass

  out = Out()
  out.logits = jnp.asarray(logits)
  loss, metrics = objective.loss(out, targets)
  logp = _log_softmax(logits[0])
  expected = -(logp[0, 8] + logp[2, 10] + logp[3, 11]) / 3  # pairs inside each document
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics['clm_predictions'][0]) == 3

  def loss_of(lg):
    out.logits = lg
    return objective.loss(out, targets)[0]

  grad = np.asarray(jax.grad(loss_of)(jnp.asarray(logits)))
  assert np.all(grad[0, [1, 4, 5]] == 0.0)  # boundary, last token of a document, padding
  assert np.all(np.abs(grad[0, [0, 2, 3]]).sum(-1) > 0)


def test_unknown_objective_is_a_one_line_error():
  try:
    registry.build('clmm', lambda name: {}, vocab=toy_vocab(), seq_len=8)
  except ValueError as error:
    assert 'config.objective' in str(error) and '\n' not in str(error)
  else:
    raise AssertionError('no error')
