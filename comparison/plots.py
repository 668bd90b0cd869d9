"""The report's PNGs: validation curves against tokens or FLOPs, throughput bars, and downstream
score against pretraining FLOPs with every arm on one axis per task."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from comparison.heldout import mean_std
from comparison.runs import at_step


def _save(figure: Any, unused_axes: Sequence[Any], path: str) -> bool:
  """Hides the grid's unused panels, writes the figure to `path` and frees it; True."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  for axis in unused_axes:
    axis.set_visible(False)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return True


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
  return _save(figure, list(axes.flat)[len(metrics):], path)


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
  return _save(figure, [], path)


def plot_downstream(path: str, curves: Mapping[str, Mapping[str, Sequence[Any]]]) -> bool:
  """Downstream score against pretraining FLOPs over the kept checkpoints: one axis per task
  and strategy with every arm on it (95% intervals as error bars); an arm's random-
  initialisation control, at 0 FLOPs, is a dashed line in the arm's colour. `curves`:
  label -> arm -> points with `flops`, `mean`, `low` and `high` (comparison/headline.py)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  if not curves:
    return False
  arms = list(dict.fromkeys(arm.split(':', 1)[-1] for panel in curves.values() for arm in panel))
  colours = {arm: f'C{i % 10}' for i, arm in enumerate(arms)}
  columns = min(3, len(curves))
  rows = math.ceil(len(curves) / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.6 * rows), squeeze=False)
  for axis, (label, panel) in zip(axes.flat, curves.items()):
    controls = False
    for arm, points in panel.items():
      if arm.startswith('no_pretraining'):
        axis.axhline(points[0].mean, linestyle='--', linewidth=1,
                     color=colours[arm.split(':', 1)[-1]])
        controls = True
        continue
      x = [p.flops for p in points]
      y = np.asarray([p.mean for p in points])
      error = [y - [p.low for p in points], np.asarray([p.high for p in points]) - y]
      axis.errorbar(x, y, yerr=error, marker='o', capsize=3, label=arm, color=colours[arm])
    if controls:
      axis.plot([], [], linestyle='--', color='grey', label='no pretraining (same colour)')
    axis.set_xscale('log')
    axis.set_title(label, fontsize=9)
    axis.set_xlabel('pretraining FLOPs')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6)
  return _save(figure, list(axes.flat)[len(curves):], path)
