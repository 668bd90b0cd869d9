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
from objectives import nsp  # noqa: F401  pylint: disable=unused-import  (attaches the sentence head)


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
@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
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
  # NSP's head (objectives/nsp.py) sits where checkpoints have always had it.
  assert {'pooler/kernel', 'pooler/bias', 'sentence_classifier/kernel',
          'sentence_classifier/bias'} <= names


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
@pytest.mark.slow
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


def _small(**overrides) -> ModelConfig:
  values = dict(vocab_size=50, num_layers=2, embed_dim=32, num_heads=4, mlp_dim=64, max_len=32)
  values.update(overrides)
  return ModelConfig(**values)


@pytest.mark.slow
def test_bf16_logits_and_token_nll_are_accumulated_in_float32():
  """bf16 hidden states and table, but the product is not rounded to bf16: the logits equal
  the float64 product of the same bf16 values plus the bias (a bf16 product is off by ~1e-2
  here), and the chunked -log p(label) equals the hand logsumexp of those logits."""
  config = _small(vocab_size=300, embed_dim=64, dtype='bfloat16', init_std=0.3)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 3, 300)
  inputs = ModelInputs(tokens=tokens, positions=jnp.broadcast_to(jnp.arange(12), (2, 12)),
                       segment_ids=jnp.ones((2, 12), jnp.int32), causal=True)
  model = Transformer(config)
  params = nn.unbox(model.init(jax.random.key(0), inputs)['params'])
  params['lm_bias'] = jax.random.normal(jax.random.key(3), (300,))
  out = model.apply({'params': params}, inputs)
  hidden = np.asarray(out.hidden.astype(jnp.float32), np.float64)
  table = np.asarray(params['token_embed']['embedding'].astype(jnp.bfloat16).astype(jnp.float32),
                     np.float64)
  expected = hidden @ table.T + np.asarray(params['lm_bias'], np.float64)
  assert np.abs(expected).max() > 4.0  # large enough that bf16 rounding would show
  np.testing.assert_allclose(np.asarray(out.logits), expected, rtol=0, atol=2e-5)
  labels = jnp.roll(tokens, -1, axis=1)
  scored = model.apply({'params': params}, inputs.replace(labels=labels, label_chunk=5))
  label_logit = np.take_along_axis(expected, np.asarray(labels)[..., None], -1)[..., 0]
  top = expected.max(-1, keepdims=True)
  nll = np.log(np.exp(expected - top).sum(-1)) + top[..., 0] - label_logit
  np.testing.assert_allclose(np.asarray(scored.token_nll), nll, rtol=0, atol=2e-5)


