"""Nested bootstrap, pairwise differences, ranks and the minimum detectable difference, checked
against direct computations."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest

from comparison import stats
from comparison.results import Score


def _score(arm, pseed, fseed, values, ids=None, task='sst2', strategy='full', step=100,
           metric='accuracy', edge=()):
  ids = tuple(ids if ids is not None else (f'e{i:03d}' for i in range(len(values))))
  return Score(arm=arm, pretrain_seed=pseed, step=step, fraction=1.0, tokens=1000 * step,
               flops=1e9 * step, budget=1000 * step, task=task, kind='finetune',
               strategy=strategy, finetune_seed=fseed, metric=metric,
               score=float(np.mean(values)), example_ids=ids,
               example_scores=tuple(float(v) for v in values), selected={}, grid_edge=edge)


def _synthetic(n=60, rates=(('clm', 0.6), ('mlm', 0.7)), pseeds=(0, 1), fseeds=(0, 1, 2)):
  scores = []
  for (arm, rate), p, f in itertools.product(rates, pseeds, fseeds):
    rng = np.random.default_rng([len(arm), p, f])
    scores.append(_score(arm, p, f, rng.binomial(1, rate + 0.05 * p, n)))
  return scores


def test_headline_interval_matches_a_direct_bootstrap():
  """The nested scheme written as plain loops (draw pretraining seeds, then each drawn seed's
  fine-tuning seeds, then examples) from the same draws gives the same intervals."""
  n, samples = 60, 300
  scores = _synthetic(n)
  (group,) = stats.analyse(scores, samples=samples, seed=7)
  rng = np.random.default_rng(7)
  examples = rng.integers(n, size=(samples, n))  # one id set: one shared draw (paired)
  table = {(s.arm, s.pretrain_seed, s.finetune_seed): np.asarray(s.example_scores)
           for s in scores}
  direct = {}
  for arm in ('clm', 'mlm'):
    pick_p = rng.integers(2, size=(samples, 2))
    pick_f = rng.random((samples, 2, 3))
    values = []
    for b in range(samples):
      per_seed = []
      for d in range(2):
        p = pick_p[b, d]
        fs = [int(math.floor(u * 3)) for u in pick_f[b, d]]
        per_seed.append(np.mean([table[(arm, p, f)][examples[b]].mean() for f in fs]))
      values.append(np.mean(per_seed))
    direct[arm] = np.asarray(values)
    expected_point = np.mean([np.mean([table[(arm, p, f)].mean() for f in range(3)])
                              for p in range(2)])
    estimate = group.estimates[arm]
    assert estimate.mean == pytest.approx(expected_point, rel=1e-12)
    low, high = np.percentile(direct[arm], [2.5, 97.5])
    assert (estimate.low, estimate.high) == pytest.approx((low, high), rel=1e-12)
    assert (estimate.examples, estimate.pretrain_seeds, estimate.finetune_seeds) == (n, 2, 3)
  (difference,) = group.differences
  assert (difference.a, difference.b, difference.paired) == ('clm', 'mlm', True)
  low, high = np.percentile(direct['mlm'] - direct['clm'], [2.5, 97.5])
  assert (difference.low, difference.high) == pytest.approx((low, high), rel=1e-12)


def test_one_seed_interval_is_the_binomial_one():
  """One pretraining and one fine-tuning seed: only examples vary, so the 95% interval of an
  accuracy is close to p +- 1.96 sqrt(p (1 - p) / n)."""
  n = 2000
  values = np.random.default_rng(0).binomial(1, 0.7, n)
  (group,) = stats.analyse([_score('clm', 0, 0, values)], samples=4000)
  p = values.mean()
  half = 1.96 * math.sqrt(p * (1 - p) / n)
  estimate = group.estimates['clm']
  assert estimate.mean == pytest.approx(p)
  assert estimate.low == pytest.approx(p - half, abs=0.003)
  assert estimate.high == pytest.approx(p + half, abs=0.003)
  assert 'with one pretraining seed they cover evaluation sampling' in stats.coverage([group])


def test_identical_arms_differ_by_exactly_zero_when_paired():
  scores = _synthetic(rates=(('clm', 0.6),))
  twin = [_score('mlm', s.pretrain_seed, s.finetune_seed, s.example_scores) for s in scores]
  (group,) = stats.analyse(scores + twin, samples=200)
  (difference,) = group.differences
  # The same example draw for both, but seeds are drawn per arm: the interval is seed noise.
  assert difference.paired and difference.difference == 0.0
  assert difference.low < 0.0 < difference.high
  one = [s for s in scores if s.pretrain_seed == 0 and s.finetune_seed == 0]
  (group,) = stats.analyse(one + [_score('mlm', 0, 0, one[0].example_scores)], samples=200)
  assert (group.differences[0].low, group.differences[0].high) == (0.0, 0.0)


def test_other_example_ids_are_unpaired():
  a = _score('clm', 0, 0, [1, 0, 1, 1])
  b = _score('mlm', 0, 0, [1, 1, 1, 0], ids=('x', 'y', 'z', 'w'))
  (group,) = stats.analyse([a, b], samples=200)
  assert not group.differences[0].paired
  assert group.differences[0].difference == pytest.approx(0.0)


def test_examples_are_aligned_by_id_not_by_position():
  """The same per-example results listed in another order are the same run."""
  values = np.random.default_rng(1).binomial(1, 0.5, 30)
  ids = [f'e{i:03d}' for i in range(30)]
  order = np.random.default_rng(2).permutation(30)
  a = _score('clm', 0, 0, values, ids)
  b = _score('mlm', 0, 0, values[order], [ids[i] for i in order])
  (group,) = stats.analyse([a, b], samples=100)
  assert group.differences[0].paired and (group.differences[0].low,
                                          group.differences[0].high) == (0.0, 0.0)


def test_controls_and_ranks():
  """The control is compared with its own arm only and is not ranked; rank 1 is the best;
  a loss ranks the other way; ties share their mean rank."""
  scores = _synthetic(rates=(('clm', 0.5), ('mlm', 0.8), ('plm', 0.65)), pseeds=(0,),
                      fseeds=(0,))
  scores.append(_score('no_pretraining:mlm', 0, 0, np.zeros(60)))
  (group,) = stats.analyse(scores, samples=100, arm_order=('mlm', 'plm', 'clm'))
  assert list(group.estimates) == ['mlm', 'plm', 'clm', 'no_pretraining:mlm']
  assert group.ranks == {'mlm': 1.0, 'plm': 2.0, 'clm': 3.0}
  pairs = [(d.a, d.b) for d in group.differences]
  assert pairs == [('mlm', 'plm'), ('mlm', 'clm'), ('plm', 'clm'), ('no_pretraining:mlm', 'mlm')]
  assert group.differences[-1].clear and group.differences[-1].difference > 0.7
  assert stats.ranks({'a': 1.0, 'b': 1.0, 'c': 0.5}) == {'a': 1.5, 'b': 1.5, 'c': 3.0}
  assert stats.ranks({'a': 1.0, 'b': 2.0}, higher=False) == {'a': 1.0, 'b': 2.0}
  assert not stats.higher_is_better('loss') and stats.higher_is_better('f1')
  other = stats.analyse(scores + [_score('clm', 0, 0, np.ones(60), task='topic'),
                                  _score('mlm', 0, 0, np.zeros(60), task='topic')], samples=50)
  assert stats.mean_ranks(other) == {'clm': (3.0 + 1.0) / 2, 'mlm': (1.0 + 2.0) / 2, 'plm': 2.0}


def test_minimum_detectable_difference_by_hand():
  """MDE = (z_0.975 + z_0.8) * sqrt(s_d^2 / n + 2 v_seed), v_seed the variance of the
  pretraining-seed means over their number, both averaged as the docstring says."""
  n = 50
  scores = _synthetic(n, rates=(('clm', 0.5), ('mlm', 0.6), ('plm', 0.7)), pseeds=(0, 1, 2),
                      fseeds=(0, 1))
  (group,) = stats.analyse(scores, samples=50)
  per = {(s.arm, s.pretrain_seed, s.finetune_seed): np.asarray(s.example_scores) for s in scores}
  arms = ('clm', 'mlm', 'plm')

  def example_mean(arm):
    return np.mean([per[(arm, p, f)] for p in range(3) for f in range(2)], axis=0)

  example_term = np.mean([np.var(example_mean(b) - example_mean(a), ddof=1) / n
                          for a, b in itertools.combinations(arms, 2)])
  seed_var = np.mean([np.var([np.mean([per[(arm, p, f)].mean() for f in range(2)])
                              for p in range(3)], ddof=1) / 3 for arm in arms])
  se = math.sqrt(example_term + 2 * seed_var)
  assert group.detectable.se == pytest.approx(se, rel=1e-12)
  assert group.detectable.mde == pytest.approx((1.959964 + 0.841621) * se, rel=1e-6)
  assert group.detectable.seeds_known
  # Four times the seeds shrinks only the seed term, four times the examples only the other.
  assert group.detectable.scaled(seeds=4) == pytest.approx(
      (1.959964 + 0.841621) * math.sqrt(example_term + 2 * seed_var / 4), rel=1e-6)
  assert group.detectable.scaled(examples=4) == pytest.approx(
      (1.959964 + 0.841621) * math.sqrt(example_term / 4 + 2 * seed_var), rel=1e-6)


def test_minimum_detectable_difference_with_one_pretraining_seed():
  """One pretraining seed: the seed term is the fine-tuning seeds' variance over their number."""
  scores = _synthetic(40, pseeds=(0,), fseeds=(0, 1, 2, 3))
  (group,) = stats.analyse(scores, samples=50)
  per = {(s.arm, s.finetune_seed): np.asarray(s.example_scores) for s in scores}
  d = (np.mean([per[('mlm', f)] for f in range(4)], axis=0)
       - np.mean([per[('clm', f)] for f in range(4)], axis=0))
  seed = np.mean([np.var([per[(arm, f)].mean() for f in range(4)], ddof=1) / 4
                  for arm in ('clm', 'mlm')])
  assert group.detectable.example_term == pytest.approx(np.var(d, ddof=1) / 40)
  assert group.detectable.seed_term == pytest.approx(2 * seed)


