"""Reads a comparison's workdirs (never trains) and writes report.md, results.csv and PNG plots.

  python tools/report.py --root runs/compare [--out runs/compare/report]

Every directory under --root holding a config.json is a run; its arm comes from its objective
and data format (configs/compare.py), its seed from config.seed. For each run it reads
metrics.jsonl (train records: tokens, FLOPs, wall time, tokens/s, MFU; eval records: the
validation curve), eval/validation.json and eval/validation_examples.npz (the exact held-out
pass of tools/evaluate.py) and downstream/<task>/<strategy>/results.json when present.
Numbers are mean ± std over seeds; arm differences carry a bootstrap 95% interval over
evaluation examples (paired when both arms evaluated the same examples).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import compare  # pylint: disable=wrong-import-position

EVAL_DIR = 'eval'
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
# Keys that may differ between runs of one comparison without breaking its control.
RUN_KEYS = ('seed', 'resume', 'allow_config_change', 'pause_at_step', 'distributed', 'mesh',
            'data.data_dir')


# -- reading -------------------------------------------------------------------------------

def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples so values compare and hash."""
  if isinstance(tree, Mapping):
    out: dict[str, Any] = {}
    for key in tree:
      out.update(flatten(tree[key], f'{prefix}{key}.'))
    if not out and prefix:
      out[prefix[:-1]] = '{}'
    return out
  if isinstance(tree, list):
    tree = tuple(tuple(v) if isinstance(v, list) else v for v in tree)
  return {prefix[:-1]: tree}


def objective_names(objective: Any) -> list[str]:
  return [objective] if isinstance(objective, str) else list(objective)


def arm_of(config: Mapping[str, Any]) -> str:
  """The comparison arm a run's config belongs to (its objective name(s) if not a listed arm)."""
  objective = config['objective']
  data_format = config.get('data', {}).get('format', '') or ''
  for name, arm in compare.ARMS.items():
    same_objective = (objective == arm.objective if isinstance(objective, str)
                      else not isinstance(arm.objective, str)
                      and dict(objective) == dict(arm.objective))
    if same_objective and data_format in ('', arm.data_format):
      if data_format or name in ('clm', 'mlm', 'mlm_nsp', 'mlm_sop', 'plm'):
        return name
  return '+'.join(objective_names(objective)) + (f'@{data_format}' if data_format else '')


def read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        line = line.strip()
        if line:
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError:
            continue  # a line cut by a crash
  return records


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _downstream_entry(item: dict[str, Any]) -> dict[str, Any] | None:
  """step, metric, score (and std) of one results record: the `downstream-results/1` schema
  (docs/downstream.md: the selecting metric's test mean, else its dev mean), or a plain
  `score` / `metrics` record."""
  if str(item.get('schema', '')).startswith('downstream-results/'):
    metric = item.get('metric')
    scores = item.get('test') or item.get('dev') or {}
    if metric not in scores:
      return None
    step = (item.get('pretraining') or {}).get('step')
    return dict(step=step if isinstance(step, int) else None, metric=metric,
                score=float(scores[metric]['mean']), std=float(scores[metric].get('std', 0.0)))
  score, metric = item.get('score'), 'score'
  if not isinstance(score, (int, float)):
    numbers = [(k, v) for k, v in (item.get('metrics') or {}).items()
               if isinstance(v, (int, float))]
    if not numbers:
      return None
    metric, score = numbers[0]
  step = next((item[k] for k in ('pretrain_step', 'checkpoint_step', 'step')
               if isinstance(item.get(k), int)), None)
  return dict(step=step, metric=metric, score=float(score))


def downstream_results(workdir: str) -> list[dict[str, Any]]:
  """One entry per downstream/<task>/<strategy>/results.json (or each of its list entries):
  task, strategy, step (the pretraining checkpoint, if given), score (`score`, else the
  first number under `metrics`) and metric (its name)."""
  root = os.path.join(workdir, 'downstream')
  entries = []
  if not os.path.isdir(root):
    return entries
  for task in sorted(os.listdir(root)):
    for strategy in sorted(os.listdir(os.path.join(root, task))):
      data = _read_json(os.path.join(root, task, strategy, 'results.json'))
      for item in data if isinstance(data, list) else [data] if data else []:
        entry = _downstream_entry(item)
        if entry is not None:
          entries.append(dict(task=task, strategy=strategy, **entry))
  return entries


