"""Permutation LM: target sampling, factorisation order, both streams' masks, no leaks, loss."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import plm as plm_config
from data.vocab import toy_vocab
from models import masks
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer
from objectives import base, plm, registry

VOCAB = toy_vocab(64)
BOS, EOS, PAD = VOCAB.bos_id, VOCAB.eos_id, VOCAB.pad_id


def packed_batch(lengths_per_row, seq_len, seed=0):
  """Host-style packed windows: each document is bos + pieces + eos, then padding."""
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths_per_row), seq_len), PAD, np.int32)
  segments = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  for row, lengths in enumerate(lengths_per_row):
    cursor = 0
    for doc, length in enumerate(lengths, start=1):
      pieces = [BOS] + list(rng.integers(7, VOCAB.size, length - 2)) + [EOS]
      tokens[row, cursor:cursor + length] = pieces
      segments[row, cursor:cursor + length] = doc
      positions[row, cursor:cursor + length] = np.arange(length)
      cursor += length
    assert cursor <= seq_len
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
          'positions': jnp.asarray(positions)}


_PREPARE = jax.jit(plm.PermutationLM.prepare, static_argnums=0)


def prepare(batch, seed, **settings):
  objective = plm.make(settings, vocab=VOCAB, seq_len=batch['tokens'].shape[1])
  inputs, targets = _PREPARE(objective, jax.random.key(seed), batch, base.base_inputs(batch))
  return objective, inputs, targets


def brute_force_masks(segments, ranks, index, weights):
  """Both streams' masks from the order as XLNet defines it: the context (non-targets) is
  seen by everyone in its document and sees only itself; target z_t sees the context and
  z_<t (query stream), plus itself (content stream)."""
  length = len(segments)
  targets = [int(i) for i, w in zip(index, weights) if w > 0]
  order = sorted(targets, key=lambda i: ranks[i])  # z: the targets in factorisation order
  step = {position: t for t, position in enumerate(order)}
  content = np.zeros((length, length), bool)
  for i in range(length):
    for j in range(length):
      if segments[i] == 0 or segments[i] != segments[j]:
        continue
      if j not in step:
        content[i, j] = True
      elif i in step:
        content[i, j] = step[j] <= step[i]
  query = np.zeros((len(index), length), bool)
  for p, i in enumerate(index):
    for j in range(length):
      if segments[i] == 0 or segments[i] != segments[j]:
        continue
      if j not in step:
        query[p, j] = True
      elif int(i) in step:
        query[p, j] = step[j] < step[int(i)]
  return content, query


def model_masks(inputs):
  """The masks the model builds from the objective's inputs (see models/transformer.py)."""
  segments, order, index = inputs.segment_ids, inputs.attn_order, inputs.query_index
  content = masks.attention_mask(segments, segments, order, order)
  gather = lambda x: jnp.take_along_axis(x, index, axis=1)
  query = masks.attention_mask(gather(segments), segments, gather(order), order, strict=True)
  return np.asarray(content[:, 0]), np.asarray(query[:, 0])


def test_targets_count_never_padding_or_special_and_last_in_order():
  lengths = [[48], [20, 28], [10, 9, 12], [12], [5], [30, 6]]
  batch = packed_batch(lengths, 48, seed=1)
  for seed in range(5):
    _, inputs, targets = prepare(batch, seed, num_predict=8, max_span=3)
    tokens, segments = np.asarray(batch['tokens']), np.asarray(batch['segment_ids'])
    ranks, index = np.asarray(inputs.attn_order), np.asarray(inputs.query_index)
    weights = np.asarray(targets['weights'])
    assert index.shape == (6, 8) and not inputs.causal
    for row in range(6):
      candidates = (segments[row] > 0) & ~VOCAB.is_special[tokens[row]]
      picked = index[row][weights[row] > 0]
      real = (segments[row] > 0).sum()  # targets scale with the row's real tokens
      assert weights[row].sum() == min(max(1, round(8 * real / 48)), candidates.sum())
      assert len(set(index[row])) == 8
      assert candidates[picked].all()  # never padding, bos or eos
      assert not candidates[index[row][weights[row] == 0]].any()
      np.testing.assert_array_equal(targets['targets'][row], tokens[row][index[row]])
      # Targets come last: context rank 0, targets 1..n, all distinct.
      others = np.setdiff1d(np.arange(48), picked)
      assert (ranks[row][others] == 0).all()
      assert sorted(ranks[row][picked]) == list(range(1, len(picked) + 1))
  assert [int(w.sum()) for w in np.asarray(targets['weights'])] == [8, 8, 5, 2, 1, 6]


