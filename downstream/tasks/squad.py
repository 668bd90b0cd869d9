"""Extractive QA from SQuAD-format JSON files (v1.1: data -> paragraphs -> qas -> answers)."""

from __future__ import annotations

import json
import os
from typing import Any

from configs.task_sections import SECTIONS
from downstream.tasks import base
from downstream.tasks.registry import register


def read_squad(path: str, setting: str) -> list[dict[str, Any]]:
  """Every question of a SQuAD JSON file as a QA example (questions without answers skipped)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{setting}={path!r} does not exist: give a SQuAD-format .json file.')
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f'{path}: not JSON ({error.msg} at line {error.lineno}); {setting} must '
                       'be a SQuAD-format file.') from error
  if not isinstance(data, dict) or 'data' not in data:
    raise ValueError(f'{path} has no top-level "data" list: {setting} must be SQuAD-format JSON.')
  examples = []
  for article in data['data']:
    for paragraph in article.get('paragraphs', []):
      context = paragraph['context']
      for qa in paragraph.get('qas', []):
        answers = [{'text': a['text'], 'start': int(a['answer_start'])}
                   for a in qa.get('answers', [])]
        if answers:
          examples.append({'id': str(qa.get('id', len(examples))), 'question': qa['question'],
                           'context': context, 'answers': answers})
  return examples


@register('squad_json', defaults=SECTIONS['squad_json'])
def make(settings) -> base.Task:
  if not settings['train_file'] or not settings['validation_file']:
    raise ValueError('config.task.name=squad_json needs config.task.train_file and '
                     'config.task.validation_file.')
  splits = {split: read_squad(settings[f'{split}_file'], f'config.task.{split}_file')
            for split in ('train', 'validation', 'test') if settings[f'{split}_file']}
  return base.make_task('squad_json', 'qa', splits, settings)
