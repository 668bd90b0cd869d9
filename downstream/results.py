"""Where downstream results live and what they hold (schema in docs/downstream.md):
`<pretraining workdir>/downstream/<task>/<strategy>/results.json`, one file per task and
strategy (prompting: strategy `prompt_<k>shot`; instruction tuning: task `instruct`), so the
comparison report can read every run's scores beside its pretraining step and FLOPs.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
from typing import Any

SCHEMA = 'downstream-results/1'


def results_path(root: str, task: str, strategy: str) -> str:
  """root/<task>/<strategy>/results.json, with '/' in TFDS names ('glue/sst2') as '_'."""
  return os.path.join(root, task.replace('/', '_'), strategy, 'results.json')


def pretraining_fields(pre) -> dict[str, Any]:
  objective = pre.objective if isinstance(pre.objective, str) else dict(pre.objective)
  return {'workdir': os.path.abspath(pre.workdir), 'objective': objective, 'step': pre.step,
          'flops_per_step': pre.flops_per_step, 'flops': pre.flops, 'params': pre.param_count,
          'causal': pre.causal}


def hardware_fields() -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel

  return {'device_kind': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform,
          'date': datetime.date.today().isoformat()}


def write(path: str, record: dict[str, Any]) -> str:
  """Writes `record` (with the schema tag first) atomically; returns the path."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.tmp'
  with open(temporary, 'w', encoding='utf-8') as f:
    json.dump({'schema': SCHEMA, **record}, f, indent=2)
  os.replace(temporary, path)
  return path


def read_all(workdir: str) -> list[dict[str, Any]]:
  """Every results.json under `<workdir>/downstream`, for the comparison report."""
  records = []
  for path in sorted(glob.glob(os.path.join(workdir, 'downstream', '*', '*', 'results.json'))):
    with open(path, encoding='utf-8') as f:
      records.append(json.load(f))
  return records