def test_spans_are_contiguous_with_lengths_from_one_over_n():
  seq_len, num_predict, max_span, rows = 600, 100, 5, 48
  tokens = jnp.asarray(np.random.default_rng(0).integers(7, 64, (rows, seq_len)), jnp.int32)
  batch = {'tokens': tokens, 'segment_ids': jnp.ones_like(tokens),
           'positions': jnp.broadcast_to(jnp.arange(seq_len), tokens.shape)}
  _, inputs, targets = prepare(batch, 0, num_predict=num_predict, max_span=max_span)
  runs = []
  for row in range(rows):
    is_target = np.zeros(seq_len, bool)
    is_target[np.asarray(inputs.query_index[row])] = True
    assert is_target.sum() == num_predict == targets['weights'][row].sum()
    edges = np.diff(np.concatenate([[0], is_target.astype(int), [0]]))
    row_runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    assert row_runs.sum() == num_predict and 1 <= row_runs.min() and row_runs.max() <= max_span
    runs.extend(row_runs)
  frequencies = np.bincount(runs, minlength=max_span + 1)[1:] / len(runs)
  # P(n) ~ 1/n: 0.438, 0.219, 0.146, 0.109, 0.088; about 2100 spans, the last of each row cut.
  np.testing.assert_allclose(frequencies, plm.span_length_probs(max_span), atol=0.035)
  assert len(runs) > 40 * rows


def test_span_mask_uses_only_the_available_slots():
  for seed in range(20):
    available = 7 + seed
    mask = np.asarray(plm.sample_span_mask(jax.random.key(seed), 40, jnp.asarray(available),
                                           10, 4))
    assert mask.sum() == min(10, available) and not mask[available:].any()


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_both_stream_masks_match_brute_force_from_the_order(seed):
  batch = packed_batch([[9, 7], [16], [6, 5]], 18, seed=seed)
  _, inputs, targets = prepare(batch, seed, num_predict=5, max_span=2)
  content, query = model_masks(inputs)
  for row in range(3):
    expected_content, expected_query = brute_force_masks(
        np.asarray(batch['segment_ids'][row]), np.asarray(inputs.attn_order[row]),
        np.asarray(inputs.query_index[row]), np.asarray(targets['weights'][row]))
    np.testing.assert_array_equal(content[row], expected_content)
    weighted = np.asarray(targets['weights'][row]) > 0
    np.testing.assert_array_equal(query[row][weighted], expected_query[weighted])
    assert query[row][weighted].any(axis=-1).all()  # every target sees some context


def test_identity_order_gives_causal_masks():
  segments = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
  length = segments.shape[1]
  order = masks.causal_order(segments)
  inputs = ModelInputs(tokens=jnp.zeros_like(segments), positions=order, segment_ids=segments,
                       attn_order=order, query_index=order)
  content, query = model_masks(inputs)
  same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
  np.testing.assert_array_equal(query, same & np.tril(np.ones((length, length), bool), -1))
  np.testing.assert_array_equal(content, same & np.tril(np.ones((length, length), bool)))
  causal = masks.attention_mask(segments, segments, order, order)[:, 0]
  np.testing.assert_array_equal(content, causal)


@functools.cache
def tiny_model(position):
  """A 2-layer two-stream model and jitted (init, logit dependence) functions for it."""
  config = ModelConfig(vocab_size=VOCAB.size, num_layers=2, embed_dim=32, num_heads=2,
                       mlp_dim=64, max_len=32, position=position, two_stream=True,
                       scan_layers=False)
  model = Transformer(config)
  direction = jax.random.normal(jax.random.key(42), (VOCAB.size,))

  def dependence(params, inputs):
    """|d (logits[b, p] . u) / d embedding[b', t, :]| summed over the embedding: [B, P, B, T].

    u is a fixed random direction in vocabulary space, so a dependence of any logit shows up
    (almost surely) while an exact zero stays exactly zero.
    """
    embeddings = params['params']['token_embed']['embedding'][inputs.tokens]

    def projected_logits(x):
      return model.apply(params, inputs, token_embeddings=x).logits @ direction

    return jnp.abs(jax.jacrev(projected_logits)(embeddings)).sum(axis=-1)

  init = jax.jit(lambda rng, inputs: nn.unbox(model.init(rng, inputs)))
  return init, jax.jit(dependence)


@pytest.mark.parametrize('position', ['learned', 'rotary'])
@pytest.mark.slow
def test_query_logits_never_see_their_own_token_or_later_ones(position):
  batch = packed_batch([[8, 8], [11]], 16, seed=3)
  init, logit_dependence = tiny_model(position)
  for seed in (0, 1):
    objective, inputs, targets = prepare(batch, seed, num_predict=4, max_span=2)
    assert objective.model_overrides() == {'two_stream': True}
    dependence = np.asarray(logit_dependence(init(jax.random.key(seed), inputs), inputs))
    segments, ranks = np.asarray(batch['segment_ids']), np.asarray(inputs.attn_order)
    checked = 0
    for row in range(2):
      for p, i in enumerate(np.asarray(inputs.query_index[row])):
        if targets['weights'][row, p] == 0:
          continue
        visible = (segments[row] == segments[row, i]) & (ranks[row] < ranks[row, i])
        got = dependence[row, p]
        assert got[row, i] == 0.0  # its own token
        assert (got[row][~visible] == 0.0).all()  # itself, later targets, other documents
        assert (got[1 - row] == 0.0).all()  # other sequences of the batch
        assert (got[row][visible] > 0.0).all() and visible.sum() > 0
        checked += 1
    assert checked == 4 + 3  # the row of 11 real tokens of 16 gets round(4 * 11 / 16) = 3


