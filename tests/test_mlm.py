"""Masked LM: selection rates, the 80/10/10 split, word and span units, the loss and its errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.vocab import toy_vocab
from models.transformer import ModelOutputs
from objectives import base, mlm, registry

VOCAB = toy_vocab(64)
SPECIAL = 7  # ids below are special in the toy vocabulary


def _batch(seed: int, batch: int = 256, length: int = 64) -> dict[str, np.ndarray]:
  """Two documents per row, with [CLS]/[SEP] inside and padding of random length at the end."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(SPECIAL, VOCAB.size, (batch, length)).astype(np.int32)
  segments = np.ones((batch, length), np.int32)
  positions = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
  for row in range(batch):
    split, end = rng.integers(10, length // 2), rng.integers(length // 2 + 5, length + 1)
    segments[row, split:] = 2
    positions[row, split:] -= split
    segments[row, end:] = 0
    tokens[row, end:] = VOCAB.pad_id
    positions[row, end:] = 0
    tokens[row, [0, split - 1]] = [VOCAB.cls_id, VOCAB.sep_id]
  return {'tokens': tokens, 'segment_ids': segments, 'positions': positions}


def _objective(seq_len: int = 64, **settings):
  return registry.build('mlm', lambda name: settings, vocab=VOCAB, seq_len=seq_len)


def _prepare(objective, batch, seed):
  inputs, targets = jax.jit(objective.prepare)(jax.random.key(seed), batch)
  index = np.asarray(inputs.predict_index)
  weights = np.asarray(targets[0]['weights'])
  selected = np.zeros(batch['tokens'].shape, bool)
  for row in range(index.shape[0]):
    selected[row, index[row][weights[row] > 0]] = True
  return inputs, targets[0], selected


def _candidates(batch):
  return (batch['segment_ids'] > 0) & ~VOCAB.is_special[batch['tokens']]


def _words(tokens, candidates, segments):
  """Lists of positions of each word, by the documented rule, in numpy."""
  words, current = [], []
  for t in range(len(tokens)):
    continues = t > 0 and candidates[t - 1] and segments[t - 1] == segments[t]
    if candidates[t] and (VOCAB.word_start[tokens[t]] or not continues):
      if current:
        words.append(current)
      current = [t]
    elif candidates[t]:
      current.append(t)
    elif current:
      words.append(current)
      current = []
  if current:
    words.append(current)
  return words


def test_token_budget_is_berts_num_to_predict_and_fraction_matches_rate():
  objective = _objective()
  assert objective.parts[0][2].max_predictions == 10  # ceil(64 * 0.15)
  batch = _batch(0)
  _, targets, selected = _prepare(objective, batch, 0)
  candidates = _candidates(batch)
  counts = candidates.sum(1)
  expected = np.minimum(10, np.maximum(1, np.round(counts * 0.15)))
  np.testing.assert_array_equal(selected.sum(1), expected)
  assert not (selected & ~candidates).any()  # never padding or special tokens
  assert abs(selected.sum() / candidates.sum() - 0.15) < 0.01
  # Targets are the original tokens at the predicted positions.
  np.testing.assert_array_equal(targets['weights'].sum(1), expected)


def test_max_predictions_caps_every_sequence():
  batch = _batch(1)
  _, _, selected = _prepare(_objective(mask_rate=0.5, max_predictions=3), batch, 1)
  assert selected.sum(1).max() == 3 and selected.sum(1).min() == 3


def test_eighty_ten_ten_split():
  objective = _objective()
  batch = _batch(2, batch=512)
  masked = replaced = kept = 0
  for seed in range(4):
    inputs, targets, selected = _prepare(objective, batch, seed)
    new, old = np.asarray(inputs.tokens), batch['tokens']
    np.testing.assert_array_equal(new[~selected], old[~selected])  # nothing else changes
    chosen_new, chosen_old = new[selected], old[selected]
    masked += (chosen_new == VOCAB.mask_id).sum()
    replaced += ((chosen_new != VOCAB.mask_id) & (chosen_new != chosen_old)).sum()
    kept += (chosen_new == chosen_old).sum()
    assert not VOCAB.is_special[chosen_new[chosen_new != VOCAB.mask_id]].any()
  total = masked + replaced + kept
  ordinary = VOCAB.size - SPECIAL
  assert total > 14000
  assert abs(masked / total - 0.8) < 0.015
  assert abs(replaced / total - 0.1 * (1 - 1 / ordinary)) < 0.01  # a random id may equal the old
  assert abs(kept / total - 0.1 * (1 + 1 / ordinary)) < 0.01


def test_whole_word_masking_masks_every_piece():
  objective = _objective(unit='word')
  batch = _batch(3)
  _, _, selected = _prepare(objective, batch, 3)
  candidates = _candidates(batch)
  multi_piece = 0
  for row in range(batch['tokens'].shape[0]):
    words = _words(batch['tokens'][row], candidates[row], batch['segment_ids'][row])
    for word in words:
      assert selected[row, word].all() or not selected[row, word].any()
      multi_piece += len(word) > 1 and selected[row, word].all()
  assert multi_piece > 100
  assert not (selected & ~candidates).any()
  budget = np.minimum(10, np.maximum(1, np.round(candidates.sum(1) * 0.15)))
  assert (selected.sum(1) <= budget).all()
  assert abs(selected.sum() / candidates.sum() - 0.15) < 0.015


def _spanbert_span_lengths(rng, words: int, budget: int, probs: np.ndarray) -> list[int]:
  """SpanBERT's masking loop (PairWithSpanMaskingScheme.mask in its pretraining/fairseq/data/
  masking.py) on one sequence of `words` one-piece words, then its merge_intervals: the
  merged spans' lengths. Numpy, a line-by-line port."""
  cdf = np.cumsum(probs)
  mask, spans = set(), []
  while len(mask) < budget:
    span_len = min(int(np.searchsorted(cdf, rng.random(), side='right')), len(probs) - 1) + 1
    anchor = int(rng.integers(words))
    if anchor in mask:
      continue
    spans.append([anchor, anchor])
    mask.add(anchor)
    num_words, right = 1, anchor + 1
    while num_words < span_len and right < words and len(mask) < budget:
      mask.add(right)
      spans[-1][1] = right
      right, num_words = right + 1, num_words + 1
  merged = []
  for start, end in sorted(spans):
    if merged and merged[-1][1] + 1 >= start:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return [end - start + 1 for start, end in merged]


def _assert_spans_match_spanbert(chosen: np.ndarray, budget: int, seed: int,
                                 tolerance: float) -> np.ndarray:
  """Runs of chosen words [rows, words] against as many rows of SpanBERT's loop: histograms
  within total variation `tolerance`, means within 4 standard errors. With n spans a side the
  sampling noise alone gives a distance of about 0.5 sum_k sqrt(4 p_k (1 - p_k) / (pi n)):
  0.007 at 50k spans, 0.010 at 25k. Returns the runs."""
  rows, words = chosen.shape
  probs = mlm.span_length_probs(0.2, 10)
  assert (chosen.sum(1) == budget).all()
  edges = np.diff(np.pad(chosen.astype(np.int8), ((0, 0), (1, 1))), axis=1)
  runs = np.nonzero(edges == -1)[1] - np.nonzero(edges == 1)[1]
  rng = np.random.default_rng(seed)
  reference = np.concatenate([_spanbert_span_lengths(rng, words, budget, probs)
                              for _ in range(rows)])
  top = max(runs.max(), reference.max()) + 1
  distance = 0.5 * np.abs(np.bincount(runs, minlength=top) / len(runs)
                          - np.bincount(reference, minlength=top) / len(reference)).sum()
  assert distance < tolerance, distance
  error = np.sqrt(runs.var() / len(runs) + reference.var() / len(reference))
  assert abs(runs.mean() - reference.mean()) < 4 * error, (runs.mean(), reference.mean())
  return runs


@pytest.mark.parametrize('words, budget, rows, tolerance', [(128, 19, 5000, 0.03),
                                                       (12, 6, 26_000, 0.02)])
@pytest.mark.slow
def test_spans_follow_spanberts_masking_loop_merged(words, budget, rows, tolerance):
  """One run of one-piece words: span lengths, merged where spans touch or overlap, follow
  SpanBERT's loop, budget binding; merged spans may exceed span_max as SpanBERT's do."""
  probs = mlm.span_length_probs(0.2, 10)
  assert abs((np.arange(1, 11) * probs).sum() - 3.797) < 1e-3  # the unmerged mean
  ids = jnp.arange(words)
  linked = jnp.arange(words) > 0
  chosen = jax.jit(jax.vmap(lambda key: mlm.select_words(key, ids, linked, budget, budget,
                                                         probs)))(
      jax.random.split(jax.random.key(words), rows))
  runs = _assert_spans_match_spanbert(np.asarray(chosen) > 0, budget, seed=words,
                                     tolerance=tolerance)
  assert len(runs) > 25_000
  if words > budget + 10:
    assert (runs > 10).any()  # merged past span_max


def test_span_masking_in_prepare_spends_the_budget_in_whole_words_but_the_last():
  """Spans take whole words, and exactly the budget: as in SpanBERT, the budget may end a
  span inside a word, whose first pieces are then taken (at most one such word a row)."""
  objective = _objective(seq_len=128, unit='span')
  batch = _batch(5, batch=256, length=128)
  _, _, selected = _prepare(objective, batch, 5)
  candidates = _candidates(batch)
  assert not (selected & ~candidates).any()
  budget = np.minimum(20, np.maximum(1, np.round(candidates.sum(1) * 0.15)))
  np.testing.assert_array_equal(selected.sum(1), budget)
  cut = 0
  for row in range(64):
    partial = 0
    for word in _words(batch['tokens'][row], candidates[row], batch['segment_ids'][row]):
      chosen = selected[row, word]
      if chosen.any() and not chosen.all():
        assert chosen[:chosen.sum()].all()  # the word's first pieces
        partial += 1
    assert partial <= 1
    cut += partial
  assert 0 < cut < 64


def test_loss_matches_numpy_and_has_zero_gradient_at_unselected_slots():
  objective = _objective()
  rng = np.random.default_rng(6)
  logits = rng.normal(size=(4, 10, VOCAB.size)).astype(np.float32) * 3
  targets = rng.integers(0, VOCAB.size, (4, 10)).astype(np.int32)
  weights = (rng.random((4, 10)) < 0.6).astype(np.float32)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected = -(picked * weights).sum() / weights.sum()

  def loss_of(logits):
    outputs = ModelOutputs(hidden=jnp.zeros((4, 64, 8)), logits=logits)
    return objective.loss(outputs, ({'targets': targets, 'weights': weights},))

  loss, metrics = loss_of(jnp.asarray(logits))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(base.metric_value(*metrics['mlm_loss'])) == pytest.approx(expected, rel=1e-5)
  assert float(metrics['mlm_loss'][1]) == weights.sum()
  grad = np.asarray(jax.grad(lambda x: loss_of(x)[0])(jnp.asarray(logits)))
  assert (grad[weights == 0] == 0).all()
  assert (np.abs(grad[weights > 0]).sum(-1) > 0).all()


def test_prepare_sets_bidirectional_attention_and_pads_slots_with_zero():
  batch = _batch(7, batch=8)
  inputs, targets, _ = _prepare(_objective(max_predictions=30), batch, 7)
  assert inputs.attn_order is None and not inputs.causal
  weights = np.asarray(targets['weights'])
  assert (np.asarray(inputs.predict_index)[weights == 0] == 0).all()
  assert (np.asarray(targets['targets'])[weights == 0] == 0).all()
  index = np.asarray(inputs.predict_index)
  picked = np.take_along_axis(batch['tokens'], index, 1)
  np.testing.assert_array_equal(np.asarray(targets['targets'])[weights > 0], picked[weights > 0])


@pytest.mark.parametrize('settings, message', [
    ({'mask_rate': 0.0}, 'mask_rate'),
    ({'mask_rate': 1.0}, 'mask_rate'),
    ({'max_predictions': 65}, 'max_predictions'),
    ({'mask_token_rate': 0.8, 'random_token_rate': 0.3}, 'random_token_rate'),
    ({'unit': 'sentence'}, 'unit'),
    ({'span_p': 0.0}, 'span_p'),
    ({'mask_ratio': 0.1}, 'mask_ratio'),
])
def test_bad_settings_raise_one_line_errors(settings, message):
  with pytest.raises(ValueError, match=message) as error:
    _objective(**settings)
  assert '\n' not in str(error.value)


def test_vocab_without_mask_token_is_rejected():
  vocab = dataclasses.replace(VOCAB, mask_id=-1)
  with pytest.raises(ValueError, match='mask'):
    registry.build('mlm', lambda name: {}, vocab=vocab, seq_len=64)


def _runs(selected_row, segments_row):
  """(start, end) of each run of selected positions that stays inside one segment."""
  runs, start = [], None
  for t, chosen in enumerate(list(selected_row) + [False]):
    boundary = start is not None and t < len(segments_row) and segments_row[t] != segments_row[t - 1]
    if start is not None and (not chosen or boundary):
      runs.append((start, t))
      start = None
    if chosen and start is None:
      start = t
  return runs


def test_span_masking_applies_80_10_10_to_each_span_as_a_whole():
  """SpanBERT: a span is all [MASK], all random ids, or all unchanged; never a mixture."""
  objective = _objective(seq_len=128, unit='span')
  batch = _batch(8, batch=512, length=128)
  inputs, _, selected = _prepare(objective, batch, 8)
  new, old = np.asarray(inputs.tokens), batch['tokens']
  counts = {'mask': 0, 'random': 0, 'kept': 0}
  long_spans = 0
  for row in range(new.shape[0]):
    for start, end in _runs(selected[row], batch['segment_ids'][row]):
      masked = new[row, start:end] == VOCAB.mask_id
      assert masked.all() or not masked.any(), (row, start, end)
      changed = new[row, start:end] != old[row, start:end]
      kind = 'mask' if masked.all() else 'random' if changed.any() else 'kept'
      counts[kind] += 1
      long_spans += end - start > 2
  total = sum(counts.values())
  assert total > 1000 and long_spans > 300
  # Per span: 0.8 / 0.1 / 0.1; a random span equal to the original (1/57 per token) counts as kept.
  assert abs(counts['mask'] / total - 0.8) < 0.03
  assert abs(counts['random'] / total - 0.1) < 0.025
  assert abs(counts['kept'] / total - 0.1) < 0.025


@pytest.mark.parametrize('unit', ['token', 'span'])
def test_whitespace_only_pieces_are_never_masked_nor_drawn_as_replacements(unit):
  whitespace = np.zeros(VOCAB.size, bool)
  whitespace[7:15] = True  # 8 of the 57 ordinary ids, word starts among them
  vocab = dataclasses.replace(VOCAB, is_whitespace=whitespace)
  objective = registry.build('mlm', lambda name: {'unit': unit, 'mask_token_rate': 0.0,
                                                  'random_token_rate': 1.0},
                             vocab=vocab, seq_len=64)
  batch = _batch(9, batch=128)
  inputs, _, selected = _prepare(objective, batch, 9)
  tokens = batch['tokens']
  candidates = _candidates(batch) & ~whitespace[tokens]
  assert whitespace[tokens][_candidates(batch)].mean() > 0.1  # plenty of them to choose from
  assert not (selected & whitespace[tokens]).any()
  assert abs(selected.sum() / candidates.sum() - 0.15) < 0.02
  replaced = np.asarray(inputs.tokens)[selected]  # every chosen token replaced at random
  assert len(replaced) > 500 and not whitespace[replaced].any()
  assert not VOCAB.is_special[replaced].any()


def test_whitespace_flags_of_sentencepiece_pieces():
  from data.vocab import whitespace_flags  # pylint: disable=import-outside-toplevel

  pieces = ['▁', '▁▁▁', '\n', '\t', '<0x0A>', '<0x20>', '<0xA0>', '<0x41>', '▁the', 'the', '[MASK]']
  np.testing.assert_array_equal(whitespace_flags(pieces),
                                [True, True, True, True, True, True, False, False, False, False,
                                 False])


def _sbo_objective(**settings):
  return _objective(unit='span', sbo=True, **settings)


def test_span_boundaries_are_the_tokens_just_outside_each_span():
  batch = _batch(10, batch=48)
  inputs, targets, selected = _prepare(_sbo_objective(), batch, 10)
  bounds = np.asarray(inputs.span_boundaries)
  index, weights = np.asarray(inputs.predict_index), np.asarray(targets['weights'])
  checked = 0
  for row in range(48):
    runs = _runs(selected[row], batch['segment_ids'][row])
    for slot in range(index.shape[1]):
      if weights[row, slot] == 0:
        assert (bounds[row, slot] == 0).all()
        continue
      i = index[row, slot]
      start, end = next((s, e) for s, e in runs if s <= i < e)
      assert tuple(bounds[row, slot]) == (max(start - 1, 0), min(end, 63), i - start)
      checked += 1
  assert checked > 300


def test_sbo_head_reads_only_the_boundary_states_and_the_offset():
  from models.config import ModelConfig  # pylint: disable=import-outside-toplevel

  config = ModelConfig(vocab_size=VOCAB.size, embed_dim=32, num_heads=2, mlp_dim=64,
                       sbo_max_offset=10)
  head = mlm.SpanBoundaryHead(config)
  hidden = jax.random.normal(jax.random.key(0), (1, 16, 32))
  bounds = jnp.asarray([[[2, 6, 0], [2, 6, 2], [9, 12, 1]]], jnp.int32)
  params = head.init(jax.random.key(1), hidden, bounds)
  assert set(params['params']) == {'dense_1', 'dense_2', 'norm_1', 'norm_2', 'offset_embed'}
  apply = jax.jit(lambda h, b: head.apply(params, h, b))
  out = np.asarray(apply(hidden, bounds))
  assert not np.allclose(out[0, 0], out[0, 1])  # same boundaries, other offset
  others = hidden.at[:, [0, 1, 3, 4, 5, 7, 8, 10, 11, 13, 14, 15]].add(5.0)
  np.testing.assert_array_equal(np.asarray(apply(others, bounds)), out)  # inside spans etc.
  moved = np.asarray(apply(hidden.at[:, 9].add(1.0), bounds))
  np.testing.assert_array_equal(moved[0, :2], out[0, :2])
  assert np.abs(moved[0, 2] - out[0, 2]).max() > 1e-3


def _tiny_model(objective):
  from models.config import ModelConfig  # pylint: disable=import-outside-toplevel
  from models.transformer import Transformer  # pylint: disable=import-outside-toplevel

  return Transformer(ModelConfig.from_config(
      dict(vocab_size=VOCAB.size, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
           max_len=64, scan_layers=False), **objective.model_overrides()))


@pytest.mark.slow
def test_sbo_loss_is_added_and_trains_its_head_only_when_switched_on():
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  batch = {k: jnp.asarray(v) for k, v in _batch(11, batch=8).items()}
  plain = _objective(unit='span')
  assert plain.model_overrides() == {}
  plain_inputs = jax.eval_shape(plain.prepare, jax.random.key(0), batch)[0]
  plain_params = jax.eval_shape(_tiny_model(plain).init, jax.random.key(0), plain_inputs)
  assert 'span_boundary' not in plain_params['params']  # off: the model builds no head

  objective = _sbo_objective()
  assert objective.model_overrides() == {'sbo_max_offset': 10}
  model = _tiny_model(objective)
  inputs, targets = jax.jit(objective.prepare)(jax.random.key(1), batch)
  params = jax.jit(lambda key: nn.unbox(model.init(key, inputs)['params']))(jax.random.key(0))
  assert 'span_boundary' in params

  def loss_fn(params):
    outputs = model.apply({'params': params}, inputs)
    loss, metrics = objective.loss(outputs, targets)
    return loss, (outputs, metrics)

  (loss, (outputs, metrics)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  part = targets[0]
  token, _ = base.token_cross_entropy(outputs.logits, part['targets'], part['weights'])
  boundary, _ = base.token_cross_entropy(outputs.sbo_logits, part['targets'], part['weights'])
  assert outputs.sbo_logits.shape == outputs.logits.shape
  np.testing.assert_allclose(float(loss), float(token) + float(boundary), rtol=1e-6)
  np.testing.assert_allclose(base.metric_value(*metrics['mlm_sbo_loss']), float(boundary),
                             rtol=1e-5)
  np.testing.assert_allclose(base.metric_value(*metrics['mlm_token_loss']), float(token),
                             rtol=1e-5)
  np.testing.assert_allclose(base.metric_value(*metrics['loss']), float(loss), rtol=1e-5)
  assert all(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads['span_boundary']))


def test_sbo_needs_span_masking():
  with pytest.raises(ValueError, match='config.mlm.sbo .* needs config.mlm.unit=span'):
    _objective(unit='word', sbo=True)


WHITESPACE_ID = 8  # a whitespace-only piece in the vocabularies below (a line break, a lone '▁')


def _whitespace_vocab():
  whitespace = np.zeros(VOCAB.size, bool)
  whitespace[WHITESPACE_ID] = True
  return dataclasses.replace(VOCAB, is_whitespace=whitespace)


@pytest.mark.slow
def test_spans_run_over_whitespace_pieces_as_spanberts_loop_over_words():
  """One-piece words each followed by a whitespace piece: spans cover and merge words as on
  the same words without the whitespace, bridging the whitespace between them."""
  vocab = _whitespace_vocab()
  words, budget, rows = 16, 6, 16_000
  tokens = jnp.asarray(np.tile([9, WHITESPACE_ID], words), jnp.int32)
  segments = jnp.ones_like(tokens)
  gap = jnp.asarray(vocab.is_whitespace)[tokens]
  candidates = ~gap
  ids, linked = mlm.word_ids(tokens, candidates, segments, jnp.asarray(vocab.word_start), gap)
  np.testing.assert_array_equal(np.asarray(ids)[:6], [0, 2 * words, 1, 2 * words, 2, 2 * words])
  assert np.asarray(linked)[1:words].all() and not np.asarray(linked)[0]
  probs = mlm.span_length_probs(0.2, 10)
  chosen = jax.jit(jax.vmap(lambda key: mlm.select_words(key, ids, linked, budget, budget,
                                                         probs)))(
      jax.random.split(jax.random.key(12), rows))
  runs = _assert_spans_match_spanbert(np.asarray(chosen)[:, :words] > 0, budget, seed=12,
                                     tolerance=0.03)
  assert len(runs) > 25_000
  # Without the bridge every word stands alone and each span is a single word.
  _, unlinked = mlm.word_ids(tokens, candidates, segments, jnp.asarray(vocab.word_start))
  assert not np.asarray(unlinked).any()


def test_merged_spans_draw_80_10_10_once_and_sbo_reads_their_outer_boundaries():
  """span_max=1: every sampled span is one word, so each run of two or more selected words
  is merged spans. Each is all [MASK], all random or all kept, and every target's SBO
  boundaries are the tokens just outside the whole run, offset counted from its start."""
  rows, length = 384, 64
  tokens = np.random.default_rng(14).choice(np.arange(9, VOCAB.size, 2), (rows, length))
  tokens = tokens.astype(np.int32)  # one-piece words
  batch = {'tokens': tokens, 'segment_ids': np.ones_like(tokens),
           'positions': np.tile(np.arange(length, dtype=np.int32), (rows, 1))}
  objective = _objective(seq_len=length, unit='span', span_max=1, sbo=True, mask_rate=0.4)
  inputs, targets, selected = _prepare(objective, batch, 14)
  new = np.asarray(inputs.tokens)
  bounds = np.asarray(inputs.span_boundaries)
  index, weights = np.asarray(inputs.predict_index), np.asarray(targets['weights'])
  kinds, merged, checked = {'mask': 0, 'random': 0, 'kept': 0}, 0, 0
  for row in range(rows):
    runs = _runs(selected[row], batch['segment_ids'][row])
    for start, end in runs:
      masked = new[row, start:end] == VOCAB.mask_id
      assert masked.all() or not masked.any(), (row, start, end)
      if end - start > 1:
        merged += 1
        changed = (new[row, start:end] != tokens[row, start:end]).any()
        kinds['mask' if masked.all() else 'random' if changed else 'kept'] += 1
    for slot in np.flatnonzero(weights[row]):
      i = index[row, slot]
      start, end = next((s, e) for s, e in runs if s <= i < e)
      assert tuple(bounds[row, slot]) == (max(start - 1, 0), min(end, length - 1), i - start)
      checked += 1
  assert merged > 1500 and checked == weights.sum()
  # One draw per merged span: 0.8 / 0.1 / 0.1 of them (a per-word draw would make most mixed).
  assert abs(kinds['mask'] / merged - 0.8) < 0.04
  assert abs(kinds['random'] / merged - 0.1) < 0.03


def test_span_boundaries_and_offsets_over_a_whitespace_piece():
  """The span of positions 2, 4, 5 (3 is whitespace) has boundaries 1 and 6 and offsets
  0, 1, 2 in selected tokens; the span at 8 has boundaries 7 and 9."""
  selected = jnp.asarray([[0, 0, 1, 0, 1, 1, 0, 0, 1, 0]], bool)
  gap = jnp.asarray([[0, 0, 0, 1, 0, 0, 1, 0, 0, 0]], bool)
  segments = jnp.ones((1, 10), jnp.int32)
  index = jnp.asarray([[2, 4, 5, 8, 0]], jnp.int32)
  weights = jnp.asarray([[1, 1, 1, 1, 0]], jnp.float32)
  np.testing.assert_array_equal(mlm.span_starts(selected, segments, gap)[0],
                                [0, 0, 1, 0, 0, 0, 0, 0, 1, 0])
  np.testing.assert_array_equal(mlm.span_boundaries(selected, segments, index, weights, gap)[0],
                                [[1, 6, 0], [1, 6, 1], [1, 6, 2], [7, 9, 0], [0, 0, 0]])
  # A document boundary ends a span even across whitespace.
  split = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]], jnp.int32)
  np.testing.assert_array_equal(mlm.span_boundaries(selected, split, index, weights, gap)[0],
                                [[1, 3, 0], [3, 6, 0], [3, 6, 1], [7, 9, 0], [0, 0, 0]])


