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
import os
import sys
from typing import Any

from downstream.tasks import base
from downstream.tasks.registry import register

DEFAULTS = dict(
    train_file='', validation_file='', test_file='',
    text_field='text', text_pair_field='', label_field='label',
    kind='classification',  # classification | regression
    label_names='',  # comma-separated; '' = the sorted distinct labels of the train file
    metrics='',  # comma-separated; '' = accuracy (classification) or pearson,spearman
)


def read_records(path: str, setting: str) -> list[dict[str, Any]]:
  """Rows of a .tsv (header row names the fields) or .jsonl/.json (one object a line) file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{setting}={path!r} does not exist: give a .tsv or .jsonl file.')
  with open(path, encoding='utf-8', newline='') as f:
    if path.endswith(('.jsonl', '.json')):
      records = []
      for number, line in enumerate(f, 1):
        if line.strip():
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError as error:
            raise ValueError(f'{path}:{number}: not a JSON object ({error.msg}); {setting} '
                             'must hold one JSON object a line.') from error
      return records
    csv.field_size_limit(sys.maxsize)
    return list(csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE))


def _field(record: dict[str, Any], field: str, path: str, number: int) -> Any:
  if field not in record:
    raise ValueError(f'{path}: record {number} has no field {field!r} (it has {sorted(record)}): '
                     'set config.task.text_field / text_pair_field / label_field.')
  return record[field]


@register('local', defaults=DEFAULTS)
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
      raw[split] = (path, read_records(path, f'config.task.{split}_file'))
  names = base.parse_words(settings['label_names'])
  if kind == 'classification' and not names:
    names = tuple(sorted({str(_field(r, settings['label_field'], raw['train'][0], i))
                          for i, r in enumerate(raw['train'][1], 1)}))
  index = {name: i for i, name in enumerate(names)}
  splits = {}
  for split, (path, records) in raw.items():
    examples = []
    for number, record in enumerate(records, 1):
      example = {'text': str(_field(record, settings['text_field'], path, number))}
      if settings['text_pair_field']:
        example['text_pair'] = str(_field(record, settings['text_pair_field'], path, number))
      label = _field(record, settings['label_field'], path, number)
      if kind == 'regression':
        example['label'] = float(label)
      else:
        if str(label) not in index:
          raise ValueError(f'{path}: record {number} has label {label!r}, not one of '
                           f'config.task.label_names {list(names)}.')
        example['label'] = index[str(label)]
      examples.append(example)
    splits[split] = examples
  pair = bool(settings['text_pair_field'])
  return base.make_task(
      'local', kind, splits, settings, label_names=names,
      metrics=base.parse_words(settings['metrics']), pair=pair,
      template='{text}\n{text_pair}\nLabel:' if pair else '{text}\nLabel:',
      label_words=[f' {name}' for name in names])
