"""ELECTRA: labels are exactly "differs from the original", no gradient from the discriminator
into the generator's sampling, the loss by hand, a checkpoint restores both networks, and a
short train.py run whose evaluated model is the discriminator."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base as base_config
from data.vocab import toy_vocab
from models.config import ModelConfig
from models.transformer import Transformer
from objectives import base, electra
from training import checkpoint, mesh as mesh_lib, state as state_lib
from tests.helpers import assert_train_loss_falls, trained_run

VOCAB = toy_vocab(12)  # five ordinary ids: a sample often equals the original
SEQ_LEN = 32
CFG = ModelConfig(vocab_size=VOCAB.size, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                  max_len=SEQ_LEN)
MODEL = Transformer(CFG)


def objective(**settings):
  return electra.make(dict(dict(mask_rate=0.3), **settings), vocab=VOCAB, seq_len=SEQ_LEN)


def batch_of(rows=8, real_last=20, seed=0):
  tokens = np.random.default_rng(seed).integers(7, VOCAB.size, (rows, SEQ_LEN)).astype(np.int32)
  segments = np.ones_like(tokens)
  segments[-1, real_last:] = 0
  tokens = np.where(segments > 0, tokens, VOCAB.pad_id)
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
          'positions': jnp.broadcast_to(jnp.arange(SEQ_LEN), tokens.shape)}


def init_params(part, key=0):
  batch = batch_of()

  def init(rng):
    inputs, _ = part.prepare(rng, batch)
    params = dict(MODEL.init(rng, inputs)['params'])
    params[state_lib.OBJECTIVE_KEY] = part.init_params(jax.random.fold_in(rng, 1), CFG)
    return nn.unbox(params)

  return jax.jit(init)(jax.random.key(key))


def loss_fn(part, params, batch, rng):
  model_params, bound = state_lib.split_params(params)[0], state_lib.bind_objective(
      part, params[state_lib.OBJECTIVE_KEY], model_params=state_lib.model_params(params),
      model_config=CFG, train=True)
  inputs, targets = bound.prepare(rng, batch)
  return bound.loss(MODEL.apply({'params': model_params}, inputs), targets)


@pytest.mark.slow
def test_labels_are_exactly_differs_from_the_original():
  part = objective()
  params = init_params(part)
  batch = batch_of()
  rng = jax.random.key(7)
  bound = state_lib.bind_objective(part, params[state_lib.OBJECTIVE_KEY],
                                   model_params=state_lib.model_params(params), model_config=CFG,
                                   train=False)
  inputs, targets = jax.jit(lambda r, b: bound.prepare(r, b, base.base_inputs(b)))(rng, batch)
  original, corrupted = np.asarray(batch['tokens']), np.asarray(inputs.tokens)
  real = np.asarray(batch['segment_ids']) > 0
  labels = np.asarray(targets['labels'])
  np.testing.assert_array_equal(labels, ((corrupted != original) & real).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(targets['weights']), real.astype(np.float32))
  selected = np.asarray(jax.jit(part.masker.select)(jax.random.split(rng, 4)[0],
                                                    batch['tokens'], batch['segment_ids']))
  assert not (corrupted != original)[~selected].any()  # only the generator's slots change
  same = selected & (corrupted == original)  # sampled the original: labelled original
  assert same.sum() >= 3 and (labels[same] == 0).all()
  assert (labels[selected] == 1).sum() >= 0.5 * selected.sum()
  assert not inputs.compute_logits and inputs.attn_order is None and not inputs.causal


@pytest.mark.slow
def test_no_gradient_from_the_discriminator_into_the_generator():
  batch = batch_of(seed=1)
  part = objective(generator_weight=0.0)  # the loss is the discriminator's alone
  params = init_params(part)

  def losses(p):
    loss, metrics = loss_fn(part, p, batch, jax.random.key(3))
    return loss, metrics['generator_loss'][0] / metrics['generator_loss'][1]

  grads, generator_grads = jax.jit(lambda p: (
      jax.grad(lambda q: losses(q)[0])(p), jax.grad(lambda q: losses(q)[1])(p)))(params)
  own = lambda tree, name: jax.tree.leaves(tree[state_lib.OBJECTIVE_KEY][name])
  # The sampled tokens carry no gradient back: exactly zero for every generator weight.
  assert max(float(jnp.abs(g).max()) for g in own(grads, 'generator')) == 0.0
  assert min(float(jnp.abs(g).max()) for g in own(grads, 'discriminator_head')) > 0
  assert float(jnp.abs(grads['token_embed']['embedding']).max()) > 0
  # The generator's own MLM loss does reach it (and the shared embeddings).
  assert max(float(jnp.abs(g).max()) for g in own(generator_grads, 'generator')) > 1e-6
  assert float(jnp.abs(generator_grads['token_embed']['embedding']).max()) > 0


@pytest.mark.slow
def test_the_generator_reads_the_discriminators_whole_input_embedding():
  """As in ELECTRA, token, position and type embeddings and their norm are the discriminator's:
  the generator has none of its own, and its MLM loss reaches every one of them. The embedding
  the model hands out is the one it runs on (fed back, the outputs are identical)."""
  config = ModelConfig(vocab_size=VOCAB.size, num_layers=1, embed_dim=32, num_heads=2,
                       mlp_dim=64, max_len=SEQ_LEN, position='learned', norm='post',
                       num_token_types=2)
  model = Transformer(config)
  batch = dict(batch_of(seed=2), token_types=jnp.asarray(
      (np.arange(SEQ_LEN)[None] >= SEQ_LEN // 2).repeat(8, 0).astype(np.int32)))
  inputs = base.base_inputs(batch)
  params = jax.jit(lambda r: nn.unbox(model.init(r, inputs)['params']))(jax.random.key(0))
  embedded = model.apply({'params': params}, inputs, embeddings_only=True).hidden
  np.testing.assert_array_equal(model.apply({'params': params}, inputs).hidden,
                                model.apply({'params': params}, inputs,
                                            input_embeddings=embedded).hidden)
  part = objective()
  own = part.init_params(jax.random.key(1), config)
  generator = own['generator']['transformer']
  assert not {'token_embed', 'position_embed', 'token_type_embed', 'embed_norm'} & set(generator)

  def generator_loss(model_params):
    bound = part.bind(own, model_params=model_params, model_config=config, train=False)
    _, targets = bound.prepare(jax.random.key(3), batch)
    return targets['generator_loss']

  grads = jax.jit(jax.grad(generator_loss))(params)
  for name in ('token_embed', 'position_embed', 'token_type_embed', 'embed_norm'):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[name])) > 0, name
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads['layers'])) == 0.0


@pytest.mark.slow
def test_loss_is_generator_loss_plus_fifty_times_the_mean_token_bce():
  part = objective()
  params = init_params(part)
  batch = batch_of(seed=2)
  bound = state_lib.bind_objective(part, params[state_lib.OBJECTIVE_KEY],
                                   model_params=state_lib.model_params(params), model_config=CFG,
                                   train=False)
  hidden = jax.random.normal(jax.random.key(1), (8, SEQ_LEN, CFG.embed_dim))

  @jax.jit
  def run(batch, hidden):
    _, targets = bound.prepare(jax.random.key(0), batch)
    return bound.loss(base.ModelOutputs(hidden=hidden), targets), targets

  (loss, metrics), targets = run(batch, hidden)
  scores = np.asarray(electra.DiscriminatorHead(CFG).apply(
      {'params': params[state_lib.OBJECTIVE_KEY]['discriminator_head']}, hidden), np.float64)
  labels, weights = np.asarray(targets['labels']), np.asarray(targets['weights'])
  bce = np.logaddexp(0, scores) - labels * scores
  expected = float(targets['generator_loss']) + 50.0 * (bce * weights).sum() / weights.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics['discriminator_loss'][1]) == weights.sum() == 8 * SEQ_LEN - 12


@pytest.mark.slow
def test_checkpoint_restores_both_networks(tmp_path):
  config = base_config.get_config('clm')
  mesh, rules = mesh_lib.make_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
  part = objective()
  batch = batch_of()

  def init(key):
    inputs, _ = part.prepare(key, batch)
    return MODEL.init({'params': key, 'dropout': key}, inputs)['params']

  state, _ = state_lib.sharded_init(init, optax.adam(1e-2), mesh, rules, jax.random.key(0),
                                    objective=part, model_config=CFG)
  initial = jax.tree.map(np.asarray, state.params)
  state = state.replace(params=jax.tree.map(lambda x: x + 0.5, state.params), step=state.step + 2)
  saver = checkpoint.Checkpointer(str(tmp_path), keep=1, process_index=0)
  saver.save(2, state, {'position': 0})
  saver.close()
  restorer = checkpoint.Checkpointer(str(tmp_path), keep=1, process_index=0)
  restored, _ = restorer.restore(2, state_lib.abstract_state(state))
  restorer.close()
  assert int(restored.step) == 2
  for name in ('generator', 'discriminator_head'):
    for got, want, before in zip(jax.tree.leaves(restored.params['objective'][name]),
                                 jax.tree.leaves(state.params['objective'][name]),
                                 jax.tree.leaves(initial['objective'][name])):
      np.testing.assert_array_equal(got, want)
      assert not np.array_equal(got, before)
  for got, want in zip(jax.tree.leaves(state_lib.model_params(restored.params)),
                       jax.tree.leaves(state_lib.model_params(state.params))):
    np.testing.assert_array_equal(got, want)


def test_mask_rate_is_of_the_candidate_tokens_and_never_a_whitespace_piece():
  """mask_rate is a fraction of the candidates (real, not special, not whitespace-only), as
  ELECTRA's on WordPiece text, which has no whitespace tokens: each row masks round(0.15 n) of
  its n candidates, each candidate equally likely, and never a whitespace piece, so fewer
  than 15% of the real tokens."""
  vocab = toy_vocab(64)
  whitespace = np.zeros(vocab.size, bool)
  whitespace[7:15] = True  # 8 of the 57 ordinary ids
  vocab = dataclasses.replace(vocab, is_whitespace=whitespace)
  part = electra.make({}, vocab=vocab, seq_len=128)
  rows, length = 512, 128
  rng = np.random.default_rng(5)
  tokens = rng.integers(7, vocab.size, (rows, length)).astype(np.int32)
  segments = np.ones_like(tokens)
  for row, end in enumerate(rng.integers(64, length + 1, rows)):
    segments[row, end:] = 0
  tokens = np.where(segments > 0, tokens, vocab.pad_id)
  tokens[:, 0] = vocab.cls_id
  selected = np.asarray(jax.jit(part.masker.select)(jax.random.key(5), tokens, segments))
  real = segments > 0
  candidates = real & ~vocab.is_special[tokens] & ~whitespace[tokens]
  assert not (selected & ~candidates).any()
  budget = np.minimum(20, np.maximum(1, np.round(0.15 * candidates.sum(1))))  # 20: ceil(0.15 x 128)
  np.testing.assert_array_equal(selected.sum(1), budget)
  # Every candidate equally likely: 15% of the candidates at even and at odd positions alike,
  # within 4 binomial standard errors (0.003 with 20k candidates).
  for half in (0, 1):
    group = candidates[:, half::2]
    fraction = selected[:, half::2][group].mean()
    assert abs(fraction - 0.15) < 4 * np.sqrt(0.15 * 0.85 / group.sum()), fraction
  share = whitespace[tokens][real].mean()
  assert 0.12 < share < 0.16  # whitespace pieces among the real tokens (8/57 of the ordinary)
  assert abs(selected.sum() / real.sum() - 0.15 * candidates.sum() / real.sum()) < 0.002
  assert selected.sum() / real.sum() < 0.135


@pytest.mark.parametrize('settings,message', [
    ({'generator_fraction': 0.0}, 'generator_fraction'), ({'mask_rate': 1.0}, 'mask_rate'),
    ({'lambda': 50}, 'Unknown setting config.electra.lambda')])
def test_bad_settings_fail_in_one_line(settings, message):
  with pytest.raises(ValueError, match=message) as error:
    objective(**settings)
  assert '\n' not in str(error.value)


@pytest.mark.slow
def test_trains_through_train_py_and_the_evaluated_model_is_the_discriminator(
    runs_root, shared_cache):
  from training import experiment  # pylint: disable=import-outside-toplevel

  workdir = trained_run(runs_root, 'electra:tiny', shared_cache)
  assert_train_loss_falls(workdir, margin=2.0)
  params, step, exp = experiment.restore_params(workdir)
  model_params, own = state_lib.split_params(params)
  assert step == 16 and set(own['electra']) == {'generator', 'discriminator_head'}
  batch = batch_of()
  inputs, _ = exp.objective.prepare(jax.random.key(0), batch)
  hidden = jax.jit(Transformer(exp.model_config).apply)({'params': model_params}, inputs).hidden
  assert hidden.shape == (8, SEQ_LEN, exp.model_config.embed_dim)
