"""A comparison's runs read back from their workdirs (never trained here): config, metrics.jsonl,
the exact held-out pass (eval/) and cost at any step. Downstream scores: comparison/results.py."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from comparison.results import arm_of
from configs import compare
from training.metrics import read_records
from training.workdir import CONFIG_FILE, METRICS_FILE, RUN_FILE, eval_outputs, read_json



def load_run(workdir: str) -> dict[str, Any]:
  """Everything the report needs of one run's workdir."""
  config = read_json(os.path.join(workdir, CONFIG_FILE))
  metrics_path = os.path.join(workdir, METRICS_FILE)
  records = read_records(metrics_path) if os.path.exists(metrics_path) else []
  train = [r for r in records if r.get('split') == 'train']
  evals = [r for r in records if r.get('split') == 'eval']
  final_path, examples_path = eval_outputs(workdir, 'validation')
  final = read_json(final_path)
  budget = (config.get('budget') or {}).get('tokens') or 0
  return dict(workdir=workdir, name=os.path.basename(os.path.normpath(workdir)), config=config,
              arm=arm_of(config), seed=int(config.get('seed', 0)), budget=int(budget),
              train=train, evals=evals,
              final=final, examples_path=examples_path if os.path.exists(examples_path) else None,
              run_info=read_json(os.path.join(workdir, RUN_FILE)) or {})


def find_runs(root: str) -> list[dict[str, Any]]:
  """Every run (a directory with config.json) under root, sorted by arm then seed."""
  runs = []
  for folder, _, files in os.walk(root):
    if CONFIG_FILE in files and os.path.exists(os.path.join(folder, METRICS_FILE)):
      runs.append(load_run(folder))
  order = {name: index for index, name in enumerate(compare.ARMS)}
  return sorted(runs, key=lambda r: (order.get(r['arm'], len(order)), r['arm'], r['seed']))


def at_step(records: Sequence[Mapping[str, Any]], key: str, step: int) -> float | None:
  """`key` of the train records interpolated at `step` (tokens and FLOPs grow with steps)."""
  points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  if not points:
    return None
  steps, values = zip(*points)
  if step <= 0:
    return 0.0
  if step >= steps[-1]:
    return float(values[-1]) * step / steps[-1]
  return float(np.interp(step, (0,) + steps, (0.0,) + values))


def final_metrics(run: Mapping[str, Any]) -> dict[str, float]:
  """The run's row: exact held-out pass (else its last eval record) and its cost."""
  row: dict[str, float] = {}
  source = run['final'] or (run['evals'][-1] if run['evals'] else {})
  for key, value in source.items():
    if isinstance(value, (int, float)) and not key.startswith('data_') and key not in ('time',):
      row[key] = value
  step = int(source.get('step', run['train'][-1]['step'] if run['train'] else 0))
  row['step'] = step
  for key in ('tokens', 'flops', 'wall_time'):
    value = at_step(run['train'], key, step)
    if value is not None:
      row[key] = value
  for key in ('tokens_per_sec', 'real_tokens_per_sec', 'mfu'):
    values = [r[key] for r in run['train'] if isinstance(r.get(key), (int, float))]
    if values:
      row[key] = float(np.mean(values[1:] if len(values) > 1 else values))  # first has compile
  if 'params' in run['run_info']:
    row['params'] = run['run_info']['params']
  return row


def evaluation_of(run: Mapping[str, Any]) -> str:
  """Where a run's held-out numbers come from: the exact pass of its last checkpoint, or
  what falls short of it (an older checkpoint, or no exact pass at all)."""
  last = run['train'][-1]['step'] if run['train'] else None
  if not run['final']:
    return 'no exact pass: last metrics.jsonl eval'
  step = run['final'].get('step')
  if last is not None and isinstance(step, int) and step < last:
    return f'exact pass of step {step}, not the last ({last})'
  if not run['examples_path']:
    return 'exact pass, no per-example numbers'
  return 'exact pass'


def check_distinct(runs: Sequence[Mapping[str, Any]]) -> None:
  """One run per (arm, seed, token budget): a seed trained twice would count twice in the
  mean ± std. Runs of one arm and seed at several budgets (--budgets) are distinct."""
  seen: dict[tuple[str, int, int], str] = {}
  for run in runs:
    key = (run['arm'], run['seed'], run.get('budget', 0))
    if key in seen:
      budget = f' at budget {key[2]}' if key[2] else ''
      raise ValueError(f'{seen[key]} and {run["workdir"]} are both arm {key[0]} seed {key[1]}'
                       f'{budget}: a seed counts once, so move one of them out of the root.')
    seen[key] = run['workdir']


def at_largest_budget(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  """Each arm's runs at its largest token budget: the per-arm tables compare arms there, as
  the downstream headline does; the scaling fits read every budget."""
  largest: dict[str, int] = {}
  for run in runs:
    largest[run['arm']] = max(largest.get(run['arm'], 0), run.get('budget', 0))
  return [run for run in runs if run.get('budget', 0) == largest[run['arm']]]
