"""Every shipped preset traces its training step on the GPU path: bf16 with cuDNN's fused
attention forced. No GPU is needed: JAX's cuDNN checks run while tracing, so they are
told they are on a Hopper GPU with cuDNN 9.10, and `jax.eval_shape` never compiles.

Also checks that attention reaches the kernel in the cheapest form the data allows (no
dense mask for sentence pairs), and that the odd-length padding for cuDNN is exact.
"""

from __future__ import annotations

import contextlib
import importlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax._src.cudnn.fused_attention_stablehlo as cudnn_attention  # pylint: disable=g-bad-import-order
from data.vocab import toy_vocab
from models import attention as attention_lib
from training import experiment, step as step_lib
from training import state as state_lib

SHIPPED = [('clm', 'tiny'), ('clm', 'gpt2_small'), ('mlm', 'tiny'), ('mlm', 'base'),
           ('bert', 'tiny'), ('bert', 'sop_tiny'), ('bert', 'bert_base'), ('plm', 'tiny'),
           ('plm', 'xlnet_base'), ('prefix_lm', 'tiny'), ('prefix_lm', 'base'),
           ('span_corruption', 't5:base'), ('deshuffle', 'base'), ('electra', 'base')]
COMPARE_ARMS = ['clm', 'mlm', 'mlm_pairs', 'mlm_nsp', 'mlm_sop', 'plm']


@contextlib.contextmanager
def pretend_hopper_with_cudnn():
  """JAX's cuDNN attention checks, answered as on an H100/H200 with cuDNN 9.10."""
  with mock.patch.object(cudnn_attention, 'check_cudnn_version', lambda: 91000), \
       mock.patch.object(cudnn_attention, 'check_compute_capability', lambda capability: True), \
       mock.patch.object(cudnn_attention, 'is_cuda_compute_capability_equal', lambda c: False):
    yield


def _trace_train_step(config, tmp_path) -> None:
  """jax.eval_shape of the preset's real train step (batch 2) with cuDNN attention."""
  config.model.update(dtype='bfloat16', attention_impl='cudnn')
  vocab = toy_vocab(config.model.vocab_size or config.data.vocab_size)
  exp = experiment.build(config, str(tmp_path), data=False, vocab=vocab)
  tx = optax.sgd(0.1)
  init = state_lib.state_init_fn(exp.init_params_fn(), tx, objective=exp.objective,
                                 model_config=exp.model_config)
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  train_step = step_lib.make_train_step(exp.model(), exp.objective, 0, lambda step: jnp.float32(0.1) + 0 * step)
  batch = jax.tree.map(jnp.asarray, exp.example_batch(2))
  with pretend_hopper_with_cudnn():
    abstract_state = jax.eval_shape(lambda key: nn.unbox(init(key)), jax.random.key(0))
    new_state, metrics = jax.eval_shape(train_step, abstract_state, batch)
  assert new_state.step.shape == ()
  assert 'loss' in metrics or any('loss' in key for key in metrics)