def load_run(workdir: str) -> dict[str, Any]:
  """Everything the report needs of one run's workdir."""
  config = _read_json(os.path.join(workdir, 'config.json'))
  records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train = [r for r in records if r.get('split') == 'train']
  evals = [r for r in records if r.get('split') == 'eval']
  final = _read_json(os.path.join(workdir, EVAL_DIR, 'validation.json'))
  examples_path = os.path.join(workdir, EVAL_DIR, 'validation_examples.npz')
  return dict(workdir=workdir, name=os.path.basename(os.path.normpath(workdir)), config=config,
              arm=arm_of(config), seed=int(config.get('seed', 0)), train=train, evals=evals,
              final=final, examples_path=examples_path if os.path.exists(examples_path) else None,
              run_info=_read_json(os.path.join(workdir, 'run.json')) or {},
              downstream=downstream_results(workdir))


def find_runs(root: str) -> list[dict[str, Any]]:
  """Every run (a directory with config.json) under root, sorted by arm then seed."""
  runs = []
  for folder, _, files in os.walk(root):
    if 'config.json' in files and os.path.exists(os.path.join(folder, 'metrics.jsonl')):
      runs.append(load_run(folder))
  order = {name: index for index, name in enumerate(compare.ARMS)}
  return sorted(runs, key=lambda r: (order.get(r['arm'], len(order)), r['arm'], r['seed']))


# -- numbers -------------------------------------------------------------------------------

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


def _evaluation_of(run: Mapping[str, Any]) -> str:
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