def test_final_scores_keep_the_last_checkpoint_of_the_largest_budget():
  early = dataclasses.replace(_score('clm', 0, 0, [1, 0], step=50), fraction=0.5)
  last = _score('clm', 0, 0, [1, 1], step=100)
  other_budget = dataclasses.replace(last, budget=1, step=400)
  assert stats.final_scores([early, last]) == [last]
  assert stats.final_scores([early, last, other_budget]) == [last]
  # A token budget ends each seed at its own step: both seeds' last checkpoints count.
  seed_1 = dataclasses.replace(_score('clm', 1, 0, [0, 1], step=96), budget=last.budget)
  assert stats.final_scores([early, last, seed_1]) == [last, seed_1]
  (group,) = stats.analyse([early, last, seed_1], samples=20)
  assert group.estimates['clm'].pretrain_seeds == 2
  assert [(p.fraction, p.steps) for p in group.checkpoints['clm']] == [(0.5, (50,)),
                                                                      (1.0, (96, 100))]


def test_bad_input_is_one_line():
  with pytest.raises(ValueError, match='2 example ids but 1 example scores'):
    stats.analyse([dataclasses.replace(_score('clm', 0, 0, [1, 0]), example_scores=(1.0,))])
  with pytest.raises(ValueError, match='scored twice'):
    stats.analyse([_score('clm', 0, 0, [1, 0]), _score('clm', 0, 0, [1, 1])])


