"""A user's own labelled files: GLUE-style TSV (with a header row) or JSON lines, with
configurable text, text-pair and label fields.

  --config.task.name=local --config.task.train_file=train.tsv --config.task.validation_file=dev.tsv
  --config.task.text_field=sentence1 --config.task.text_pair_field=sentence2 --config.task.label_field=label

Classification labels are strings or integers; their names are `label_names` (comma-separated)
or else the sorted distinct training labels. Regression labels are numbers.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Any

from configs.task_sections import SECTIONS
from downstream.tasks import base
from downstream.tasks.registry import register


def read_records(path: str, setting: str) -> list[dict[str, Any]]:
  """Rows of a .tsv (header row names the fields) or .jsonl/.json (one object a line) file."""
  return [record for _, record in read_numbered(path, setting)]


def read_numbered(path: str, setting: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, record) of every row, so errors can point at the line to fix."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{setting}={path!r} does not exist: give a .tsv or .jsonl file.')
  with open(path, encoding='utf-8', newline='') as f:
    if path.endswith(('.jsonl', '.json')):
      return [(number, _json_object(line, path, number, setting))
              for number, line in enumerate(f, 1) if line.strip()]
    return _tsv_rows(f, path, setting)


def _json_object(line: str, path: str, number: int, setting: str) -> dict[str, Any]:
  """One JSONL line as an object; anything else is an error naming the line."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as error:
    raise ValueError(f'{path}:{number}: not a JSON object ({error.msg}); {setting} '
                     'must hold one JSON object a line.') from error
  if not isinstance(record, dict):
    raise ValueError(f'{path}:{number}: a JSON {type(record).__name__}, not an object; '
                     f'{setting} must hold one JSON object a line.')
  return record


def _tsv_rows(f, path: str, setting: str) -> list[tuple[int, dict[str, Any]]]:
  """Rows of a TSV with a header; a row whose columns do not match the header is an error."""
  csv.field_size_limit(sys.maxsize)
  reader = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
  rows = []
  for row in reader:
    header = reader.fieldnames or []
    missing = [name for name in header if row.get(name) is None]
    if missing:
      raise ValueError(f'{path}:{reader.line_num}: the row has no {missing[0]!r} column (it has '
                       f'{len(header) - len(missing)} of the header\'s {len(header)}); every '
                       f'row of {setting} needs one tab-separated value per header column.')
    if any(value.strip() for value in row.get(None, [])):
      raise ValueError(f'{path}:{reader.line_num}: the row has more columns than the header\'s '
                       f'{len(header)} (a tab inside a text?); fix that line of {setting}.')
    row.pop(None, None)
    rows.append((reader.line_num, row))
  return rows


def _field(record: dict[str, Any], field: str, path: str, number: int) -> Any:
  if field not in record:
    raise ValueError(f'{path}:{number}: the record has no field {field!r} (it has '
                     f'{sorted(record)}): set config.task.text_field / text_pair_field / '
                     'label_field.')
  return record[field]


def _text(record: dict[str, Any], field: str, path: str, number: int) -> str:
  """A text field: a string (numbers are written as text); null, lists and objects are errors."""
  value = _field(record, field, path, number)
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise ValueError(f'{path}:{number}: field {field!r} is {json.dumps(value)[:40]}, not a text: '
                     'fix the record or point config.task.text_field / text_pair_field at a '
                     'text field.')
  return str(value)


def _class_label(record: dict[str, Any], field: str, path: str, number: int) -> str:
  """A classification label as its name (a string or a number); null or empty is an error."""
  value = _field(record, field, path, number)
  if value is None or value == '' or isinstance(value, (list, dict)):
    raise ValueError(f'{path}:{number}: field {field!r} is {json.dumps(value)[:40]}, not a '
                     'label: give every record a string or integer label.')
  return str(value)


def _number_label(record: dict[str, Any], field: str, path: str, number: int) -> float:
  """A regression target: a finite number (or its text in a TSV)."""
  value = _field(record, field, path, number)
  try:
    target = float(value) if not isinstance(value, bool) else math.nan
  except (TypeError, ValueError):
    target = math.nan
  if not math.isfinite(target):
    raise ValueError(f'{path}:{number}: field {field!r} is {json.dumps(value)[:40]}, not a '
                     'finite number: config.task.kind=regression needs numeric labels '
                     '(or set config.task.kind=classification).')
  return target


def _example(settings, names: tuple[str, ...], path: str, number: int,
             record: dict[str, Any]) -> dict[str, Any]:
  """One record as an example: its text(s) and its label (an index, or a regression target)."""
  example = {'text': _text(record, settings['text_field'], path, number)}
  if settings['text_pair_field']:
    example['text_pair'] = _text(record, settings['text_pair_field'], path, number)
  if settings['kind'] == 'regression':
    example['label'] = _number_label(record, settings['label_field'], path, number)
    return example
  label = _class_label(record, settings['label_field'], path, number)
  if label not in names:
    raise ValueError(f'{path}:{number}: label {label!r} is not one of config.task.label_names '
                     f'{list(names)}.')
  example['label'] = names.index(label)
  return example


@register('local', defaults=SECTIONS['local'])
def make(settings) -> base.Task:
  kind = settings['kind']
  if kind not in ('classification', 'regression'):
    raise ValueError(f'config.task.kind must be classification or regression, got {kind!r} '
                     '(SQuAD files: config.task.name=squad_json).')
  if not settings['train_file'] or not settings['validation_file']:
    raise ValueError('config.task.name=local needs config.task.train_file and '
                     'config.task.validation_file.')
  raw = {}
  for split in ('train', 'validation', 'test'):
    path = settings[f'{split}_file']
    if path:
      raw[split] = (path, read_numbered(path, f'config.task.{split}_file'))
  names = base.parse_words(settings['label_names'])
  if kind == 'classification' and not names:
    path, records = raw['train']
    names = tuple(sorted({_class_label(r, settings['label_field'], path, n) for n, r in records}))
  splits = {split: [_example(settings, names, path, n, r) for n, r in records]
            for split, (path, records) in raw.items()}
  pair = bool(settings['text_pair_field'])
  return base.make_task(
      'local', kind, splits, settings, label_names=names,
      metrics=base.parse_words(settings['metrics']), pair=pair,
      template='{text}\n{text_pair}\nLabel:' if pair else '{text}\nLabel:',
      label_words=[f' {name}' for name in names])
