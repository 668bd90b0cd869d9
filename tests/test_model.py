"""The shared Transformer: masks that forbid leaks, position options, parameter names."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import masks
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer


def _packed_inputs(batch=1, length=8, boundary=5, **extra):
  segments = np.ones((batch, length), np.int32)
  segments[:, boundary:] = 2
  positions = np.concatenate([np.arange(boundary), np.arange(length - boundary)])
  positions = np.broadcast_to(positions, (batch, length)).astype(np.int32)
  tokens = (np.arange(batch * length).reshape(batch, length) % 40 + 7).astype(np.int32)
  return ModelInputs(tokens=jnp.asarray(tokens), positions=jnp.asarray(positions),
                     segment_ids=jnp.asarray(segments), **extra)


def _jacobian_norms(config: ModelConfig, inputs: ModelInputs) -> np.ndarray:
  """|d hidden[i] / d embedding[j]| for every (i, j) of the first sequence."""
  model = Transformer(config)
  params = model.init(jax.random.key(0), inputs)['params']
  embeddings = jax.random.normal(jax.random.key(1), inputs.tokens.shape + (config.embed_dim,))

  # A random projection: the plain sum of a layer-normed vector is nearly constant.
  direction = jax.random.normal(jax.random.key(2), (config.embed_dim,))

  def hidden(emb):
    return model.apply({'params': params}, inputs, token_embeddings=emb).hidden[0] @ direction

  jac = jax.jacrev(hidden)(embeddings)  # [T, B, T, D]
  return np.abs(np.asarray(jac[:, 0])).sum(-1)


@pytest.mark.parametrize('position', ['learned', 'sinusoidal', 'rotary'])
@pytest.mark.parametrize('norm', ['pre', 'post'])
def test_causal_attention_does_not_leak_forward_or_across_documents(position, norm):
  config = ModelConfig(vocab_size=50, num_layers=2, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=16, position=position, norm=norm)
  influence = _jacobian_norms(config, _packed_inputs(causal=True))
  segments = np.array([1] * 5 + [2] * 3)
  for i in range(8):
    for j in range(8):
      allowed = j <= i and segments[i] == segments[j]
      if allowed:
        assert influence[i, j] > 1e-6, (i, j)
      else:
        assert influence[i, j] == 0.0, (i, j)


def test_bidirectional_attention_sees_whole_document_but_not_the_next():
  config = ModelConfig(vocab_size=50, num_layers=2, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=16)
  influence = _jacobian_norms(config, _packed_inputs())
  same = np.equal.outer([1] * 5 + [2] * 3, [1] * 5 + [2] * 3)
  assert np.all(influence[same] > 1e-6)
  assert np.all(influence[~same] == 0.0)


def test_padding_is_never_attended():
  segments = np.array([[1, 1, 1, 0, 0]])
  mask = np.asarray(masks.attention_mask(segments, segments))[0, 0]
  assert mask[:3, :3].all() and not mask[:, 3:].any()


def test_mask_matches_order_rule():
  rng = np.random.default_rng(0)
  order = rng.permutation(6)[None]
  segments = np.ones((1, 6), np.int32)
  content = np.asarray(masks.attention_mask(segments, segments, order, order))[0, 0]
  query = np.asarray(masks.attention_mask(segments, segments, order, order, strict=True))[0, 0]
  for i in range(6):
    for j in range(6):
      assert content[i, j] == (order[0, j] <= order[0, i])
      assert query[i, j] == (order[0, j] < order[0, i])


def test_logits_only_where_asked():
  config = ModelConfig(vocab_size=50, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=16)
  model = Transformer(config)
  inputs = _packed_inputs(batch=2)
  params = model.init(jax.random.key(0), inputs)['params']
  full = model.apply({'params': params}, inputs).logits
  index = jnp.array([[1, 4], [0, 7]])
  picked = model.apply({'params': params}, inputs.replace(predict_index=index)).logits
  assert full.shape == (2, 8, 50) and picked.shape == (2, 2, 50)
  np.testing.assert_allclose(picked, jnp.take_along_axis(full, index[..., None], 1), atol=1e-5)


@pytest.mark.parametrize('scan', [True, False])
def test_param_count_and_stable_names(scan):
  config = ModelConfig(vocab_size=97, num_layers=3, embed_dim=24, num_heads=4, mlp_dim=40,
                       max_len=16, scan_layers=scan, num_token_types=2, lm_transform=True,
                       num_sentence_classes=2)
  inputs = _packed_inputs(token_types=jnp.zeros((1, 8), jnp.int32))
  variables = Transformer(config).init(jax.random.key(0), inputs)
  params = jax.tree.leaves(variables['params'])
  assert sum(p.size for p in params) == config.param_count()
  flat = jax.tree_util.tree_flatten_with_path(nn.unbox(variables['params']))[0]
  names = {'/'.join(str(k.key) for k in path) for path, _ in flat}
  layer = 'layers' if scan else 'layers_0'
  assert f'{layer}/mlp/wi/kernel' in names
  assert f'{layer}/attention/query/kernel' in names
  assert 'token_embed/embedding' in names


def test_bf16_compute_keeps_float32_params_and_logits():
  config = ModelConfig(vocab_size=50, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=16, dtype='bfloat16')
  model = Transformer(config)
  inputs = _packed_inputs(causal=True)
  params = model.init(jax.random.key(0), inputs)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = model.apply({'params': params}, inputs)
  assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16


def test_bad_model_settings_name_the_setting():
  with pytest.raises(ValueError, match='config.model.position'):
    ModelConfig(vocab_size=10, position='alibi')
  with pytest.raises(ValueError, match='config.model.num_layerz'):
    ModelConfig.from_config({'vocab_size': 10, 'num_layerz': 2})


@pytest.mark.parametrize('causal', [False, True])
def test_lengths_give_the_segment_masks_hidden_states(causal):
  """Rows of one segment then padding: the model fed `lengths` (no dense mask) computes the
  same hidden states and logits at every real token as from the segment ids alone."""
  config = ModelConfig(vocab_size=50, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64,
                       max_len=16, num_token_types=2)
  lengths = jnp.asarray([12, 7], jnp.int32)
  segments = (jnp.arange(12)[None] < lengths[:, None]).astype(jnp.int32)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 5, 50) * segments
  plain = ModelInputs(tokens=tokens, positions=jnp.broadcast_to(jnp.arange(12), (2, 12)),
                      segment_ids=segments, token_types=jnp.zeros_like(tokens), causal=causal)
  model = Transformer(config)
  params = model.init(jax.random.key(0), plain)['params']
  expected = model.apply({'params': params}, plain)
  got = model.apply({'params': params}, plain.replace(lengths=lengths))
  real = np.asarray(segments > 0)
  np.testing.assert_allclose(np.asarray(got.hidden)[real], np.asarray(expected.hidden)[real],
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.logits)[real], np.asarray(expected.logits)[real],
                             atol=1e-4)


def test_missing_token_types_are_type_zero():
  """A model with token types fed inputs without them (packed windows after switching
  configs/bert.py to another objective) treats every token as type 0, as BERT does."""
  config = ModelConfig(vocab_size=30, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=8, num_token_types=2)
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 3, 30)
  inputs = ModelInputs(tokens=tokens, positions=jnp.broadcast_to(jnp.arange(8), (2, 8)),
                       segment_ids=jnp.ones((2, 8), jnp.int32))
  model = Transformer(config)
  params = model.init(jax.random.key(0), inputs)['params']
  untyped = model.apply({'params': params}, inputs).logits
  zeros = model.apply({'params': params}, inputs.replace(token_types=jnp.zeros_like(tokens))).logits
  ones = model.apply({'params': params}, inputs.replace(token_types=jnp.ones_like(tokens))).logits
  np.testing.assert_array_equal(untyped, zeros)
  assert not np.allclose(untyped, ones)
