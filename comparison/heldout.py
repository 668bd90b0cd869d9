"""Held-out metrics across arms: mean ± std over seeds per objective family, and bootstrap
differences between arms that share an objective (over evaluation examples)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from comparison.tables import fmt
from downstream.results import mean_std  # the sample std (ddof=1) by default

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


def ratio_stats(examples: Mapping[str, np.ndarray], part: str) -> dict[str, tuple[np.ndarray,
                                                                                   np.ndarray]]:
  """statistic -> (numerator, denominator) per example, for ratio-of-sums bootstraps."""
  count = examples[f'{part}.count'].astype(np.float64)
  stats = {'accuracy': (examples[f'{part}.correct'].astype(np.float64), count)}
  if f'{part}.bytes' in examples:
    stats['bits_per_byte'] = (examples[f'{part}.nll'] / math.log(2),
                              examples[f'{part}.bytes'].astype(np.float64))
  else:
    stats['loss'] = (examples[f'{part}.nll'].astype(np.float64), count)
  return stats


def bootstrap_difference(a: Sequence[Mapping[str, np.ndarray]],
                         b: Sequence[Mapping[str, np.ndarray]], part: str, statistic: str,
                         samples: int = BOOTSTRAP_SAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
  """Difference (b - a) of a ratio statistic, seeds averaged, with a 95% bootstrap interval
  over examples. `a` and `b` hold each seed's per-example arrays; the resampling is paired
  when both arms evaluated the same examples (equal example keys)."""
  rng = np.random.default_rng(seed)

  def same(runs):
    return all(np.array_equal(x['key'], runs[0]['key']) for x in runs)

  paired = same(list(a) + list(b))

  def weights(n):
    return rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64)

  def arm_weights(runs):
    # Seeds that scored the same examples share one resample; otherwise each has its own.
    if same(runs):
      return [weights(len(runs[0]['key']))] * len(runs)
    return [weights(len(run['key'])) for run in runs]

  def values(runs, ws):
    per_seed = []
    for run, w in zip(runs, ws):
      numerator, denominator = ratio_stats(run, part)[statistic]
      per_seed.append((w @ numerator) / np.maximum(w @ denominator, 1e-12))
    return np.mean(per_seed, axis=0)

  def point(runs):
    return float(np.mean([ratio_stats(r, part)[statistic][0].sum()
                          / max(ratio_stats(r, part)[statistic][1].sum(), 1e-12) for r in runs]))

  w_a = arm_weights(a)
  w_b = [w_a[0]] * len(b) if paired else arm_weights(b)
  differences = values(b, w_b) - values(a, w_a)
  low, high = np.percentile(differences, [2.5, 97.5])
  return dict(difference=point(b) - point(a), low=float(low), high=float(high), paired=paired)


STATISTICS = ('bits_per_byte', 'loss', 'accuracy')  # perplexity is exp(loss): in results.csv
COST_KEYS = ('tokens', 'flops', 'real_tokens_per_sec', 'tokens_per_sec')
# Objective families: the parts (metric prefixes) whose numbers compare with each other.
FAMILIES = (('causal', ('clm', 'prefix_lm', 'deshuffle')), ('permutation', ('plm',)),
            ('masked', ('mlm',)), ('span corruption', ('span_corruption',)),
            ('replaced-token detection', ('electra',)), ('sentence pairs', ('nsp', 'sop')))


def _cell(values: Sequence[float], seeds: int) -> str:
  """mean ± std over seeds; one value alone; '(k of n seeds)' where some seeds lack it."""
  if not values:
    return '-'
  mean, std = mean_std(values)
  cell = fmt(mean) if len(values) == 1 else f'{fmt(mean)} ± {fmt(std)}'
  if len(values) < seeds:  # a seed without this number: say how many seeds it holds
    cell += f' ({len(values)} of {seeds} seeds)'
  return cell


def cost_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown: per arm, its number of seeds and mean ± std of tokens, FLOPs and throughput."""
  arms = list(dict.fromkeys(row['arm'] for row in rows))
  lines = ['| arm | seeds | ' + ' | '.join(COST_KEYS) + ' |', '|---' * (len(COST_KEYS) + 2) + '|']
  for arm in arms:
    mine = [row for row in rows if row['arm'] == arm]
    cells = [str(len(mine))] + [_cell([r[k] for r in mine if k in r], len(mine))
                                for k in COST_KEYS]
    lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
  return lines


def parts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Metric prefixes (what an objective predicts) with a held-out statistic in `rows`."""
  found = []
  for row in rows:
    for key in row:
      for statistic in STATISTICS + ('perplexity',):
        if key.endswith('_' + statistic) and len(key) > len(statistic) + 1:
          part = key[:-len(statistic) - 1]
          if part not in found:
            found.append(part)
  return found


def family_of(part: str) -> str:
  for family, names in FAMILIES:
    if any(part == name or part.startswith(name + '_') for name in names):
      return family
  return part.split('_')[0]


def family_tables(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown: one compact table per objective family, a row per (arm, part predicted) with
  mean ± std over seeds of bits per byte, loss and accuracy."""
  arms = list(dict.fromkeys(row['arm'] for row in rows))
  order = [f for f, _ in FAMILIES]
  found = parts(rows)
  families = sorted({family_of(p) for p in found},
                    key=lambda f: (order.index(f) if f in order else len(order), f))
  lines: list[str] = []
  for family in families:
    mine = sorted((p for p in found if family_of(p) == family))
    columns = [s for s in STATISTICS if any(f'{p}_{s}' in row for p in mine for row in rows)]
    lines += ['', f'**{family}**', '', '| arm | predicts | ' + ' | '.join(columns) + ' |',
              '|---' * (len(columns) + 2) + '|']
    for arm in arms:
      runs = [row for row in rows if row['arm'] == arm]
      for part in mine:
        if not any(f'{part}_{s}' in row for s in STATISTICS + ('perplexity',) for row in runs):
          continue
        cells = [_cell([r[f'{part}_{s}'] for r in runs if f'{part}_{s}' in r], len(runs))
                 for s in columns]
        lines.append(f'| {arm} | {part} | ' + ' | '.join(cells) + ' |')
  return lines[1:]


def differences(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown rows: every pair of arms sharing an objective, difference with a 95% CI."""
  from training.evaluation import load_examples  # pylint: disable=import-outside-toplevel

  by_arm: dict[str, list[dict[str, np.ndarray]]] = {}
  for run in runs:
    if run['examples_path']:
      by_arm.setdefault(run['arm'], []).append(load_examples(run['examples_path'])[0])
  lines = []
  arms = list(by_arm)
  for i, first in enumerate(arms):
    for second in arms[i + 1:]:
      parts_a = {k.split('.')[0] for k in by_arm[first][0] if k.endswith('.count')}
      parts_b = {k.split('.')[0] for k in by_arm[second][0] if k.endswith('.count')}
      for part in sorted(parts_a & parts_b):
        for statistic in ratio_stats(by_arm[first][0], part):
          result = bootstrap_difference(by_arm[first], by_arm[second], part, statistic)
          lines.append(f'| {second} − {first} | {part}_{statistic} | '
                       f'{result["difference"]:+.4f} | [{result["low"]:+.4f}, '
                       f'{result["high"]:+.4f}] | {"paired" if result["paired"] else "unpaired"}'
                       f' |')
  if not lines:
    return []
  return ['| arms | metric | difference | 95% CI | examples |', '|---|---|---|---|---|'] + lines