def test_identity_order_query_stream_is_strictly_causal():
  segments = jnp.asarray([[1, 1, 1, 1, 1, 2, 2, 2]], jnp.int32)
  positions = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2]], jnp.int32)
  order = masks.causal_order(segments)
  inputs = ModelInputs(tokens=jnp.arange(8, 16, dtype=jnp.int32)[None], positions=positions,
                       segment_ids=segments, attn_order=order, query_index=order)
  init, logit_dependence = tiny_model('rotary')
  seen = np.asarray(logit_dependence(init(jax.random.key(0), inputs), inputs))[0, :, 0] > 0
  same = np.asarray(segments[0][:, None] == segments[0][None, :])
  # The first token of each document sees no key at all (its attention row is empty); the
  # objective never gives such a query a weight, so only the others are compared.
  firsts = np.asarray(positions[0] == 0)
  expected = same & np.tril(np.ones((8, 8), bool), -1)
  np.testing.assert_array_equal(seen[~firsts], expected[~firsts])


def test_loss_matches_numpy():
  logits = np.array([[[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 5.0]],
                     [[-2.0, 3.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]]],
                    np.float32)
  labels = np.array([[0, 2, 1], [1, 3, 0]], np.int32)
  weights = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
  expected = -(picked * weights).sum() / weights.sum()  # about 1.4600 over 5 targets
  objective = plm.make({}, vocab=VOCAB, seq_len=64)
  outputs = type('Outputs', (), {'logits': jnp.asarray(logits)})()
  loss, metrics = objective.loss(outputs, {'targets': jnp.asarray(labels),
                                           'weights': jnp.asarray(weights)})
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(base.metric_value(*metrics['loss']), expected, rtol=1e-6)
  assert base.metric_value(*metrics['accuracy']) == pytest.approx(2 / 5)  # one right per row
  assert float(metrics['predictions'][0]) == 5.0


def test_prepare_is_deterministic_per_rng_and_varies_with_it():
  batch = packed_batch([[32]] * 4, 32, seed=0)
  _, first, _ = prepare(batch, 7)
  _, again, _ = prepare(batch, 7)
  _, other, _ = prepare(batch, 8)
  np.testing.assert_array_equal(first.attn_order, again.attn_order)
  assert not np.array_equal(first.attn_order, other.attn_order)
  assert first.query_index.shape == (4, 5)  # round(32 / 6)


@pytest.mark.parametrize('settings, seq_len, message', [
    ({'k': 1}, 64, 'config.plm.k'),
    ({'k': 200}, 64, 'config.plm.k=200 leaves no targets'),
    ({'num_predict': 64}, 64, 'config.plm.num_predict=64 leaves no context'),
    ({'num_predict': -1}, 64, 'config.plm.num_predict'),
    ({'num_predict': 3, 'max_span': 4}, 64, 'config.plm.max_span=4'),
    ({'max_span': 0}, 64, 'config.plm.max_span=0'),
    ({'k': 6, 'max_span': 5}, 12, 'config.plm.max_span=5'),
    ({'mask_rate': 0.15}, 64, 'config.plm.mask_rate'),
    ({'num_predict': 2.5}, 64, 'config.plm.num_predict'),
])
def test_bad_settings_fail_with_one_line(settings, seq_len, message):
  with pytest.raises(ValueError, match=message.replace('.', r'\.')) as error:
    plm.make(settings, vocab=VOCAB, seq_len=seq_len)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('preset', ['tiny', 'xlnet_base'])
def test_configs_build(preset):
  config = plm_config.get_config(preset)
  assert config.objective == 'plm' and dict(config.plm) == registry.defaults('plm')
  objective = registry.build(config.objective, lambda name: config[name], vocab=VOCAB,
                             seq_len=config.seq_len)
  assert objective.model_overrides() == {'two_stream': True}
  model = ModelConfig.from_config(config.model, vocab_size=100, **objective.model_overrides())
  assert model.two_stream and model.position == 'rotary'
  assert objective.parts[0][2].num_predict == round(config.seq_len / 6)
  if preset == 'xlnet_base':
    assert (model.num_layers, model.embed_dim, model.num_heads, model.mlp_dim) == (12, 768, 12,
                                                                                   3072)
    assert config.seq_len == model.max_len == 512 and model.dtype == 'bfloat16'


