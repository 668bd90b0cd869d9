"""Where downstream results live and what they hold (schema in docs/downstream.md):
`<pretraining workdir>/downstream/<task>/<strategy>/step_<N>.json`, one file per task,
strategy and pretraining checkpoint step N (prompting: strategy `prompt_<k>shot`; instruction
tuning: task `instruct`; the random-initialisation control: step 0), with `results.json`
beside them a copy of the latest one written. Fine-tuning files hold each seed's per-example
test scores, so comparisons pair arms example by example. Files of schema
`downstream-results/1` (results.json only, no per-example scores) are still read.
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

SCHEMA = 'downstream-results/2'
LATEST = 'results.json'


def mean_std(values: Iterable[float], ddof: int = 1) -> tuple[float, float]:
  """Mean and standard deviation over seeds; (nan, nan) for no values, std 0 for one.

  ddof=1 (the default), the sample std, is what numbers reported across seeds use (the
  comparison's tables and plots, comparison/heldout.py). The `std` of a downstream results
  file's scores (`dev`, `test`; docs/downstream.md) is the population std, ddof=0, as it has
  always been, so that files written before and after compare.
  """
  values = [float(v) for v in values]
  if not values:
    return math.nan, math.nan
  std = float(np.std(values, ddof=ddof)) if len(values) > ddof else 0.0
  return float(np.mean(values)), std


def results_path(root: str, task: str, strategy: str, step: int | None = None) -> str:
  """root/<task>/<strategy>/results.json, or step_<step>.json given a checkpoint step, with
  '/' in TFDS names ('glue/sst2') as '_'."""
  name = LATEST if step is None else f'step_{int(step)}.json'
  return os.path.join(root, task.replace('/', '_'), strategy, name)


def pretraining_fields(pre, no_pretraining: bool = False) -> dict[str, Any]:
  """The checkpoint's run, step and compute; `no_pretraining`: the run's architecture from a
  random initialisation (step 0, no FLOPs), the control every checkpoint is compared with."""
  objective = pre.objective if isinstance(pre.objective, str) else dict(pre.objective)
  return {'workdir': os.path.abspath(pre.workdir), 'objective': objective, 'step': pre.step,
          'flops_per_step': pre.flops_per_step, 'flops': pre.flops, 'params': pre.param_count,
          'causal': pre.causal, 'no_pretraining': no_pretraining}


def hardware_fields() -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel

  return {'device_kind': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform,
          'date': datetime.date.today().isoformat()}


def _write_json(path: str, record: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.tmp'
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2)
  os.replace(temporary, path)


def write(path: str, record: dict[str, Any], step: int | None = None) -> str:
  """Writes `record` (with the schema tag first) atomically to `path` (a results.json) and,
  given the checkpoint `step`, to step_<step>.json beside it; returns `path`."""
  record = {'schema': SCHEMA, **record}
  if step is not None:
    _write_json(os.path.join(os.path.dirname(path), f'step_{int(step)}.json'), record)
  _write_json(path, record)
  return path


def grid_edges(selected: Mapping[str, Any], grid: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
  """Names of the selected hyper-parameters at the lowest or highest value of a grid that
  tried more than one value of them (the best may lie outside the grid)."""
  edges = []
  for name, value in selected.items():
    tried = sorted({point[name] for point in grid if name in point})
    if len(tried) > 1 and value in (tried[0], tried[-1]):
      edges.append(name)
  return tuple(sorted(edges))


def read_all(workdir: str) -> list[dict[str, Any]]:
  """Every result under `<workdir>/downstream`: each step file, and a results.json only
  where no step file is beside it (schema /1)."""
  records = []
  for folder in sorted(glob.glob(os.path.join(workdir, 'downstream', '*', '*'))):
    paths = sorted(glob.glob(os.path.join(folder, 'step_*.json')),
                   key=lambda p: int(os.path.basename(p)[5:-5]))
    if not paths and os.path.exists(os.path.join(folder, LATEST)):
      paths = [os.path.join(folder, LATEST)]
    for path in paths:
      with open(path, encoding='utf-8') as f:
        records.append(json.load(f))
  return records
