"""Sweeps: modules whose `get_sweep()` returns a list of config overrides, one dict per run.

Keys are dotted config keys (`'optimizer.learning_rate'`); the key `'config'` names the config
file and preset (`'configs/clm.py:tiny'`). Build the list with `product` and `zip_`:

  product(config=['configs/clm.py:tiny', 'configs/mlm.py:tiny'],
          **{'optimizer.learning_rate': [1e-3, 3e-3]})
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

Run = dict[str, Any]


def product(*sweeps: Sequence[Run], **lists: Sequence[Any]) -> list[Run]:
  """Every combination: of the given sweeps (run lists), then of each keyword's values."""
  factors: list[list[Run]] = [list(sweep) for sweep in sweeps]
  factors += [[{key: value} for value in values] for key, values in lists.items()]
  runs = []
  for combination in itertools.product(*factors):
    merged: Run = {}
    for part in combination:
      merged.update(part)
    runs.append(merged)
  return runs


def zip_(**lists: Sequence[Any]) -> list[Run]:
  """Values taken together position by position; every list must have the same length."""
  lengths = {key: len(values) for key, values in lists.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'zip_ needs lists of one length, got {lengths}.')
  return [dict(zip(lists, values)) for values in zip(*lists.values())]