def test_a_document_of_targets_only_gives_its_first_target_to_the_context():
  # No bos/eos: the first document's four tokens are the only candidates, fewer than the
  # num_predict=5 a full row gets (the second document is special tokens only).
  tokens = jnp.asarray([[9, 10, 11, 12, BOS, BOS, BOS, BOS, BOS, BOS]], jnp.int32)
  segments = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]], jnp.int32)
  batch = {'tokens': tokens, 'segment_ids': segments, 'positions': jnp.arange(10)[None] * segments}
  for seed in range(4):
    _, inputs, targets = prepare(batch, seed, num_predict=5, max_span=2)
    ranks, weights = np.asarray(inputs.attn_order[0]), np.asarray(targets['weights'][0])
    index = np.asarray(inputs.query_index[0])
    assert weights.sum() == 3 and (index[weights > 0] < 4).all()
    assert (ranks[:4] == 0).sum() == 1 and sorted(ranks[:4]) == [0, 2, 3, 4]
    _, query = model_masks(inputs)
    assert query[0][weights > 0].any(axis=-1).all()


def test_a_mostly_padded_row_gets_predictions_in_proportion_to_its_real_tokens():
  """k=6 at seq_len 128 gives 21 targets per full row; a row of 30 real tokens gets
  round(21 * 30 / 128) = 5 (1/6 of them, as a full row), not 21 of its 28 candidates."""
  lengths = [[128], [30], [64, 32], [3]]
  batch = packed_batch(lengths, 128, seed=3)
  objective, inputs, targets = prepare(batch, 0)  # the defaults: k=6, max_span=5
  assert objective.num_predict == 21
  weights = np.asarray(targets['weights'])
  assert [int(w.sum()) for w in weights] == [21, 5, 16, 1]
  ranks = np.asarray(inputs.attn_order)
  for row, count in enumerate([21, 5, 16, 1]):
    assert sorted(ranks[row][ranks[row] > 0]) == list(range(1, count + 1))
  assert float(weights[1].sum()) / 28 < 0.2  # 28 candidates: bos and eos are never targets


@pytest.mark.slow
def test_last_layer_leaves_out_the_dead_content_stream_and_changes_no_logit():
  """The scanned model runs its last layer apart (parameters `last_layer`) and gives the
  unrolled model's logits from the same weights; the FLOP count leaves out exactly the
  last layer's content queries, attention, output projection and MLP."""
  from models import transformer  # pylint: disable=import-outside-toplevel
  from models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from training import flops  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig(vocab_size=40, num_layers=3, embed_dim=32, num_heads=4, mlp_dim=64,
                    max_len=16, two_stream=True, position='rotary', norm='post')
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(5, 40, (2, 12)), jnp.int32)
  order = jnp.asarray(np.stack([rng.permutation(12) for _ in range(2)]), jnp.int32)
  inputs = transformer.ModelInputs(
      tokens=tokens, positions=jnp.broadcast_to(jnp.arange(12), (2, 12)),
      segment_ids=jnp.ones((2, 12), jnp.int32), attn_order=order,
      query_index=jnp.asarray([[1, 4, 7], [0, 2, 11]], jnp.int32))
  scanned = transformer.Transformer(cfg)
  params = nn.unbox(scanned.init(jax.random.key(0), inputs)['params'])
  assert set(params['layers']['attention']['query']['kernel'].shape[:1]) == {2}
  got = scanned.apply({'params': params}, inputs).logits

  # The same weights as three unrolled layers, the last one run in full by a plain Block.
  unrolled_cfg = dataclasses.replace(cfg, scan_layers=False)
  unrolled = {k: v for k, v in params.items() if k not in ('layers', 'last_layer')}
  for i in range(2):
    unrolled[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
  unrolled['layers_2'] = params['last_layer']
  expected = transformer.Transformer(unrolled_cfg).apply({'params': unrolled}, inputs).logits
  np.testing.assert_allclose(got, expected, atol=1e-5)

  seq_len, queries = 12, 3
  d, f, n, h = cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.resolved_head_dim
  dead = seq_len * (2 * d * n * h + 2 * n * h * d + 4 * d * f) + 4 * seq_len * seq_len * n * h
  with_queries = flops.train_flops_per_sequence(cfg, seq_len, queries, queries)
  everything = (3.0 * cfg.num_layers * (seq_len * (8 * d * n * h + 4 * d * f)
                                        + queries * (4 * d * n * h + 4 * d * f)
                                        + 4 * (seq_len + queries) * seq_len * n * h)
                + 3.0 * 2 * queries * d * cfg.vocab_size)
  assert with_queries == everything - 3.0 * dead
