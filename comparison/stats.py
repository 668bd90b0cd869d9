"""Statistics across arms: nested bootstrap intervals, pairwise differences, mean ranks and the
minimum detectable difference, from per-example downstream scores.

Bootstrap scheme (one replicate). For every arm, its pretraining seeds are drawn with
replacement; for each drawn pretraining seed, its fine-tuning seeds are drawn with replacement;
then the test examples are drawn with replacement. The arm's replicate is the mean over its
drawn pretraining seeds of the mean over their drawn fine-tuning seeds of the mean example
score over the drawn examples; the point estimate is the same nested mean without drawing.
One example draw is shared by every run (any arm, any seed) that scored the same set of
example ids, so differences between such arms are paired; runs with another id set get their
own draw (unpaired). Seeds are drawn independently per arm. Intervals are 95% percentile
intervals over the replicates. With one pretraining seed an interval covers evaluation
sampling and fine-tuning seeds only.

Random draws, in this order from `numpy.random.default_rng(seed)`:
  1. per distinct id set (in order of first appearance: arms in order, runs by (pretraining
     seed, fine-tuning seed)): `rng.integers(n, size=(samples, n))`, the example indices into
     the sorted ids;
  2. per arm checkpoint (arms in order, then by budget and step): `rng.integers(P,
     size=(samples, P))`, the drawn pretraining seeds (sorted seeds' indices), then
     `rng.random((samples, P, F))` with F the largest number of fine-tuning seeds of a
     pretraining seed: draw j of drawn seed p is its fine-tuning seed floor(u * F_p) (only
     j < F_p are used).

Minimum detectable difference (two-sided alpha = 0.05, power 0.8):
  MDE = (z_{0.975} + z_{0.8}) * SE_diff = 2.80 * SE_diff,
  SE_diff^2 = s_d^2 / n + 2 * v_seed,
where s_d^2 is the sample variance (ddof=1) over the n test examples of the per-example
difference between two arms (each example's score averaged over the arm's runs), averaged
over the pairs of arms of the task (unpaired arms: s_A^2 / n_A + s_B^2 / n_B in place of
s_d^2 / n; also for paired arms that agree on every example, whose s_d^2 = 0 would claim any
difference detectable), and v_seed is the variance of one arm's mean from its seeds, averaged over arms:
the sample variance of its pretraining seeds' means divided by their number P when P > 1,
else the sample variance of its fine-tuning seeds' scores divided by their number F (0 with
one run: the seed term is then unknown, not zero, and the report says so).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

SAMPLES = 1000
SEED = 0
ALPHA = 0.05
POWER = 0.8
Z_ALPHA = statistics.NormalDist().inv_cdf(1 - ALPHA / 2)  # 1.95996
Z_POWER = statistics.NormalDist().inv_cdf(POWER)  # 0.84162
CONTROL = 'no_pretraining'
LOWER_IS_BETTER = ('loss', 'perplexity', 'bits_per_byte', 'error', 'rmse', 'mse', 'mae')


def is_control(arm: str) -> bool:
  """'no_pretraining:<arm>' is the random-initialisation control of <arm>'s architecture."""
  return arm == CONTROL or arm.startswith(CONTROL + ':')


def higher_is_better(metric: str) -> bool:
  return not any(word in metric for word in LOWER_IS_BETTER)


def group_key(score: Any) -> tuple[str, str, str]:
  """The unit arms are compared in: (task, kind, strategy)."""
  return (score.task, score.kind, score.strategy)


def final_scores(scores: Iterable[Any]) -> list[Any]:
  """Each arm's scores at its largest budget's last checkpoint (controls as they are). The
  last checkpoint is the largest budget fraction, not step: a token budget ends each seed at
  its own step (pairs pad differently), and every seed's last checkpoint counts."""
  scores = list(scores)
  budget: dict[str, int] = {}
  for s in scores:
    budget[s.arm] = max(budget.get(s.arm, s.budget), s.budget)
  last: dict[str, float] = {}
  for s in scores:
    if s.budget == budget[s.arm]:
      last[s.arm] = max(last.get(s.arm, s.fraction), s.fraction)
  return [s for s in scores if s.budget == budget[s.arm] and s.fraction == last[s.arm]]