def mean_std(values: Iterable[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1) over seeds; one seed has std 0 (the tables
  then show the value alone)."""
  values = [float(v) for v in values]
  if not values:
    return math.nan, math.nan
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _ratio_stats(examples: Mapping[str, np.ndarray], part: str) -> dict[str, tuple[np.ndarray,
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
      numerator, denominator = _ratio_stats(run, part)[statistic]
      per_seed.append((w @ numerator) / np.maximum(w @ denominator, 1e-12))
    return np.mean(per_seed, axis=0)

  def point(runs):
    return float(np.mean([_ratio_stats(r, part)[statistic][0].sum()
                          / max(_ratio_stats(r, part)[statistic][1].sum(), 1e-12) for r in runs]))

  w_a = arm_weights(a)
  w_b = [w_a[0]] * len(b) if paired else arm_weights(b)
  differences = values(b, w_b) - values(a, w_a)
  low, high = np.percentile(differences, [2.5, 97.5])
  return dict(difference=point(b) - point(a), low=float(low), high=float(high), paired=paired)


def model_features(config: Mapping[str, Any]) -> dict[str, Any]:
  """The model features the run's objectives switch on (pooler, query stream), resolved."""
  from data.vocab import toy_vocab  # pylint: disable=import-outside-toplevel
  from objectives import registry  # pylint: disable=import-outside-toplevel

  vocab = toy_vocab(max(64, int(config.get('data', {}).get('vocab_size', 64))))
  objective = registry.build(config['objective'], lambda name: config.get(name, {}) or {},
                             vocab=vocab, seq_len=int(config['seq_len']))
  return {f'model.{key}': value for key, value in objective.model_overrides().items()}


def config_diff(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """key -> {arm: value} for every resolved setting that differs between arms (run keys such
  as the seed left out; model features the objectives switch on included)."""
  flat = {}
  for arm, config in configs.items():
    flat[arm] = {**_shaping(config), **model_features(config)}
  keys = sorted(set().union(*[set(v) for v in flat.values()]))
  return {key: {arm: values.get(key, '-') for arm, values in flat.items()} for key in keys
          if len({repr(values.get(key, '-')) for values in flat.values()}) > 1}


def _shaping(config: Mapping[str, Any]) -> dict[str, Any]:
  """A run's flattened settings without the run keys (seed, resume, where it runs)."""
  return {key: value for key, value in flatten(config).items()
          if not any(key == r or key.startswith(r + '.') for r in RUN_KEYS)}


def within_arm(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """Settings that differ between the runs (seeds) of one arm, as 'key (in arm)'."""
  first: dict[str, dict[str, Any]] = {}
  loose: list[str] = []
  for run in runs:
    values = _shaping(run['config'])
    reference = first.setdefault(run['arm'], values)
    for key in sorted(set(values) | set(reference)):
      label = f'{key} (in {run["arm"]})'
      if repr(values.get(key, '-')) != repr(reference.get(key, '-')) and label not in loose:
        loose.append(label)
  return loose


def check_distinct(runs: Sequence[Mapping[str, Any]]) -> None:
  """One run per (arm, seed): a seed trained twice would count twice in the mean ± std."""
  seen: dict[tuple[str, int], str] = {}
  for run in runs:
    key = (run['arm'], run['seed'])
    if key in seen:
      raise ValueError(f'{seen[key]} and {run["workdir"]} are both arm {key[0]} seed {key[1]}: '
                       'a seed counts once, so move one of them out of the root.')
    seen[key] = run['workdir']


def uncontrolled(diff: Mapping[str, Mapping[str, Any]],
                 configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """Differing keys that are neither objective fields nor features objectives require, and
  an objective's settings that differ between arms sharing that objective (MLM at another
  masking rate in one arm)."""
  sections = {name for config in configs.values() for name in objective_names(config['objective'])}
  allowed = {'objective', 'data.format', 'model.num_token_types'}  # the arm's format's features
  for config in configs.values():
    allowed |= set(model_features(config))  # what the objectives switch on themselves
  loose = []
  for key, values in diff.items():
    section = key.split('.')[0]
    if section in sections:
      users = [arm for arm, config in configs.items()
               if section in objective_names(config['objective'])]
      if len({repr(values.get(arm, '-')) for arm in users}) > 1:
        loose.append(key)
    elif key not in allowed and not key.startswith('objective.'):
      loose.append(key)
  return loose


# -- writing -------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
  """A number for the tables: None is missing ('-'); NaN and inf are written as such."""
  if value is None:
    return '-'
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)
    return f'{value:.4g}' if abs(value) < 1e5 else f'{value:.3e}'
  return str(value)


def write_csv(path: str, runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One row per run: arm, seed, workdir and every final number; returns the rows written."""
  rows = [dict(arm=run['arm'], seed=run['seed'], workdir=run['name'], **final_metrics(run))
          for run in runs]
  columns = ['arm', 'seed', 'workdir'] + sorted({k for row in rows for k in row}
                                                - {'arm', 'seed', 'workdir'})
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: repr(v) if isinstance(v, float) else csv_text(v)
                       for k, v in row.items()})
  return rows


def csv_text(value: Any) -> Any:
  """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a `'`."""
  if isinstance(value, str) and value[:1] in ('=', '+', '-', '@', '\t', '\r'):
    return "'" + value
  return value


def read_csv(path: str) -> list[dict[str, Any]]:
  """results.csv back as numbers (empty cells dropped)."""
  with open(path, encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  parsed = []
  for row in rows:
    values: dict[str, Any] = {}
    for key, text in row.items():
      if text == '':
        continue
      try:
        values[key] = int(text)
      except ValueError:
        try:
          values[key] = float(text)
        except ValueError:
          values[key] = text
    parsed.append(values)
  return parsed


def curve_metrics(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  """The validation metrics to plot per objective: bits per byte where a token likelihood
  exists, else the loss (the in-training evaluation of older runs has no bits per byte)."""
  keys = {k for run in runs for record in run['evals'] for k in record
          if isinstance(record[k], (int, float))}
  names = sorted({k.rsplit('_', 1)[0] for k in keys if k.endswith('_loss')} - {''})
  chosen = []
  for name in names:
    for suffix in ('_bits_per_byte', '_loss'):
      if name + suffix in keys:
        chosen.append(name + suffix)
        break
  return chosen


def plot_curves(path: str, runs: Sequence[Mapping[str, Any]], x_key: str) -> bool:
  """Validation metrics against tokens or FLOPs, one line per arm, a band of ± std over seeds."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  metrics = curve_metrics(runs)
  if not metrics:
    return False
  columns = min(3, len(metrics))
  rows = math.ceil(len(metrics) / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
  arms = list(dict.fromkeys(run['arm'] for run in runs))
  for axis, metric in zip(axes.flat, metrics):
    for arm in arms:
      curves = []
      for run in (r for r in runs if r['arm'] == arm):
        points = [(at_step(run['train'], x_key, r['step']), r[metric]) for r in run['evals']
                  if isinstance(r.get(metric), (int, float))]
        points = [(x, y) for x, y in points if x is not None]
        if points:
          curves.append(np.asarray(points))
      if not curves:
        continue
      length = min(len(c) for c in curves)
      stacked = np.stack([c[:length] for c in curves])
      x, y = stacked[:, :, 0].mean(axis=0), stacked[:, :, 1]
      mean, std = y.mean(axis=0), y.std(axis=0, ddof=1) if len(curves) > 1 else 0.0
      axis.plot(x, mean, marker='.', label=arm)
      if len(curves) > 1:
        axis.fill_between(x, mean - std, mean + std, alpha=0.25)
    axis.set_title(metric)
    axis.set_xlabel('training tokens' if x_key == 'tokens' else 'training FLOPs')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  for axis in list(axes.flat)[len(metrics):]:
    axis.set_visible(False)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return True


def plot_bars(path: str, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> bool:
  """Mean ± std over seeds of each key per arm (tokens/s, MFU)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  keys = [k for k in keys if any(k in row for row in rows)]
  if not keys:
    return False
  arms = list(dict.fromkeys(row['arm'] for row in rows))
  figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
  for axis, key in zip(axes.flat, keys):
    stats = [mean_std(row[key] for row in rows if row['arm'] == arm and key in row)
             for arm in arms]
    axis.bar(range(len(arms)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3)
    axis.set_xticks(range(len(arms)), arms, rotation=30, ha='right', fontsize=8)
    axis.set_title(key)
    axis.grid(alpha=0.3, axis='y')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return True


def plot_downstream(path: str, runs: Sequence[Mapping[str, Any]]) -> bool:
  """Downstream score against the pretraining FLOPs of the checkpoint it started from."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  series: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
  for run in runs:
    last_step = run['train'][-1]['step'] if run['train'] else 0
    for entry in run['downstream']:
      flops = at_step(run['train'], 'flops', entry['step'] or last_step)
      if flops is not None:
        series.setdefault((entry['task'], entry['strategy'], run['arm']), []).append(
            (flops, entry['score']))
  if not series:
    return False
  tasks = sorted({(task, strategy) for task, strategy, _ in series})
  figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.2), squeeze=False)
  for axis, (task, strategy) in zip(axes.flat, tasks):
    for (t, s, arm), points in sorted(series.items()):
      if (t, s) == (task, strategy):
        points = sorted(points)
        axis.plot([p[0] for p in points], [p[1] for p in points], marker='o', label=arm)
    axis.set_title(f'{task} ({strategy})')
    axis.set_xlabel('pretraining FLOPs')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return True


SUMMARY_KEYS = ('bits_per_byte', 'perplexity', 'loss', 'accuracy')


def summary_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Markdown: per arm, mean ± std over seeds of the held-out metrics and the cost."""
  arms = list(dict.fromkeys(row['arm'] for row in rows))
  metrics = sorted({k for row in rows for k in row if '_' in k
                    and k.rsplit('_', 1)[-1] in ('loss', 'accuracy', 'perplexity')
                    or k.endswith('_bits_per_byte')},
                   key=lambda k: (k.split('_')[0], SUMMARY_KEYS.index(
                       next(s for s in SUMMARY_KEYS if k.endswith(s)))))
  columns = ['seeds', 'tokens', 'flops', 'real_tokens_per_sec', 'tokens_per_sec'] + metrics
  lines = ['| arm | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for arm in arms:
    mine = [row for row in rows if row['arm'] == arm]
    cells = [str(len(mine))]
    for key in columns[1:]:
      values = [row[key] for row in mine if key in row]
      if not values:
        cells.append('-')
        continue
      mean, std = mean_std(values)
      cell = _fmt(mean) if len(values) == 1 else f'{_fmt(mean)} ± {_fmt(std)}'
      if len(values) < len(mine):  # a seed without this number: say how many seeds it holds
        cell += f' ({len(values)} of {len(mine)} seeds)'
      cells.append(cell)
    lines.append(f'| {arm} | ' + ' | '.join(cells) + ' |')
  return lines


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
        for statistic in _ratio_stats(by_arm[first][0], part):
          result = bootstrap_difference(by_arm[first], by_arm[second], part, statistic)
          lines.append(f'| {second} − {first} | {part}_{statistic} | '
                       f'{result["difference"]:+.4f} | [{result["low"]:+.4f}, '
                       f'{result["high"]:+.4f}] | {"paired" if result["paired"] else "unpaired"}'
                       f' |')
  if not lines:
    return []
  return ['| arms | metric | difference | 95% CI | examples |', '|---|---|---|---|---|'] + lines


def write_report(root: str, out: str) -> dict[str, Any]:
  """Writes report.md, results.csv and the PNGs into `out`; returns what it wrote."""
  runs = find_runs(root)
  if not runs:
    raise ValueError(f'No run under {root}: a run is a directory with config.json and '
                     'metrics.jsonl (train one with tools/compare.py).')
  check_distinct(runs)
  os.makedirs(out, exist_ok=True)
  rows = write_csv(os.path.join(out, 'results.csv'), runs)
  plots = {}
  for name, make in (
      ('validation_vs_tokens.png', lambda p: plot_curves(p, runs, 'tokens')),
      ('validation_vs_flops.png', lambda p: plot_curves(p, runs, 'flops')),
      ('throughput.png', lambda p: plot_bars(
          p, rows, ('real_tokens_per_sec', 'tokens_per_sec', 'mfu'))),
      ('downstream_vs_flops.png', lambda p: plot_downstream(p, runs))):
    if make(os.path.join(out, name)):
      plots[name] = os.path.join(out, name)
  configs = {}
  for run in runs:
    configs.setdefault(run['arm'], run['config'])
  diff = config_diff(configs)
  loose = uncontrolled(diff, configs) + within_arm(runs)

  lines = [f'# Objective comparison: {root}', '',
           f'{len(runs)} runs: ' + ', '.join(f'{arm} (seeds {sorted(r["seed"] for r in runs if r["arm"] == arm)})'
                                             for arm in dict.fromkeys(r['arm'] for r in runs)),
           '', '## Held-out results (mean ± std over seeds)', '',
           'Std is the sample standard deviation over seeds (ddof=1); an arm with one seed '
           'shows its value alone. '
           'Exact pass over the validation split (tools/evaluate.py) where present, else the '
           'last evaluation in metrics.jsonl. Losses in nats per prediction; MLM at 15% token '
           'masking; tokens are non-padding training tokens seen.', '']
  lines += summary_table(rows)
  held_out = [_evaluation_of(run) for run in runs]
  short = [f'{run["name"]} ({where})' for run, where in zip(runs, held_out)
           if where != 'exact pass']
  if short:
    lines += ['', 'NOT AN EXACT PASS of the last checkpoint for: ' + ', '.join(short) + '. '
              'Run tools/evaluate.py on these workdirs.']
  diff_lines = differences(runs)
  if diff_lines:
    lines += ['', '## Differences between arms', '',
              f'Bootstrap over evaluation examples ({BOOTSTRAP_SAMPLES} resamples), seeds '
              'averaged; paired where both arms evaluated the same examples.', ''] + diff_lines
  lines += ['', '## Runs', '', '| arm | seed | workdir | step | tokens | flops | wall s | '
            'held-out numbers |', '|---|---|---|---|---|---|---|---|']
  lines += [f'| {row["arm"]} | {row["seed"]} | {row["workdir"]} | {row.get("step", "-")} | '
            f'{_fmt(row.get("tokens"))} | {_fmt(row.get("flops"))} | '
            f'{_fmt(row.get("wall_time"))} | {where} |'
            for row, where in zip(rows, held_out)]
  lines += ['', '## What differs between arms (resolved config)', '']
  if diff:
    arms = list(configs)
    lines += ['| setting | ' + ' | '.join(arms) + ' |', '|---' * (len(arms) + 1) + '|']
    lines += [f'| {key} | ' + ' | '.join(_fmt(values.get(arm, '-')) for arm in arms) + ' |'
              for key, values in diff.items()]
  else:
    lines.append('Nothing: every run has the same config.')
  lines.append('')
  lines.append('Only objective fields and the features they require differ.' if not loose else
               'NOT CONTROLLED: these settings differ beyond the objectives: ' + ', '.join(loose))
  if plots:
    lines += ['', '## Plots', ''] + [f'![{name}]({name})' for name in plots]
  with open(os.path.join(out, 'report.md'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return dict(runs=runs, rows=rows, plots=plots, diff=diff, uncontrolled=loose,
              report=os.path.join(out, 'report.md'))


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
