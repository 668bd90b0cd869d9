"""Reads a comparison's workdirs (never trains) and writes report.md, results.csv and PNG plots.

  python tools/report.py --root runs/compare [--out runs/compare/report]

Every directory under --root holding a config.json is a run; its arm comes from its objective
and data format (configs/compare.py), its seed from config.seed. report.md opens with the
downstream arm x task table (comparison/headline.py: nested bootstrap intervals, ranks,
differences, the minimum detectable difference, score against FLOPs), then the held-out
metrics per objective family (comparison/heldout.py), scaling fits (comparison/scaling.py),
lm-eval results, the runs and the resolved config diff (comparison/controls.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=wrong-import-position
from comparison import headline, heldout, plots, results
from comparison.controls import config_diff, uncontrolled, within_arm
from comparison.runs import at_largest_budget, check_distinct, evaluation_of, find_runs
from comparison.tables import fmt, write_csv
from configs import compare
# pylint: enable=wrong-import-position

DOWNSTREAM_PLOT = 'downstream_vs_flops.png'


def write_report(root: str, out: str) -> dict[str, Any]:
  """Writes report.md, results.csv and the PNGs into `out`; returns what it wrote."""
  every_run = find_runs(root)
  if not every_run:
    raise ValueError(f'No run under {root}: a run is a directory with config.json and '
                     'metrics.jsonl (train one with tools/compare.py).')
  check_distinct(every_run)
  runs = at_largest_budget(every_run)  # the per-arm tables; scaling and curves read every run
  os.makedirs(out, exist_ok=True)
  rows = write_csv(os.path.join(out, 'results.csv'), runs)
  written = {}
  for name, make in (
      ('validation_vs_tokens.png', lambda p: plots.plot_curves(p, every_run, 'tokens')),
      ('validation_vs_flops.png', lambda p: plots.plot_curves(p, every_run, 'flops')),
      ('throughput.png', lambda p: plots.plot_bars(
          p, rows, ('real_tokens_per_sec', 'tokens_per_sec', 'mfu')))):
    if make(os.path.join(out, name)):
      written[name] = os.path.join(out, name)
  scores = results.collect(root)
  head, tail, plotted = headline.sections(scores, every_run,
                                          os.path.join(out, DOWNSTREAM_PLOT),
                                          arm_order=tuple(compare.ARMS))
  if plotted:
    written[DOWNSTREAM_PLOT] = os.path.join(out, DOWNSTREAM_PLOT)
  configs = {}
  for run in runs:
    configs.setdefault(run['arm'], run['config'])
  diff = config_diff(configs)
  # Every run of an arm (all budgets) must agree on all but the budget; arms are compared at
  # their largest budget, where the budget too must agree.
  loose = uncontrolled(diff, configs) + within_arm(every_run, ignore=('budget.tokens',))

  lines = [f'# Objective comparison: {root}', ''] + head + ([''] if head else [])
  budgets = sorted({run['budget'] for run in every_run})
  if len(budgets) > 1:
    lines += [f'Token budgets {", ".join(fmt(b) for b in budgets)}: the tables below are each '
              'arm\'s runs at its largest budget; the scaling fits and the validation curves '
              f'read all {len(every_run)} runs.', '']
  lines += [f'{len(runs)} runs: ' + ', '.join(
      f'{arm} (seeds {sorted(r["seed"] for r in runs if r["arm"] == arm)})'
      for arm in dict.fromkeys(r['arm'] for r in runs)), '', '## Cost (mean ± std over seeds)',
            '', 'Tokens are non-padding training tokens seen; std is the sample standard '
            'deviation over seeds (ddof=1); an arm with one seed shows its value alone.', '']
  lines += heldout.cost_table(rows)
  lines += ['', '## Held-out results per objective family (mean ± std over seeds)', '',
            'Each family\'s rows predict the same kind of target, so they compare within a '
            '`predicts` value (the MLM rows across arms); numbers of different families do not. '
            'Exact pass over the validation split (tools/evaluate.py) where present, else the '
            'last evaluation in metrics.jsonl. Losses in nats per prediction; MLM at 15% token '
            'masking; perplexity (exp of the loss) is in results.csv.', '']
  lines += heldout.family_tables(rows)
  held_out = [evaluation_of(run) for run in runs]
  short = [f'{run["name"]} ({where})' for run, where in zip(runs, held_out)
           if where != 'exact pass']
  if short:
    lines += ['', 'NOT AN EXACT PASS of the last checkpoint for: ' + ', '.join(short) + '. '
              'Run tools/evaluate.py on these workdirs.']
  diff_lines = heldout.differences(runs)
  if diff_lines:
    lines += ['', '## Held-out differences between arms', '',
              f'Bootstrap over evaluation examples ({heldout.BOOTSTRAP_SAMPLES} resamples), '
              'seeds averaged; paired where both arms evaluated the same examples. These '
              'intervals cover evaluation sampling only: seeds are averaged, not resampled, so '
              'the variation between pretraining runs is in the ± std above, not in them.',
              ''] + diff_lines
  lines += tail
  lines += ['', '## Runs', '', '| arm | seed | workdir | step | tokens | flops | wall s | '
            'held-out numbers |', '|---|---|---|---|---|---|---|---|']
  lines += [f'| {row["arm"]} | {row["seed"]} | {row["workdir"]} | {row.get("step", "-")} | '
            f'{fmt(row.get("tokens"))} | {fmt(row.get("flops"))} | '
            f'{fmt(row.get("wall_time"))} | {where} |'
            for row, where in zip(rows, held_out)]
  lines += ['', '## What differs between arms (resolved config)', '']
  if diff:
    arms = list(configs)
    lines += ['| setting | ' + ' | '.join(arms) + ' |', '|---' * (len(arms) + 1) + '|']
    lines += [f'| {key} | ' + ' | '.join(fmt(values.get(arm, '-')) for arm in arms) + ' |'
              for key, values in diff.items()]
  else:
    lines.append('Nothing: every run has the same config.')
  lines.append('')
  lines.append('Only objective fields and the features they require differ.' if not loose else
               'NOT CONTROLLED: these settings differ beyond the objectives: ' + ', '.join(loose))
  others = [name for name in written if name != DOWNSTREAM_PLOT]
  if others:
    lines += ['', '## Plots', ''] + [f'![{name}]({name})' for name in others]
  with open(os.path.join(out, 'report.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return dict(runs=runs, rows=rows, plots=written, diff=diff, uncontrolled=loose,
              scores=scores, report=os.path.join(out, 'report.md'))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True, help='Directory holding the runs\' workdirs.')
  parser.add_argument('--out', default='', help='Where to write the report (default: --root).')
  args = parser.parse_args(argv)
  try:
    written = write_report(args.root, args.out or args.root)
  except ValueError as error:
    print(f'report.py: error: {error}', file=sys.stderr)
    return 2
  print(f'Wrote {written["report"]}, results.csv and {len(written["plots"])} plots '
        f'({len(written["runs"])} runs).')
  return 0


if __name__ == '__main__':
  sys.exit(main())
