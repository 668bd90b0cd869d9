"""The report's downstream sections, from `comparison.results.Score`s: the arm x task table
(mean, 95% interval, tokens, FLOPs, mean rank, controls included), pairwise differences, the
minimum detectable difference per task, grid-edge warnings, score against FLOPs over the kept
checkpoints, scaling fits, and lm-eval results where a workdir has them."""

from __future__ import annotations

import glob
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from comparison import scaling
from comparison import stats
from comparison.runs import at_largest_budget, at_step
from comparison.tables import fmt
from objectives.registry import objective_names

LM_EVAL_FILE = re.compile(r'^results_step(\d+)\.json$')
LOSS_FIT_MIN_POINTS = 5  # three parameters and two degrees of freedom
EARLIEST_FRACTION = 0.25  # loss fits start at the first kept checkpoint of a run


def label(group: Any) -> str:
  """'task · strategy (metric)', zero-shot marked."""
  kind = ' zero-shot' if group.kind == 'zero_shot' else ''
  return f'{group.task} · {group.strategy}{kind} ({group.metric})'


def _ci(estimate: stats.Estimate | Any) -> str:
  return f'{estimate.mean:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]'


def _signed(d: stats.Difference) -> str:
  return f'{d.difference:+.3f} [{d.low:+.3f}, {d.high:+.3f}]'


def _cost(scores: Sequence[Any], arm: str) -> tuple[float, float]:
  mine = [s for s in scores if s.arm == arm]
  return float(np.mean([s.tokens for s in mine])), float(np.mean([s.flops for s in mine]))


def headline_table(groups: Sequence[stats.GroupStats], final: Sequence[Any]) -> list[str]:
  """Arm x task: mean and 95% interval, pretraining tokens and FLOPs, mean rank."""
  arms = list(dict.fromkeys(a for g in groups for a in g.estimates))
  arms = [a for a in arms if not stats.is_control(a)] + [a for a in arms if stats.is_control(a)]
  ranks = stats.mean_ranks(groups)
  lines = ['| arm | ' + ' | '.join(label(g) for g in groups) + ' | tokens | FLOPs | mean rank |',
           '|---' * (len(groups) + 4) + '|']
  for arm in arms:
    cells = [_ci(g.estimates[arm]) if arm in g.estimates else '-' for g in groups]
    tokens, flops = _cost(final, arm)
    rank = f'{ranks[arm]:.2f}' if arm in ranks else '-'
    lines.append(f'| {arm} | ' + ' | '.join(cells) + f' | {fmt(tokens)} | {fmt(flops)} | {rank} |')
  return lines


def seeds_line(groups: Sequence[stats.GroupStats]) -> str:
  counts: dict[str, tuple[int, int]] = {}
  for g in groups:
    for arm, e in g.estimates.items():
      counts.setdefault(arm, (e.pretrain_seeds, e.finetune_seeds))
  return 'Seeds: ' + '; '.join(f'{arm} {p} pretraining x {f} fine-tuning'
                               for arm, (p, f) in counts.items()) + '.'


def pairwise_section(groups: Sequence[stats.GroupStats]) -> list[str]:
  """Per task: every pair of arms and every arm against its no-pretraining control."""
  lines: list[str] = []
  for g in groups:
    if not g.differences:
      continue
    clear = [d for d in g.differences if d.clear and not stats.is_control(d.a)]
    pairs = [d for d in g.differences if not stats.is_control(d.a)]
    lines += ['', f'**{label(g)}**: {len(clear)} of {len(pairs)} pairs of arms differ beyond '
              'their 95% interval.', '',
              '| b − a | difference [95% CI] | beyond the interval | examples |',
              '|---|---|---|---|']
    sign = 1 if stats.higher_is_better(g.metric) else -1
    for d in g.differences:
      if stats.is_control(d.a):
        verdict = ('beats no pretraining' if d.clear and sign * d.difference > 0 else
                   'worse than no pretraining' if d.clear else
                   'not distinguishable from no pretraining')
      else:
        verdict = 'yes' if d.clear else 'no'
      name = f'{d.b} − {d.a}'
      value = f'**{_signed(d)}**' if d.clear else _signed(d)
      lines.append(f'| {name} | {value} | {verdict} | {"paired" if d.paired else "unpaired"} |')
  return lines[1:]


