"""GLUE and SQuAD by TFDS name, for machines that have them prepared:
`glue/sst2`, `glue/rte`, `glue/mrpc`, `glue/qnli`, `glue/stsb`, `glue/cola` and `squad`.

Prepared datasets are read from `config.task.data_dir` (default: the project's TFDS cache)
without TensorFlow when they are in array_record format; a tfrecord-format dataset needs
TensorFlow installed. GLUE's test splits have no labels, so `test_split` is empty by default
and the dev split ('validation') is what GLUE papers report.
"""

from __future__ import annotations

import os
from typing import Any

from configs.task_sections import SECTIONS
from downstream.tasks import base
from downstream.tasks.registry import register

# name -> (kind, text field, pair field, label names, metrics, template, label words)
GLUE = {
    'glue/sst2': ('classification', 'sentence', '', ('negative', 'positive'), ('accuracy',),
                  '{text}\nSentiment:', (' negative', ' positive')),
    'glue/cola': ('classification', 'sentence', '', ('unacceptable', 'acceptable'),
                  ('matthews', 'accuracy'), '{text}\nGrammatical:', (' no', ' yes')),
    'glue/mrpc': ('classification', 'sentence1', 'sentence2', ('not_equivalent', 'equivalent'),
                  ('f1', 'accuracy'), '{text}\n{text_pair}\nSame meaning:', (' no', ' yes')),
    'glue/rte': ('classification', 'sentence1', 'sentence2', ('entailment', 'not_entailment'),
                 ('accuracy',), '{text}\nQuestion: {text_pair} True or False?\nAnswer:',
                 (' True', ' False')),
    'glue/qnli': ('classification', 'question', 'sentence', ('entailment', 'not_entailment'),
                  ('accuracy',), '{text}\n{text_pair}\nAnswered:', (' yes', ' no')),
    'glue/stsb': ('regression', 'sentence1', 'sentence2', (), ('pearson', 'spearman'), '', ()),
}


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_split(name: str, split: str, data_dir: str) -> list[dict[str, Any]]:
  """Records of a prepared TFDS split as dicts of numpy values."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from data.cache import cache_root  # pylint: disable=import-outside-toplevel

  directory = data_dir or os.path.join(cache_root(), 'tfds')
  try:
    builder = tfds.builder(name, data_dir=directory)
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise ValueError(f'TFDS dataset {name!r} is not prepared under {directory}: prepare it with '
                     f'`tfds build {name} --data_dir={directory} --file_format=array_record` '
                     'or set config.task.data_dir.') from error
  if not builder.is_prepared():
    raise ValueError(f'TFDS dataset {name!r} is not prepared under {directory}: run `tfds build '
                     f'{name} --data_dir={directory} --file_format=array_record`.')
  if split not in builder.info.splits:
    raise ValueError(f'TFDS dataset {name!r} has no split {split!r} (it has '
                     f'{sorted(builder.info.splits)}): fix config.task.*_split.')
  if builder.info.file_format.value == 'array_record':
    return list(builder.as_data_source(split=split))
  try:
    return list(tfds.as_numpy(builder.as_dataset(split=split)))
  except ImportError as error:
    raise ValueError(f'TFDS dataset {name!r} under {directory} is in tfrecord format, which '
                     'needs TensorFlow: install it or rebuild with --file_format=array_record.'
                     ) from error


def _splits(name: str, settings) -> dict[str, list[dict[str, Any]]]:
  return {split: read_split(name, settings[f'{split}_split'], settings['data_dir'])
          for split in ('train', 'validation', 'test') if settings[f'{split}_split']}


def _glue_factory(name: str):
  kind, text, pair, labels, metrics, template, words = GLUE[name]

  def make(settings) -> base.Task:
    splits = {}
    for split, records in _splits(name, settings).items():
      examples = []
      for record in records:
        example = {'text': _text(record[text])}
        if pair:
          example['text_pair'] = _text(record[pair])
        label = record['label']
        if kind == 'regression':
          example['label'] = float(label)
        elif int(label) < 0:
          continue  # GLUE's unlabelled test examples
        else:
          example['label'] = int(label)
        examples.append(example)
      splits[split] = examples
    return base.make_task(name, kind, splits, settings, label_names=labels, metrics=metrics,
                          pair=bool(pair), template=template, label_words=words)

  return make


for _name in GLUE:
  register(_name, defaults=SECTIONS.get(_name))(_glue_factory(_name))


@register('squad', defaults=SECTIONS['squad'])
def make_squad(settings) -> base.Task:
  splits = {}
  for split, records in _splits('squad', settings).items():
    splits[split] = [{
        'id': _text(record['id']), 'question': _text(record['question']),
        'context': _text(record['context']),
        'answers': [{'text': _text(t), 'start': int(s)} for t, s in
                    zip(record['answers']['text'], record['answers']['answer_start'])]}
                     for record in records]
  return base.make_task('squad', 'qa', splits, settings)