@dataclasses.dataclass
class Run:
  """One (pretraining seed, fine-tuning seed) of an arm: its per-example scores by id."""
  pretrain_seed: int
  finetune_seed: int
  ids: tuple[str, ...]  # sorted
  values: np.ndarray  # in the order of `ids`
  examples: bool = True  # False: `values` is the run's score alone (no per-example numbers)


def runs_of(scores: Sequence[Any]) -> list[Run]:
  """Runs of one arm in one group, sorted by seeds. A score without per-example numbers is
  one 'example' of its own (its seeds still vary)."""
  runs = []
  for s in sorted(scores, key=lambda s: (s.pretrain_seed, s.finetune_seed)):
    if len(s.example_ids) != len(s.example_scores):
      raise ValueError(f'{s.arm} {s.task}: {len(s.example_ids)} example ids but '
                       f'{len(s.example_scores)} example scores; rewrite its results file.')
    if s.example_ids:
      order = np.argsort(np.asarray(s.example_ids, dtype=object), kind='stable')
      ids = tuple(s.example_ids[i] for i in order)
      values = np.asarray(s.example_scores, dtype=np.float64)[order]
    else:
      ids = (f'{s.arm}/{s.pretrain_seed}/{s.finetune_seed}',)
      values = np.asarray([s.score], dtype=np.float64)
    runs.append(Run(s.pretrain_seed, s.finetune_seed, ids, values, bool(s.example_ids)))
  keys = [(r.pretrain_seed, r.finetune_seed) for r in runs]
  if len(set(keys)) != len(keys):
    raise ValueError(f'{scores[0].arm} {group_key(scores[0])}: a (pretraining seed, '
                     'fine-tuning seed) is scored twice; keep one results file per run.')
  return runs


def point(runs: Sequence[Run]) -> float:
  """Mean over pretraining seeds of the mean over fine-tuning seeds of the example mean."""
  by_seed: dict[int, list[float]] = {}
  for run in runs:
    by_seed.setdefault(run.pretrain_seed, []).append(float(run.values.mean()))
  return float(np.mean([np.mean(v) for v in by_seed.values()]))