@pytest.mark.parametrize('name, preset', SHIPPED)
def test_shipped_preset_traces_with_cudnn_attention(name, preset, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config(preset)
  _trace_train_step(config, tmp_path)


@pytest.mark.parametrize('arm', COMPARE_ARMS)
def test_comparison_arm_at_base_traces_with_cudnn_attention(arm, tmp_path):
  from configs import compare  # pylint: disable=import-outside-toplevel
  _trace_train_step(compare.get_config(f'{arm}:base'), tmp_path)


def test_xlnet_targets_stay_as_the_paper_has_them():
  """512 / 6 rounds to 85 targets, an odd query-stream length: padded for cuDNN in the
  attention call, not by changing the objective."""
  from configs import plm as plm_config  # pylint: disable=import-outside-toplevel
  from objectives import plm  # pylint: disable=import-outside-toplevel
  config = plm_config.get_config('xlnet_base')
  assert plm.resolve_num_predict(dict(config.plm), config.seq_len) == 85


def _random_qkv(queries: int, keys: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  shape = lambda length: (2, length, 2, 8)
  return [jnp.asarray(rng.normal(size=shape(n)), jnp.float32) for n in (queries, keys, keys)]


@pytest.mark.parametrize('queries, keys', [(5, 8), (6, 7), (5, 7)])
def test_odd_lengths_padded_for_cudnn_give_the_unpadded_result(queries, keys):
  """The spare query/key cuDNN needs changes nothing: run the padded call through XLA."""
  query, key, value = _random_qkv(queries, keys)
  rng = np.random.default_rng(1)
  mask = jnp.asarray(rng.random((2, 1, queries, keys)) < 0.6)
  mask = mask.at[:, :, :, 0].set(True)
  pattern = attention_lib.AttentionPattern(mask=mask)
  expected = attention_lib.attend(query, key, value, pattern, 'xla')
  seen = []
  xla_attention = jax.nn.dot_product_attention

  def padded_through_xla(q, k, v, **kwargs):
    seen.append((q.shape[1], k.shape[1]))
    kwargs['implementation'] = 'xla'
    return xla_attention(q, k, v, **kwargs)

  with mock.patch.object(jax.nn, 'dot_product_attention', padded_through_xla):
    got = attention_lib.attend(query, key, value, pattern, 'cudnn')
  assert seen == [(queries + queries % 2, keys + keys % 2)]
  np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize('causal', [False, True])
def test_length_pattern_equals_the_dense_mask_it_replaces(causal):
  """Rows of one segment then padding: attending by lengths gives, at every real query,
  exactly what the segment mask gives."""
  from models import masks  # pylint: disable=import-outside-toplevel
  query, key, value = _random_qkv(7, 7)
  lengths = jnp.asarray([7, 4], jnp.int32)
  segments = (jnp.arange(7)[None] < lengths[:, None]).astype(jnp.int32)
  order = masks.causal_order(segments) if causal else None
  dense = masks.attention_mask(segments, segments, order, order)
  by_lengths = attention_lib.from_lengths(lengths, causal=causal)
  assert by_lengths.mask is None
  real = np.asarray(segments > 0)
  np.testing.assert_array_equal(np.asarray(by_lengths.dense(7, 7))[:, 0][real],
                                np.asarray(dense)[:, 0][real])
  got = attention_lib.attend(query, key, value, by_lengths, 'xla')
  expected = attention_lib.attend(query, key, value, attention_lib.AttentionPattern(mask=dense),
                                  'xla')
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(expected)[real], atol=1e-6)


# Which presets reach the attention kernel with no dense mask: rows of one segment then
# padding (sentence pairs, windows packed across documents) need only their lengths.
NO_DENSE_MASK = {('clm', 'gpt2_small'): True, ('mlm', 'base'): False, ('bert', 'tiny'): False,
                 ('bert', 'bert_base'): False, ('bert', 'sop_tiny'): False}
DENSE_MASK = [('clm', 'tiny'), ('mlm', 'tiny'), ('plm', 'xlnet_base'), ('prefix_lm', 'tiny')]


def _patterns_reaching_attention(name: str, preset: str, tmp_path) -> list:
  config = importlib.import_module(f'configs.{name}').get_config(preset)
  vocab = toy_vocab(config.model.vocab_size or config.data.vocab_size)
  exp = experiment.build(config, str(tmp_path), data=False, vocab=vocab)
  batch = jax.tree.map(jnp.asarray, exp.example_batch(2))
  seen = []
  real_attend = attention_lib.attend

  def recording_attend(query, key, value, pattern, implementation):
    seen.append(pattern)
    return real_attend(query, key, value, pattern, implementation)

  def forward(key):
    inputs, _ = exp.objective.prepare(key, batch)
    params = exp.init_params_fn()(key)
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    return exp.model().apply({'params': nn.unbox(params)}, inputs)

  with mock.patch.object(attention_lib, 'attend', recording_attend):
    jax.eval_shape(forward, jax.random.key(0))
  return seen


@pytest.mark.parametrize('name, preset', sorted(NO_DENSE_MASK))
def test_rows_of_one_segment_attend_by_length(name, preset, tmp_path):
  patterns = _patterns_reaching_attention(name, preset, tmp_path)
  assert patterns and all(p.mask is None and p.key_lengths is not None for p in patterns)
  assert {p.causal for p in patterns} == {NO_DENSE_MASK[(name, preset)]}


@pytest.mark.parametrize('name, preset', DENSE_MASK)
def test_packed_documents_and_arbitrary_orders_keep_the_dense_mask(name, preset, tmp_path):
  patterns = _patterns_reaching_attention(name, preset, tmp_path)
  assert patterns and all(p.mask is not None for p in patterns)