def detectable_section(groups: Sequence[stats.GroupStats]) -> list[str]:
  """Per task: the smallest difference between two arms this study could detect."""
  rows = []
  for g in groups:
    m = g.detectable
    if m is None:
      continue
    pairs = [d for d in g.differences if not stats.is_control(d.a)]
    largest = max((abs(d.difference) for d in pairs), default=math.nan)
    n = max(e.examples for e in g.estimates.values())
    if not m.seeds_known:
      reading = 'one run an arm: seed variance unmeasured, the true MDE is larger'
    elif not any(d.clear for d in pairs):
      reading = 'no pair differs beyond its interval: differences under the MDE were undetectable'
    else:
      reading = f'{sum(d.clear for d in pairs)} of {len(pairs)} pairs differ beyond their interval'
    seeds_4x = f'{m.scaled(seeds=4):.4f}' if m.seeds_known else '-'
    rows.append(f'| {label(g)} | {n} | {math.sqrt(m.example_term):.4f} | '
                f'{math.sqrt(m.seed_term):.4f} | {m.se:.4f} | **{m.mde:.4f}** | {seeds_4x} | '
                f'{m.scaled(examples=4):.4f} | {largest:.4f} | {reading} |')
  if not rows:
    return []
  return ['| task | test examples | example SE | seed SE | SE of a difference | MDE | MDE, 4x '
          'seeds | MDE, 4x test examples | largest observed difference | reading |',
          '|---|---|---|---|---|---|---|---|---|---|'] + rows


def zero_shot_rules(scores: Sequence[Any]) -> str:
  """The likelihood each arm ranks zero-shot options by (one zero-shot column for all arms)."""
  rules = {s.arm: s.selected.get('likelihood', '?') for s in scores if s.kind == 'zero_shot'}
  if not rules:
    return ''
  return ('Zero-shot: every arm ranks the options by its own objective\'s likelihood ('
          + ', '.join(f'{arm} {rule}' for arm, rule in sorted(rules.items()))
          + '; docs/evaluation.md defines each rule), free of fine-tuning settings.')


def grid_edge_lines(scores: Sequence[Any]) -> list[str]:
  """One line per (task, strategy, hyper-parameter) naming the arms whose selection sat at an
  edge of its grid, each with how many of its scores did."""
  totals: dict[tuple[str, str, str], int] = {}
  found: dict[tuple[str, str, str], dict[str, int]] = {}
  for s in scores:
    totals[(s.task, s.strategy, s.arm)] = totals.get((s.task, s.strategy, s.arm), 0) + 1
    for name in s.grid_edge:
      arms = found.setdefault((s.task, s.strategy, name), {})
      arms[s.arm] = arms.get(s.arm, 0) + 1
  lines = []
  for (task, strategy, name), arms in sorted(found.items()):
    named = ', '.join(f'{arm} ({count} of {totals[(task, strategy, arm)]})'
                      for arm, count in sorted(arms.items()))
    lines.append(f'- WARNING: {task} ({strategy}): the selected {name} sits at an edge of its '
                 f'grid for {named}; the best value may lie outside it, so widen the grid.')
  return lines


def curve_table(groups: Sequence[stats.GroupStats]) -> list[str]:
  lines = ['| task | arm | fraction | step | tokens | FLOPs | score [95% CI] |',
           '|---|---|---|---|---|---|---|']
  for g in groups:
    for arm, points in g.checkpoints.items():
      for p in points:  # one step a seed: token budgets end seeds at their own steps
        steps = ', '.join(str(step) for step in p.steps)
        lines.append(f'| {label(g)} | {arm} | {p.fraction:g} | {steps} | {fmt(p.tokens)} | '
                     f'{fmt(p.flops)} | {_ci(p)} |')
  return lines


def _curve(points: Sequence[stats.Checkpoint]) -> scaling.Curve:
  return scaling.Curve(np.asarray([p.flops for p in points]),
                       np.asarray([p.mean for p in points]),
                       np.stack([p.replicates for p in points]))