def replicates(arms: Mapping[Any, Sequence[Run]], samples: int = SAMPLES,
               seed: int = SEED) -> dict[Any, np.ndarray]:
  """Bootstrap replicates (samples,) of every arm's nested mean (module docstring); the keys
  may be arms or (arm, budget, step) checkpoints, drawn in the mapping's order."""
  rng = np.random.default_rng(seed)
  draws: dict[tuple[str, ...], np.ndarray] = {}
  for runs in arms.values():
    for run in runs:
      if run.ids not in draws:
        n = len(run.ids)
        draws[run.ids] = rng.integers(n, size=(samples, n))
  # Each run's mean over the drawn examples, per replicate: one product per id set of how often
  # each example was drawn (B, n) with the runs' scores (n, runs).
  flat_runs = [(arm, i, run) for arm, runs in arms.items() for i, run in enumerate(runs)]
  run_means: dict[tuple[str, int], np.ndarray] = {}
  for ids, draw in draws.items():
    n = len(ids)
    flat = (draw + n * np.arange(samples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=samples * n).reshape(samples, n).astype(np.float64)
    mine = [(arm, i, run) for arm, i, run in flat_runs if run.ids is ids or run.ids == ids]
    product = counts @ np.stack([run.values for _, _, run in mine], axis=1) / n  # (B, runs)
    for column, (arm, i, _) in enumerate(mine):
      run_means[(arm, i)] = product[:, column]
  out = {}
  for arm, runs in arms.items():
    means = np.stack([run_means[(arm, i)] for i in range(len(runs))])  # (runs, B)
    seeds = sorted({run.pretrain_seed for run in runs})
    table = [[i for i, run in enumerate(runs) if run.pretrain_seed == p] for p in seeds]
    count = np.asarray([len(t) for t in table])
    width = int(count.max())
    index = np.asarray([t + [0] * (width - len(t)) for t in table])  # (P, F) run indices
    chosen = rng.integers(len(seeds), size=(samples, len(seeds)))  # (B, P)
    u = rng.random((samples, len(seeds), width))
    f = count[chosen]  # (B, P)
    j = np.floor(u * f[:, :, None]).astype(np.int64)  # (B, P, F)
    valid = np.arange(width)[None, None, :] < f[:, :, None]
    picked = index[chosen[:, :, None], np.minimum(j, width - 1)]  # run index (B, P, F)
    values = means[picked, np.arange(samples)[:, None, None]]
    per_seed = np.where(valid, values, 0.0).sum(axis=2) / f
    out[arm] = per_seed.mean(axis=1)
  return out


def interval(values: np.ndarray) -> tuple[float, float]:
  low, high = np.percentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Estimate:
  mean: float
  low: float
  high: float
  examples: int
  pretrain_seeds: int
  finetune_seeds: int  # per pretraining seed, the fewest


@dataclasses.dataclass(frozen=True)
class Difference:
  """b - a with its interval; `clear` when the interval excludes 0."""
  a: str
  b: str
  difference: float
  low: float
  high: float
  paired: bool

  @property
  def clear(self) -> bool:
    return self.low > 0.0 or self.high < 0.0


@dataclasses.dataclass(frozen=True)
class Detectable:
  """The smallest difference between two arms the study had 80% power to detect."""
  mde: float
  se: float
  example_term: float  # s_d^2 / n (or its unpaired form)
  seed_term: float  # 2 * v_seed
  seeds_known: bool  # False when every arm has a single run (seed variance not measured)

  def scaled(self, seeds: float = 1.0, examples: float = 1.0) -> float:
    """The MDE of the same study with `seeds` times the pretraining seeds and `examples` times
    the test examples: each variance term shrinks with its own count."""
    return (Z_ALPHA + Z_POWER) * math.sqrt(self.example_term / examples
                                           + self.seed_term / seeds)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One checkpoint of an arm in a group (a budget fraction of every seed's run): its cost
  and score with the 95% interval."""
  fraction: float
  steps: tuple[int, ...]  # each seed's step at this fraction, distinct and sorted
  budget: int
  tokens: float
  flops: float
  mean: float
  low: float
  high: float
  replicates: np.ndarray

  @property
  def step(self) -> int:
    """The largest of the seeds' steps."""
    return self.steps[-1]


@dataclasses.dataclass
class GroupStats:
  task: str
  kind: str
  strategy: str
  metric: str
  estimates: dict[str, Estimate]
  differences: list[Difference]
  ranks: dict[str, float]
  detectable: Detectable | None
  checkpoints: dict[str, list[Checkpoint]]  # arm -> every checkpoint, in increasing FLOPs


def _paired(a: Sequence[Run], b: Sequence[Run]) -> bool:
  return len({run.ids for run in list(a) + list(b)}) == 1


def pairwise(arms: Mapping[str, Sequence[Run]],
             reps: Mapping[str, np.ndarray]) -> list[Difference]:
  """b - a for every pair of arms in order, and every arm against its own control."""
  names = list(arms)
  pairs = [(a, b) for a, b in itertools.combinations(names, 2)
           if not is_control(a) and not is_control(b)]
  pairs += [(f'{CONTROL}:{b}', b) for b in names if f'{CONTROL}:{b}' in arms]
  out = []
  for a, b in pairs:
    low, high = interval(reps[b] - reps[a])
    out.append(Difference(a, b, point(arms[b]) - point(arms[a]), low, high,
                          _paired(arms[a], arms[b])))
  return out


def ranks(values: Mapping[str, float], higher: bool = True) -> dict[str, float]:
  """Rank 1 is best; ties share their mean rank (NaN ranks last)."""
  names = list(values)
  keys = [(-values[n] if higher else values[n]) for n in names]
  keys = [np.inf if np.isnan(k) else k for k in keys]
  out = {}
  for name, key in zip(names, keys):
    below = sum(k < key for k in keys)
    tied = sum(k == key for k in keys)
    out[name] = below + (tied + 1) / 2
  return out


def seed_variance(runs: Sequence[Run]) -> float:
  """Variance of an arm's mean from its seeds (module docstring); 0 with one run."""
  by_seed: dict[int, list[float]] = {}
  for run in runs:
    by_seed.setdefault(run.pretrain_seed, []).append(float(run.values.mean()))
  if len(by_seed) > 1:
    means = [np.mean(v) for v in by_seed.values()]
    return float(np.var(means, ddof=1) / len(means))
  (scores,) = by_seed.values()
  return float(np.var(scores, ddof=1) / len(scores)) if len(scores) > 1 else 0.0


def _example_mean(runs: Sequence[Run]) -> np.ndarray:
  """Each example's score averaged over the arm's runs (runs share one id set)."""
  return np.mean([run.values for run in runs], axis=0)


def detectable(arms: Mapping[str, Sequence[Run]]) -> Detectable | None:
  """MDE over the pretrained arms of a group (module docstring); None with fewer than two."""
  names = [a for a in arms if not is_control(a)]
  if len(names) < 2:
    return None
  terms = []
  for a, b in itertools.combinations(names, 2):
    paired_term = None
    if _paired(arms[a], arms[b]):
      d = _example_mean(arms[b]) - _example_mean(arms[a])
      paired_term = float(np.var(d, ddof=1) / len(d)) if len(d) > 1 else 0.0
    if paired_term:
      terms.append(paired_term)
      continue
    # Unpaired, or paired arms that agree on every example: an observed paired variance of 0
    # says nothing about how large a difference would show, so the arms' own spread stands in.
    term = 0.0
    for runs in (arms[a], arms[b]):
      if not all(run.examples for run in runs):
        continue  # scores without examples: their spread is the seed term's
      values = np.concatenate([run.values for run in runs])
      term += float(np.var(values, ddof=1) / len(values)) if len(values) > 1 else 0.0
    terms.append(term)
  example_term = float(np.mean(terms))
  seed_term = 2 * float(np.mean([seed_variance(arms[a]) for a in names]))
  se = float(np.sqrt(example_term + seed_term))
  return Detectable(mde=(Z_ALPHA + Z_POWER) * se, se=se, example_term=example_term,
                    seed_term=seed_term, seeds_known=any(len(arms[a]) > 1 for a in names))


def order_arms(arms: Iterable[str], arm_order: Sequence[str] = ()) -> list[str]:
  """Pretrained arms in `arm_order` (others after, by name), then their controls likewise."""
  order = {name: i for i, name in enumerate(arm_order)}

  def key(arm: str) -> tuple:
    base = arm.split(':', 1)[1] if is_control(arm) and ':' in arm else arm
    return (is_control(arm), order.get(base, len(order)), base)

  return sorted(arms, key=key)


def analyse(scores: Iterable[Any], samples: int = SAMPLES, seed: int = SEED,
            arm_order: Sequence[str] = ()) -> list[GroupStats]:
  """Per (task, kind, strategy): every checkpoint's estimate, and at each arm's last
  checkpoint of its largest budget the estimates, differences, ranks and MDE. One set of
  replicates serves every checkpoint, so a checkpoint's interval is the same wherever shown."""
  groups: dict[tuple[str, str, str], list[Any]] = {}
  for s in scores:
    groups.setdefault(group_key(s), []).append(s)
  out = []
  for (task, kind, strategy), mine in sorted(groups.items()):
    metrics = {s.metric for s in mine}
    if len(metrics) != 1:
      raise ValueError(f'{task} ({strategy}): scores in several metrics {sorted(metrics)}; '
                       'one main metric per task.')
    (metric,) = metrics
    # A cell is one checkpoint of an arm: a budget and a fraction of it, over seeds whose
    # token budgets end at different steps.
    final = {(s.arm, s.budget, s.fraction) for s in final_scores(mine)}
    by_cell: dict[tuple[str, int, float], list[Any]] = {}
    for s in mine:
      by_cell.setdefault((s.arm, s.budget, s.fraction), []).append(s)
    order = order_arms({cell[0] for cell in by_cell}, arm_order)
    cells = sorted(by_cell, key=lambda cell: (order.index(cell[0]), cell[1], cell[2]))
    runs = {cell: runs_of(by_cell[cell]) for cell in cells}
    reps = replicates(runs, samples, seed)
    checkpoints: dict[str, list[Checkpoint]] = {}
    for cell in cells:
      low, high = interval(reps[cell])
      ss = by_cell[cell]
      checkpoints.setdefault(cell[0], []).append(Checkpoint(
          cell[2], tuple(sorted({s.step for s in ss})), cell[1],
          float(np.mean([s.tokens for s in ss])), float(np.mean([s.flops for s in ss])),
          point(runs[cell]), low, high, reps[cell]))
    last = {cell[0]: cell for cell in cells if cell in final}
    arms = {arm: runs[last[arm]] for arm in order}
    estimates = {}
    for arm, arm_runs in arms.items():
      low, high = interval(reps[last[arm]])
      by_seed: dict[int, int] = {}
      for run in arm_runs:
        by_seed[run.pretrain_seed] = by_seed.get(run.pretrain_seed, 0) + 1
      estimates[arm] = Estimate(point(arm_runs), low, high,
                                max(len(r.ids) if r.examples else 0 for r in arm_runs),
                                len(by_seed), min(by_seed.values()))
    pretrained = {a: e.mean for a, e in estimates.items() if not is_control(a)}
    final_reps = {arm: reps[last[arm]] for arm in order}
    out.append(GroupStats(
        task, kind, strategy, metric, estimates, pairwise(arms, final_reps),
        ranks(pretrained, higher_is_better(metric)), detectable(arms),
        {arm: sorted(points, key=lambda p: (p.flops, p.step))
         for arm, points in checkpoints.items()}))
  return out


def mean_ranks(groups: Sequence[GroupStats]) -> dict[str, float]:
  """Each pretrained arm's rank averaged over the groups it was scored in."""
  collected: dict[str, list[float]] = {}
  for group in groups:
    for arm, rank in group.ranks.items():
      collected.setdefault(arm, []).append(rank)
  return {arm: float(np.mean(values)) for arm, values in collected.items()}


def coverage(groups: Sequence[GroupStats]) -> str:
  """What the intervals cover, in words, from the seeds actually present."""
  estimates = [e for g in groups for e in g.estimates.values()]
  if not estimates:
    return ''
  pre = min(e.pretrain_seeds for e in estimates)
  fine = min(e.finetune_seeds for e in estimates)
  bare = sorted({arm for g in groups for arm, e in g.estimates.items() if not e.examples})
  note = (' Scores without per-example numbers (' + ', '.join(bare) + ') vary over seeds only.'
          if bare else '')
  parts = ['test examples']
  if fine > 1:
    parts.append('fine-tuning seeds')
  if pre > 1:
    parts.append('pretraining seeds')
    return ('Intervals are 95% nested bootstrap intervals over ' + ', '.join(parts) + ' '
            f'(at least {pre} pretraining seeds an arm).' + note)
  return ('Intervals are 95% nested bootstrap intervals over ' + ' and '.join(parts) + ' only: '
          'with one pretraining seed they cover evaluation sampling'
          + (' and fine-tuning seeds' if fine > 1 else '') + ', not the variation between '
          'pretraining runs, so they are narrower than a replication would show.' + note)