def test_scores_without_examples_vary_over_seeds_only():
  """Older results files hold one score a fine-tuning seed: the interval and the MDE come
  from the seeds alone, and the coverage sentence says so."""
  values = {'clm': (0.70, 0.72, 0.69), 'mlm': (0.75, 0.74, 0.78)}
  scores = [dataclasses.replace(_score(arm, 0, f, [v]), example_ids=(), example_scores=())
            for arm, vs in values.items() for f, v in enumerate(vs)]
  (group,) = stats.analyse(scores, samples=300)
  assert group.estimates['clm'].mean == pytest.approx(np.mean(values['clm']))
  assert min(values['clm']) <= group.estimates['clm'].low <= group.estimates['clm'].high <= max(
      values['clm'])
  assert group.estimates['clm'].examples == 0 and group.detectable.example_term == 0.0
  seed = np.mean([np.var(v, ddof=1) / 3 for v in values.values()])
  assert group.detectable.seed_term == pytest.approx(2 * seed)
  assert '(clm, mlm) vary over seeds only' in stats.coverage([group])


def test_mde_of_arms_that_agree_on_every_example_uses_their_own_spread():
  """Identical paired predictions give s_d^2 = 0; the MDE then falls back to the unpaired
  form s_A^2/n + s_B^2/n instead of claiming that any difference would be seen."""
  values = np.array([1.0] * 7 + [0.0] * 3)
  scores = [_score(arm, 0, 0, values) for arm in ('clm', 'mlm')]
  (group,) = stats.analyse(scores, samples=50)
  term = 2 * np.var(values, ddof=1) / len(values)
  assert group.detectable.example_term == pytest.approx(term, rel=1e-12)
  assert group.detectable.mde == pytest.approx((1.959964 + 0.841621) * math.sqrt(term), rel=1e-6)