def downstream_scaling(groups: Sequence[stats.GroupStats]) -> list[str]:
  """Log-linear fits per arm and the compute multiplier between the best final arm and each
  other arm, both ways."""
  fits, multipliers = [], []
  for g in groups:
    usable = {arm: _curve([p for p in points if p.flops > 0])
              for arm, points in g.checkpoints.items()
              if not stats.is_control(arm) and len({p.flops for p in points if p.flops > 0}) > 1}
    for arm, curve in usable.items():
      fit = scaling.fit_log_linear(curve.flops, curve.means)
      low, high = scaling.slope_interval(curve)
      fits.append(f'| {label(g)} | {arm} | {fit.b:+.4f} [{low:+.4f}, {high:+.4f}] | '
                  f'{fit.a:.4f} | {len(curve.flops)} | {fmt(float(curve.flops.max()))} |')
    if len(usable) < 2 or not stats.higher_is_better(g.metric):
      continue  # "reaches a score" reads for scores that rise with compute
    best = max(usable, key=lambda arm: usable[arm].means[-1])
    for arm in usable:
      if arm == best:
        continue
      for a, b in ((best, arm), (arm, best)):
        result = scaling.multiplier(a, b, usable)
        if result.ratio is None:
          text = f'not estimated: {result.reason}'
        else:
          high = '∞' if math.isinf(result.high) else f'{100 * result.high:.0f}%'
          text = f'{100 * result.ratio:.0f}% [{100 * result.low:.0f}%, {high}]'
        multipliers.append(f'| {label(g)} | {a} | {b} | {text} |')
  lines: list[str] = []
  if fits:
    lines += ['Score against FLOPs per arm, fitted as s = a + b log10(FLOPs) over its kept '
              'checkpoints (least squares on the checkpoint means; slope intervals from the '
              'nested bootstrap replicates).', '',
              '| task | arm | b (per decade of FLOPs) [95% CI] | a | checkpoints | largest FLOPs |',
              '|---|---|---|---|---|---|'] + fits
  if multipliers:
    lines += ['', 'Compute multiplier: arm A reaches arm B\'s final score with this share of B\'s '
              f'final FLOPs (A\'s fit; never read past {scaling.MAX_EXTRAPOLATION:g}x A\'s largest '
              'checkpoint; a bootstrap replicate that never reaches it counts as ∞).', '',
              '| task | A | B | A\'s FLOPs / B\'s [95% CI] |', '|---|---|---|---|'] + multipliers
  return lines


def loss_points(runs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, list[float],
                                                                    list[float]]]:
  """arm -> (metric, FLOPs, held-out loss) from the validation curves, seeds pooled, from the
  first kept checkpoint (a quarter of the run) on."""
  out: dict[str, tuple[str, list[float], list[float]]] = {}
  for run in runs:
    if not run['train'] or not run['config']:
      continue
    metric = f'{objective_names(run["config"]["objective"])[0]}_loss'
    last = run['train'][-1]['step']
    _, flops, losses = out.setdefault(run['arm'], (metric, [], []))
    for record in run['evals']:
      value = record.get(metric)
      if (isinstance(value, (int, float)) and math.isfinite(value) and record['step'] > 0
          and record['step'] >= EARLIEST_FRACTION * last):
        c = at_step(run['train'], 'flops', record['step'])
        if c:
          flops.append(c)
          losses.append(float(value))
  return out