@pytest.mark.parametrize('position', ['learned', 'sinusoidal', 'rotary'])
@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.slow
def test_packed_document_is_bit_identical_when_its_neighbour_changes(position, causal):
  """Two documents in one row: changing document 1's tokens leaves document 2's logits
  bit-identical, and document 2's outputs have an exactly zero gradient wrt document 1."""
  config = _small(position=position, norm='post' if causal else 'pre')
  segments = jnp.asarray([[1] * 5 + [2] * 5])
  positions = jnp.asarray([list(range(5)) * 2])
  tokens = jax.random.randint(jax.random.key(1), (1, 10), 3, 50)
  inputs = ModelInputs(tokens=tokens, positions=positions, segment_ids=segments, causal=causal)
  model = Transformer(config)
  params = model.init(jax.random.key(0), inputs)['params']
  logits = model.apply({'params': params}, inputs).logits
  changed = model.apply({'params': params},
                        inputs.replace(tokens=tokens.at[0, :5].set((tokens[0, :5] + 7) % 50))).logits
  np.testing.assert_array_equal(np.asarray(changed[0, 5:]), np.asarray(logits[0, 5:]))
  assert not np.array_equal(np.asarray(changed[0, :5]), np.asarray(logits[0, :5]))
  embeddings = jax.random.normal(jax.random.key(2), (1, 10, config.embed_dim))
  grad = jax.grad(lambda e: model.apply({'params': params}, inputs, token_embeddings=e)
                  .logits[0, 5:].sum())(embeddings)
  assert np.all(np.asarray(grad[0, :5]) == 0.0) and np.abs(np.asarray(grad[0, 5:])).max() > 0


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.slow
def test_lengths_and_dense_mask_give_the_same_gradients(causal):
  """Rows of one segment then padding (one all padding): the lengths path and the dense mask
  give the same loss and gradients, no NaN, and padding embeddings get exactly zero gradient."""
  config = _small()
  lengths = jnp.asarray([10, 6, 0], jnp.int32)
  segments = (jnp.arange(10)[None] < lengths[:, None]).astype(jnp.int32)
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 3, 50) * segments
  inputs = ModelInputs(tokens=tokens, positions=jnp.broadcast_to(jnp.arange(10), (3, 10)),
                       segment_ids=segments, causal=causal)
  model = Transformer(config)
  params = model.init(jax.random.key(0), inputs)['params']
  embeddings = jax.random.normal(jax.random.key(2), (3, 10, config.embed_dim))
  real = np.asarray(segments, bool)

  def loss(params, embeddings, inputs):
    logits = model.apply({'params': params}, inputs, token_embeddings=embeddings).logits
    return jnp.sum(jax.nn.log_softmax(logits)[..., 7] * segments)

  dense = jax.value_and_grad(loss, argnums=(0, 1))(params, embeddings, inputs)
  by_length = jax.value_and_grad(loss, argnums=(0, 1))(params, embeddings,
                                                       inputs.replace(lengths=lengths))
  for got, expected in zip(jax.tree.leaves(by_length), jax.tree.leaves(dense)):
    assert np.isfinite(np.asarray(got)).all() and np.isfinite(np.asarray(expected)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
  for grads in (dense[1][1], by_length[1][1]):
    assert np.all(np.asarray(grads)[~real] == 0.0)


@pytest.mark.slow
def test_rotary_depends_on_position_differences_and_learned_on_positions():
  """Shifting every position by 9 leaves a rotary model's outputs unchanged (scores depend on
  position differences only); a learned-position model reads `positions`, not the index."""
  tokens = jax.random.randint(jax.random.key(1), (1, 8), 3, 50)
  inputs = ModelInputs(tokens=tokens, positions=jnp.arange(8)[None],
                       segment_ids=jnp.ones((1, 8), jnp.int32), causal=True)
  shifted = inputs.replace(positions=inputs.positions + 9)
  rotary = Transformer(_small(position='rotary'))
  params = rotary.init(jax.random.key(0), inputs)['params']
  np.testing.assert_allclose(rotary.apply({'params': params}, shifted).logits,
                             rotary.apply({'params': params}, inputs).logits, atol=2e-5)
  learned = Transformer(_small(position='learned'))
  params = nn.unbox(learned.init(jax.random.key(0), inputs)['params'])
  table = params['position_embed']['embedding']
  hand = learned.apply({'params': params}, inputs,
                       token_embeddings=params['token_embed']['embedding'][tokens]
                       + table[9:17][None] - table[:8][None])
  np.testing.assert_allclose(learned.apply({'params': params}, shifted).logits, hand.logits,
                             atol=1e-5)


@pytest.mark.slow
def test_query_stream_sees_only_earlier_ranks_of_its_document():
  """XLNet's query stream at a target depends on exactly the tokens of its document ranked
  before it (never its own token, never the other document)."""
  config = _small(position='rotary', norm='post', num_layers=3, two_stream=True)
  segments = jnp.asarray([[1] * 6 + [2] * 4])
  order = jnp.asarray([[0, 3, 0, 1, 2, 0, 0, 2, 0, 1]])
  index = jnp.asarray([[1, 3, 4, 7, 9]])
  inputs = ModelInputs(tokens=jnp.zeros((1, 10), jnp.int32),
                       positions=jnp.asarray([list(range(6)) + list(range(4))]),
                       segment_ids=segments, attn_order=order, query_index=index)
  model = Transformer(config)
  params = model.init(jax.random.key(0), inputs)['params']
  embeddings = jax.random.normal(jax.random.key(1), (1, 10, config.embed_dim))
  direction = jax.random.normal(jax.random.key(2), (config.vocab_size,))
  jac = jax.jacrev(lambda e: model.apply({'params': params}, inputs, token_embeddings=e)
                   .logits[0] @ direction)(embeddings)
  influence = np.abs(np.asarray(jac[:, 0])).sum(-1)
  seg, rank = np.asarray(segments[0]), np.asarray(order[0])
  for p, i in enumerate(np.asarray(index[0])):
    allowed = (seg == seg[i]) & (rank < rank[i])
    assert np.all(influence[p][allowed] > 1e-6) and np.all(influence[p][~allowed] == 0.0), i


@pytest.mark.slow
def test_prefix_sees_only_the_prefix_and_targets_are_causal():
  config = _small()
  order = jnp.asarray([[0, 0, 0, 0, 1, 2, 3, 4]])
  inputs = ModelInputs(tokens=jnp.zeros((1, 8), jnp.int32), positions=jnp.arange(8)[None],
                       segment_ids=jnp.ones((1, 8), jnp.int32), attn_order=order)
  influence = _jacobian_norms(config, inputs)
  allowed = np.asarray(order[0])[None, :] <= np.asarray(order[0])[:, None]
  assert np.all(influence[allowed] > 1e-6) and np.all(influence[~allowed] == 0.0)


@pytest.mark.parametrize('norm', ['pre', 'post'])
@pytest.mark.slow
def test_scanned_and_unrolled_layers_agree_and_eval_ignores_dropout(norm):
  inputs = _packed_inputs(batch=2, causal=True)
  scanned = Transformer(_small(num_layers=3, norm=norm, dropout=0.1))
  params = nn.unbox(scanned.init(jax.random.key(0), inputs)['params'])
  unrolled_params = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(3):
    unrolled_params[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  unrolled = Transformer(_small(num_layers=3, norm=norm, dropout=0.1, scan_layers=False))
  without_dropout = Transformer(_small(num_layers=3, norm=norm))
  a = scanned.apply({'params': params}, inputs).logits
  np.testing.assert_allclose(unrolled.apply({'params': unrolled_params}, inputs).logits, a,
                             rtol=0, atol=1e-6)
  np.testing.assert_array_equal(without_dropout.apply({'params': params}, inputs).logits, a)
  trained = scanned.apply({'params': params}, inputs, train=True,
                          rngs={'dropout': jax.random.key(1)}).logits
  assert np.abs(np.asarray(trained - a)).max() > 1e-3


def test_sentence_head_is_the_pooler_and_classifier_of_the_first_position():
  """objectives/nsp.py's head, run inside the model: tanh(h0 Wp + bp) Wc + bc by hand."""
  model = Transformer(_small(num_layers=1, num_sentence_classes=2))
  inputs = _packed_inputs(batch=2)
  params = nn.unbox(model.init(jax.random.key(0), inputs)['params'])
  outputs = model.apply({'params': params}, inputs)
  first = np.asarray(outputs.hidden[:, 0], np.float64)
  pooled = np.tanh(first @ params['pooler']['kernel'] + params['pooler']['bias'])
  expected = (pooled @ params['sentence_classifier']['kernel']
              + params['sentence_classifier']['bias'])
  assert outputs.sentence_logits.shape == (2, 2)
  np.testing.assert_allclose(outputs.sentence_logits, expected, rtol=1e-5, atol=1e-6)


def test_a_head_no_objective_attached_is_a_one_line_error(monkeypatch):
  from models import heads  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(heads, '_HEADS', {})
  model = Transformer(_small(num_layers=1, num_sentence_classes=2))
  with pytest.raises(ValueError, match=r'^config.model.num_sentence_classes > 0 needs the '
                     r'sentence head, which objectives/nsp.py attaches when imported'):
    jax.eval_shape(model.init, jax.random.key(0), _packed_inputs())  # traced, not compiled


def test_the_span_boundary_head_no_objective_attached_is_a_one_line_error(monkeypatch):
  from models import heads  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(heads, '_HEADS', {})
  model = Transformer(_small(num_layers=1, sbo_max_offset=4))
  inputs = _packed_inputs(predict_index=jnp.asarray([[1, 2]], jnp.int32),
                          span_boundaries=jnp.asarray([[[0, 3, 0], [0, 3, 1]]], jnp.int32))
  with pytest.raises(ValueError, match=r'^config.model.sbo_max_offset > 0 needs the '
                     r'span_boundary head, which objectives/mlm.py attaches when imported: .* '
                     r'import objectives.mlm first'):
    jax.eval_shape(model.init, jax.random.key(0), inputs)
