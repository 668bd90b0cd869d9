"""Numbers as text: markdown cells and results.csv (written exactly, read back as numbers)."""

from __future__ import annotations

import csv
import math
from typing import Any, Mapping, Sequence

from comparison.runs import final_metrics


def fmt(value: Any) -> str:
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