def loss_scaling(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  rows = []
  for arm, (metric, flops, losses) in loss_points(runs).items():
    if len(set(flops)) < LOSS_FIT_MIN_POINTS:
      continue
    fit = scaling.fit_power_law(flops, losses)
    low, high = scaling.exponent_interval(fit, flops, losses)
    rows.append(f'| {arm} | {metric} | {fit.E:.4g} | {fit.A:.4g} | {fit.alpha:.4f} '
                f'[{low:.4f}, {high:.4f}] | {len(flops)} | '
                f'{fmt(min(flops))} – {fmt(max(flops))} |')
  if not rows:
    return []
  return ['Held-out loss against training FLOPs per arm, L = E + A C^-alpha, fitted in log space '
          f'on the validation curve from {EARLIEST_FRACTION:g} of each run on (seeds pooled; '
          'alpha\'s interval: residual bootstrap). Points along one run share its learning-rate '
          'schedule, so this is that schedule\'s learning curve, not a compute-optimal frontier.',
          '', '| arm | metric | E | A | alpha [95% CI] | points | FLOPs |',
          '|---|---|---|---|---|---|---|'] + rows


def lm_eval_results(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per (run, task) of each workdir's latest lm_eval/results_step<N>.json."""
  rows = []
  for run in runs:
    paths = glob.glob(os.path.join(run['workdir'], 'lm_eval', 'results_step*.json'))
    steps = {int(LM_EVAL_FILE.match(os.path.basename(p)).group(1)): p for p in paths
             if LM_EVAL_FILE.match(os.path.basename(p))}
    if not steps:
      continue
    step = max(steps)
    with open(steps[step], encoding='utf-8') as f:
      data = json.load(f)
    for task, values in sorted((data.get('results') or {}).items()):
      metric = next((k for k in ('acc_norm,none', 'acc,none') if k in values), None)
      if metric is None:
        continue
      stderr = values.get(metric.replace(',', '_stderr,', 1))
      rows.append(dict(arm=run['arm'], seed=run['seed'], step=step, task=task,
                       metric=metric.split(',')[0], value=float(values[metric]),
                       stderr=float(stderr) if isinstance(stderr, (int, float)) else math.nan))
  return rows


def lm_eval_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Per arm and task: the mean over seeds, and the harness's standard error of that mean
  (sqrt(mean stderr^2 / seeds))."""
  rows = lm_eval_results(runs)
  if not rows:
    return []
  cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for row in rows:
    cells.setdefault((row['arm'], row['task'], row['metric']), []).append(row)
  lines = ['| arm | task | metric | value | stderr | seeds | steps |',
           '|---|---|---|---|---|---|---|']
  for (arm, task, metric), mine in cells.items():
    value = float(np.mean([r['value'] for r in mine]))
    stderr = math.sqrt(np.mean([r['stderr'] ** 2 for r in mine]) / len(mine))
    steps = ', '.join(str(s) for s in sorted({r['step'] for r in mine}))
    lines.append(f'| {arm} | {task} | {metric} | {value:.4f} | {fmt(stderr)} | {len(mine)} | '
                 f'{steps} |')
  return lines


def sections(scores: Sequence[Any], runs: Sequence[Mapping[str, Any]], plot_path: str = '',
             arm_order: Sequence[str] = ()) -> tuple[list[str], list[str], bool]:
  """(the lines that open report.md, the scaling and lm-eval lines that follow the held-out
  tables, whether the score-against-FLOPs plot was written to `plot_path`)."""
  from comparison import plots  # pylint: disable=import-outside-toplevel

  head: list[str] = []
  plotted = False
  groups = stats.analyse(scores, arm_order=arm_order) if scores else []
  if groups:
    final = stats.final_scores(scores)
    head += ['## Downstream test scores (mean and 95% interval)', ''] + headline_table(
        groups, final)
    head += ['', stats.coverage(groups) + ' ' + seeds_line(groups) + ' Each arm\'s last '
             'checkpoint of its largest budget; tokens and FLOPs are its pretraining at that '
             'checkpoint (0 for no_pretraining, the same architecture from random '
             'initialisation). Mean rank: 1 is the best pretrained arm of a column (controls '
             'not ranked), averaged over the columns.']
    rules = zero_shot_rules(final)
    if rules:
      head += ['', rules]
    edges = grid_edge_lines(final)
    if edges:
      head += [''] + edges
    pairs = pairwise_section(groups)
    if pairs:
      head += ['', '## Differences between arms (downstream)', '',
               'b − a with its 95% nested bootstrap interval (bold where it excludes 0); paired '
               'where both arms scored the same test examples.', ''] + pairs
    mde = detectable_section(groups)
    if mde:
      head += ['', '## Smallest difference this study could detect', '',
               'MDE = (z_0.975 + z_0.8) x SE of a difference between two arms (two-sided alpha '
               '0.05, power 0.8), SE^2 = s_d^2 / n + 2 v_seed: s_d^2 the variance over test '
               'examples of the per-example difference between two arms (averaged over pairs), '
               'v_seed the variance of an arm\'s mean from its seeds (pretraining seeds\' means '
               'over their number; with one pretraining seed, its fine-tuning seeds). A '
               'difference smaller than the MDE would usually go unseen: a null result here '
               'reads "no difference this large", not "the same".', ''] + mde
    if plot_path:
      plotted = plots.plot_downstream(plot_path, {label(g): g.checkpoints for g in groups})
    head += ['', '## Downstream score against pretraining FLOPs', '']
    if plotted:
      head += [f'![downstream vs FLOPs]({os.path.basename(plot_path)})', '']
    head += curve_table(groups)
  scaling_lines = downstream_scaling(groups)
  loss = loss_scaling(runs)
  if loss:
    scaling_lines += ([''] if scaling_lines else []) + loss
  tail: list[str] = []
  if scaling_lines:
    tail += ['', '## Scaling', ''] + scaling_lines
  lm_eval = lm_eval_table(at_largest_budget(runs))
  if lm_eval:
    tail += ['', '## lm-eval (lm-evaluation-harness, each run\'s latest results_step<N>.json)',
             ''] + lm_eval
  return head, tail, plotted
