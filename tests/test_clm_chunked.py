"""The chunked (fused) logits + cross-entropy of CLM: the same loss, metrics and gradients
as the full logits, and the full logits never built."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.vocab import toy_vocab
from models.config import ModelConfig
from models.transformer import Transformer
from objectives import clm


def _batch(rows: int = 2, length: int = 12):
  tokens = jax.random.randint(jax.random.key(3), (rows, length), 5, 40)
  segments = jnp.asarray([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])[:rows, :length]
  positions = jnp.asarray([list(range(5)) + list(range(7)), list(range(9)) + [0] * 3])
  return {'tokens': tokens * (segments > 0), 'segment_ids': segments, 'positions': positions}


@pytest.mark.parametrize('chunk, lm_transform, tie', [(4, False, True), (5, True, False),
                                                      (12, False, False)])
@pytest.mark.slow
def test_chunked_loss_and_gradient_equal_the_full_logits(chunk, lm_transform, tie):
  config = ModelConfig(vocab_size=40, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64,
                       max_len=16, lm_transform=lm_transform, tie_embeddings=tie)
  model = Transformer(config)
  batch = _batch()
  full = clm.make({}, vocab=toy_vocab(40), seq_len=12)
  chunked = clm.make({'loss_chunk': chunk}, vocab=toy_vocab(40), seq_len=12)
  params = model.init(jax.random.key(0), full.prepare(None, batch, _base(batch))[0])['params']

  def loss(objective, params):
    inputs, targets = objective.prepare(None, batch, _base(batch))
    outputs = model.apply({'params': params}, inputs)
    return objective.loss(outputs, targets)

  (full_loss, full_metrics), full_grads = jax.value_and_grad(
      lambda p: loss(full, p), has_aux=True)(params)
  (chunk_loss, chunk_metrics), chunk_grads = jax.value_and_grad(
      lambda p: loss(chunked, p), has_aux=True)(params)
  np.testing.assert_allclose(chunk_loss, full_loss, rtol=1e-6)
  for name in ('loss', 'accuracy', 'predictions'):
    np.testing.assert_allclose(chunk_metrics[name], full_metrics[name], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(chunk_grads), jax.tree.leaves(full_grads)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def _base(batch):
  from objectives.base import base_inputs  # pylint: disable=import-outside-toplevel
  return base_inputs(batch)


def test_chunked_path_returns_scores_not_logits():
  config = ModelConfig(vocab_size=40, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=16)
  objective = clm.make({'loss_chunk': 4}, vocab=toy_vocab(40), seq_len=12)
  batch = _batch()
  inputs, targets = objective.prepare(None, batch, _base(batch))
  assert inputs.label_chunk == 4 and inputs.labels.shape == (2, 12)
  model = Transformer(config)
  outputs = jax.eval_shape(lambda key: model.init_with_output(key, inputs)[0], jax.random.key(0))
  assert outputs.logits is None
  assert outputs.token_nll.shape == targets['targets'].shape == (2, 12)
  # No [batch, length, vocab] array appears in the forward pass, only [batch, chunk, vocab].
  jaxpr = str(jax.make_jaxpr(lambda key: model.init_with_output(key, inputs)[0])(jax.random.key(0)))
  assert 'f32[2,12,40]' not in jaxpr and 'f32[2,4,40]' in jaxpr


@pytest.mark.parametrize('value', [-1, 2.5, True])
def test_bad_loss_chunk_is_one_line(value):
  with pytest.raises(ValueError, match='config.clm.loss_chunk must be an integer >= 0'):
    clm.make({'loss_chunk': value}, vocab=toy_vocab(40), seq_len=12)