def _bridged_spans(selected_row, segments_row, gap_row):
  """(first, last) selected position of each span: selected runs joined over gap positions."""
  spans, current = [], None
  for t, chosen in enumerate(selected_row):
    if chosen:
      if current is not None and segments_row[current[1]] == segments_row[t] and (
          gap_row[current[1] + 1:t].all()):
        current[1] = t
      else:
        current = [t, t]
        spans.append(current)
  return [tuple(span) for span in spans]


def test_span_masking_with_whitespace_pieces_keeps_span_lengths_the_80_10_10_and_sbo_bounds():
  """Whitespace pieces between words change neither the span lengths in words nor the
  per-span 80/10/10; SBO reads the tokens just outside the whole span."""
  vocab = _whitespace_vocab()
  rng = np.random.default_rng(13)
  rows, length = 256, 128
  plain = rng.choice(np.arange(9, VOCAB.size, 2), (rows, length)).astype(np.int32)  # 1-piece words
  spaced = np.full((rows, length), WHITESPACE_ID, np.int32)
  for row in range(rows):  # the same words, a whitespace piece after 40% of them
    out = 0
    for word in plain[row]:
      if out >= length:
        break
      spaced[row, out] = word
      out += 1 + (rng.random() < 0.4)
  results = {}
  for name, tokens in (('plain', plain), ('spaced', spaced)):
    batch = {'tokens': tokens, 'segment_ids': np.ones_like(tokens),
             'positions': np.tile(np.arange(length, dtype=np.int32), (rows, 1))}
    objective = registry.build('mlm', lambda _: {'unit': 'span', 'sbo': True}, vocab=vocab,
                               seq_len=length)
    inputs, targets, selected = _prepare(objective, batch, 13)
    gap = vocab.is_whitespace[tokens]
    assert not (selected & gap).any()
    new = np.asarray(inputs.tokens)
    np.testing.assert_array_equal(new[gap], tokens[gap])  # whitespace inside spans stays
    bounds = np.asarray(inputs.span_boundaries)
    index, weights = np.asarray(inputs.predict_index), np.asarray(targets['weights'])
    sizes, kinds = [], {'mask': 0, 'random': 0, 'kept': 0}
    for row in range(rows):
      spans = _bridged_spans(selected[row], batch['segment_ids'][row], gap[row])
      for first, last in spans:
        chosen = selected[row, first:last + 1]
        sizes.append(chosen.sum())
        masked = new[row, first:last + 1][chosen] == VOCAB.mask_id
        assert masked.all() or not masked.any()
        changed = (new[row, first:last + 1] != tokens[row, first:last + 1])[chosen].any()
        kinds['mask' if masked.all() else 'random' if changed else 'kept'] += 1
      for slot in np.flatnonzero(weights[row]):
        i = index[row, slot]
        first, last = next(span for span in spans if span[0] <= i <= span[1])
        expected = (max(first - 1, 0), min(last + 1, length - 1), selected[row, first:i].sum())
        assert tuple(bounds[row, slot]) == expected
    total = sum(kinds.values())
    results[name] = np.mean(sizes)
    assert abs(kinds['mask'] / total - 0.8) < 0.04 and abs(kinds['random'] / total - 0.1) < 0.03
  # Before spans bridged whitespace, the spaced rows' spans were about half as long.
  assert results['plain'] > 3.0
  assert abs(results['spaced'] - results['plain']) < 0.2, results
