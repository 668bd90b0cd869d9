"""Span corruption: T5's noise density and mean span length, every token exactly once,
sentinels in order, the loss only on the targets, and a short train.py run."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import span_corruption as span_config
from data.vocab import toy_vocab
from models import masks
from objectives import base, span_corruption
from tests.helpers import assert_train_loss_falls, run_records, trained_run

VOCAB = toy_vocab(64)


def build(seq_len, **settings):
  return span_corruption.make(settings, vocab=VOCAB, seq_len=seq_len)


def prepare(objective, rng, batch):
  return jax.jit(lambda r, b: objective.prepare(r, b, base.base_inputs(b)))(rng, batch)


def batch_of(rows, seq_len, real, seed=0):
  """rows windows of random ordinary tokens, the first real[r] of row r real, then padding."""
  tokens = np.random.default_rng(seed).integers(7, VOCAB.size, (rows, seq_len)).astype(np.int32)
  segments = (np.arange(seq_len)[None, :] < np.asarray(real)[:, None]).astype(np.int32)
  tokens = np.where(segments > 0, tokens, 0)
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments),
          'positions': jnp.broadcast_to(jnp.arange(seq_len), tokens.shape)}


def runs(mask):
  edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
  return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def reconstruct(inputs, targets, sentinel_base):
  """The original tokens from the corrupted input and the targets, by replacing sentinel k of
  the input with what follows sentinel k in the targets."""
  spans, current = {}, None
  for token in targets:
    if token >= sentinel_base:
      current = token - sentinel_base
      spans[current] = []
    else:
      spans[current].append(token)
  out = []
  for token in inputs:
    out.extend(spans.pop(token - sentinel_base) if token >= sentinel_base else [token])
  assert not spans  # every span used exactly once
  return out


@pytest.mark.parametrize('density,mean', [(0.15, 3.0), (0.5, 8.0)])
def test_density_and_mean_span_length_over_many_draws(density, mean):
  objective = build(512, noise_density=density, mean_span_length=mean)
  real = [objective.raw_len] * 24 + [300] * 8
  batch = batch_of(32, 512, real)
  corrupt = jax.jit(lambda rng: objective.corrupt_batch(rng, batch['tokens'],
                                                        batch['segment_ids'])[-1])
  noise_tokens, spans, total, lengths = 0, 0, 0, []
  for seed in range(6):
    masks_ = np.asarray(corrupt(jax.random.key(seed)))
    for row, n in enumerate(real):
      assert not masks_[row, n:].any() and not masks_[row, 0]  # T5 starts with non-noise
      row_runs = runs(masks_[row])
      noise_tokens, spans, total = noise_tokens + row_runs.sum(), spans + len(row_runs), total + n
      lengths.extend(row_runs)
  assert abs(noise_tokens / total - density) < 0.01
  assert abs(noise_tokens / spans - mean) < 0.05 * mean
  assert np.std(lengths) > 0.5 * mean ** 0.5  # lengths vary (random segmentation), not fixed


@pytest.mark.parametrize('settings', [{}, {'noise_density': 0.5, 'mean_span_length': 2.0},
                                      {'noise_density': 0.25, 'sequential': True}])
def test_every_token_exactly_once_sentinels_in_order_loss_only_on_targets(settings):
  seq_len = 64
  objective = build(seq_len, **settings)
  real = [objective.raw_len, objective.raw_len, 40, 9, 2]
  batch = batch_of(len(real), seq_len, real, seed=1)
  inputs, targets = prepare(objective, jax.random.key(3), batch)
  sentinel = VOCAB.size
  tokens, order = np.asarray(inputs.tokens), np.asarray(inputs.attn_order)
  segments, index = np.asarray(inputs.segment_ids), np.asarray(inputs.predict_index)
  weights, target_ids = np.asarray(targets['weights']), np.asarray(targets['targets'])
  for row, n in enumerate(real):
    original = list(np.asarray(batch['tokens'])[row, :n])
    used = int(segments[row].sum())
    prefix_len = int(((order[row] == 0) & (segments[row] > 0)).sum())
    corrupted, target = list(tokens[row, :prefix_len]), list(tokens[row, prefix_len:used])
    spans_end = len(target) - 1 if target else 0
    eos = [VOCAB.eos_id] if n >= 2 else []  # T5: EOS ends the input and the target
    assert target[spans_end:] == eos and corrupted[len(corrupted) - len(eos):] == eos
    corrupted = corrupted[:len(corrupted) - len(eos)]
    assert reconstruct(corrupted, target[:spans_end], sentinel) == original
    in_input = [t - sentinel for t in corrupted if t >= sentinel]
    in_target = [t - sentinel for t in target if t >= sentinel]
    assert in_input == in_target == list(range(len(in_input)))
    assert (len(in_input) >= 1) == (n >= 2)
    assert used == n + 2 * len(in_input) + 2 * (n >= 2) <= seq_len
    if settings.get('sequential') and n >= 2:
      assert len(in_input) == 1 and corrupted[-1] == sentinel  # one span, at the end
    # The prefix is bidirectional, the target causal and the only place with a loss.
    np.testing.assert_array_equal(order[row, prefix_len:used], np.arange(1, len(target) + 1))
    assert weights[row].sum() == len(target)
    for slot in np.flatnonzero(weights[row]):
      position = index[row, slot]
      assert order[row, position + 1] > 0 and target_ids[row, slot] == tokens[row, position + 1]
  mask = np.asarray(masks.attention_mask(inputs.segment_ids, inputs.segment_ids,
                                         inputs.attn_order, inputs.attn_order))[0, 0]
  used, prefix_len = int(segments[0].sum()), int(((order[0] == 0) & (segments[0] > 0)).sum())
  assert mask[:prefix_len, :prefix_len].all() and not mask[:prefix_len, prefix_len:].any()
  np.testing.assert_array_equal(mask[prefix_len:used, prefix_len:used],
                                np.tril(np.ones((used - prefix_len,) * 2, bool)))
  assert mask[prefix_len:used, :prefix_len].all() and not mask[used:].any()


def test_loss_equals_hand_computation_over_the_targets():
  objective = build(32)
  batch = batch_of(2, 32, [32, 20], seed=2)
  inputs, targets = prepare(objective, jax.random.key(0), batch)
  logits = np.random.default_rng(1).normal(
      size=(2, objective.max_target_len, VOCAB.size + objective.num_sentinels)).astype(np.float32)
  loss, _ = objective.loss(base.ModelOutputs(hidden=None, logits=jnp.asarray(logits)), targets)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  weights, ids = np.asarray(targets['weights']), np.asarray(targets['targets'])
  picked = [-logp[r, s, ids[r, s]] for r in range(2) for s in range(ids.shape[1]) if weights[r, s]]
  np.testing.assert_allclose(float(loss), np.mean(picked), rtol=1e-5)
  assert objective.model_overrides() == {'vocab_size': VOCAB.size + objective.num_sentinels}


@pytest.mark.parametrize('settings,message', [
    ({'noise_density': 1.5}, 'noise_density'), ({'mean_span_length': 0.5}, 'mean_span_length'),
    ({'noise_density': 0.8}, 'noise_density=0.8 is above 0.5'),
    ({'spans': 3}, 'Unknown setting config.span_corruption.spans')])
def test_bad_settings_fail_in_one_line(settings, message):
  with pytest.raises(ValueError, match=message) as error:
    build(64, **settings)
  assert '\n' not in str(error.value)


def test_ul2_presets_set_the_denoisers():
  ul2_s = span_config.get_config('ul2_s')  # UL2's S: a prefix LM with a uniform split
  assert ul2_s.objective == 'prefix_lm' and 'span_corruption' not in ul2_s
  assert span_config.get_config('ul2_x:small').span_corruption.noise_density == 0.5
  assert span_config.get_config('tiny').span_corruption.mean_span_length == 3.0


def t5_counts(n, density, mean):
  """T5's random_spans_noise_mask counts, written out: float32 products and quotients,
  rounded half to even, noise in [1, n - 1], at least one span."""
  n = np.asarray(n)
  noise = np.clip(np.round(n.astype(np.float32) * np.float32(density)).astype(int), 1, n - 1)
  spans = np.maximum(np.round(noise.astype(np.float32) / np.float32(mean)).astype(int), 1)
  return noise, spans


# Every span corruption preset, and UL2's other X denoisers.
SETTINGS = [dict(span_config.DENOISERS[name]) for name in ('t5', 'ul2_r', 'ul2_x')] + [
    dict(mean_span_length=mean, noise_density=density, sequential=False)
    for mean, density in ((3.0, 0.5), (64.0, 0.15), (64.0, 0.5))]


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: f'{s["mean_span_length"]}/'
                         f'{s["noise_density"]}')
def test_every_length_up_to_2048_fits_with_t5s_counts(settings):
  """For every seq_len, the planned raw length is the longest whose rows (n non-noise and
  noise tokens, a sentinel per span in input and target, two EOS) fit for every n, counted
  in float32 as T5 (and the device) count; every target and sentinel has a slot."""
  density, mean = settings['noise_density'], settings['mean_span_length']
  n = np.arange(2, 2050)
  noise, spans = t5_counts(n, density, mean)
  got_noise, got_spans = span_corruption.span_counts(n, density, mean, False)
  np.testing.assert_array_equal(got_noise, noise)
  np.testing.assert_array_equal(got_spans, spans)
  device_noise, device_spans = span_corruption.count_table(2049, density, mean, False)
  np.testing.assert_array_equal(device_noise[2:], noise)
  np.testing.assert_array_equal(device_spans[2:], spans)
  worst_row = np.maximum.accumulate(n + 2 * spans + 2)  # index i: n = 2..i + 2
  worst_target = np.maximum.accumulate(noise + spans + 1)
  worst_spans = np.maximum.accumulate(spans)
  for seq_len in range(6, 2049):
    objective = build(seq_len, **settings)
    last = objective.raw_len - 2
    assert worst_row[last] <= seq_len < worst_row[last + 1], seq_len
    assert objective.num_sentinels == worst_spans[last], seq_len
    assert objective.max_target_len == worst_target[last], seq_len


def test_too_short_a_sequence_is_a_one_line_error():
  with pytest.raises(ValueError, match='config.seq_len=5 is too short') as error:
    build(5)
  assert '\n' not in str(error.value)


@pytest.mark.parametrize('settings', [dict(noise_density=0.5, mean_span_length=1.0),
                                      dict(noise_density=0.5, mean_span_length=3.0),
                                      dict(noise_density=0.15, mean_span_length=3.0)])
def test_masks_have_exactly_the_counted_noise_tokens_and_spans(settings):
  """Every n: the drawn mask has span_counts' noise tokens in span_counts' spans (spans never
  exceed the non-noise runs that separate them, so none merge)."""
  size = 80
  n = np.arange(2, size + 1)
  draw = jax.jit(jax.vmap(lambda key, count: span_corruption.noise_mask(
      key, count, size, sequential=False, **settings)))
  noise, spans = span_corruption.span_counts(n, sequential=False, **settings)
  for seed in range(2):
    masks_ = np.asarray(draw(jax.random.split(jax.random.key(seed), len(n)), jnp.asarray(n)))
    np.testing.assert_array_equal(masks_.sum(axis=1), noise)
    np.testing.assert_array_equal([len(runs(row)) for row in masks_], spans)


@pytest.mark.parametrize('name,seq_len', [('t5', 210), ('ul2_r', 364), ('ul2_r', 199)])
def test_lengths_whose_float64_counts_were_short_keep_every_target(name, seq_len):
  """Lengths where planning in float64 gave one span and sentinel too few (the 10th sentinel's
  id was the enlarged vocabulary's size: a NaN embedding) or one target slot too few."""
  settings = span_config.DENOISERS[name]
  objective = build(seq_len, **settings)
  raw = objective.raw_len
  real = [seq_len, raw, raw - 1, raw - 7]  # the first row: a full window
  batch = batch_of(len(real), seq_len, real, seed=4)
  inputs, targets = prepare(objective, jax.random.key(5), batch)
  tokens, segments = np.asarray(inputs.tokens), np.asarray(inputs.segment_ids)
  order, weights = np.asarray(inputs.attn_order), np.asarray(targets['weights'])
  assert tokens.max() < VOCAB.size + objective.num_sentinels
  for row, n in enumerate(min(r, raw) for r in real):
    used = int(segments[row].sum())
    prefix_len = int(((order[row] == 0) & (segments[row] > 0)).sum())
    corrupted, target = list(tokens[row, :prefix_len]), list(tokens[row, prefix_len:used])
    assert weights[row].sum() == len(target) and target[-1] == corrupted[-1] == VOCAB.eos_id
    original = list(np.asarray(batch['tokens'])[row, :n])
    assert reconstruct(corrupted[:-1], target[:-1], VOCAB.size) == original


@pytest.mark.slow
def test_trains_through_train_py_with_a_falling_loss(runs_root, shared_cache):
  workdir = trained_run(runs_root, 'span_corruption:t5', shared_cache)
  assert_train_loss_falls(workdir, margin=0.5)


@pytest.mark.slow
def test_new_objectives_appear_in_the_comparison_report(runs_root, shared_cache, tmp_path):
  """The four new objectives' runs (made by their own tests when run in the same session)
  are rows of the report tools/report.py builds, with their last eval loss."""
  from comparison import tables  # pylint: disable=import-outside-toplevel
  from tools import report  # pylint: disable=import-outside-toplevel

  specs = {'prefix_lm': 'prefix_lm:tiny', 'span_corruption': 'span_corruption:t5',
           'deshuffle': 'deshuffle:tiny', 'electra': 'electra:tiny'}
  workdirs = {name: trained_run(runs_root, spec, shared_cache) for name, spec in specs.items()}
  written = report.write_report(runs_root, str(tmp_path / 'report'))
  rows = {row['arm']: row for row in tables.read_csv(str(tmp_path / 'report' / 'results.csv'))}
  text = open(written['report'], encoding='utf-8').read()
  for name, workdir in workdirs.items():
    assert f'| {name} |' in text
    last_eval = run_records(workdir)[0][-1]
    assert rows[name]['loss'] == pytest.approx(last_eval['loss'], rel=1e-4)
    with open(os.path.join(workdir, 'run.json'), encoding='utf-8') as f:
      flops_per_step = json.load(f)['flops_per_step']
    assert rows[name]['flops'] == pytest.approx(16 * flops_per_step, rel=1e-6)
