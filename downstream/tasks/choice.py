"""Multiple choice from a local JSON lines file: a context and its own options per example.

  {"text": "The cat sat on the", "choices": [" mat", " moon"], "label": 0}

The zero-shot yardstick (downstream/zero_shot.py) scores each choice as a continuation of the
(templated) text. The file is mostly an evaluation set: of every ten examples in file order,
the first goes to train (demonstrations), the second to validation and the other eight to
test, so any file of two examples or more fills the splits a Task needs.
"""

from __future__ import annotations

from configs.task_sections import SECTIONS
from downstream.tasks import base, local
from downstream.tasks.registry import register


@register('multiple_choice', defaults=SECTIONS['multiple_choice'])
def make(settings) -> base.Task:
  path, setting = settings['file'], 'config.task.file'
  splits: dict[str, list[dict]] = {'train': [], 'validation': [], 'test': []}
  most = count = 0
  for number, record in local.read_numbered(path, setting):
    text = record.get(settings['text_field'])
    choices = record.get(settings['choices_field'])
    label = record.get(settings['label_field'])
    if not isinstance(text, str):
      raise ValueError(f'{path}:{number}: field {settings["text_field"]!r} must be a string.')
    if (not isinstance(choices, list) or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)):
      raise ValueError(f'{path}:{number}: field {settings["choices_field"]!r} must be a list of '
                       'two or more non-empty strings.')
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
      raise ValueError(f'{path}:{number}: field {settings["label_field"]!r} must be the index of '
                       f'the right choice (0..{len(choices) - 1}), got {label!r}.')
    example = {'text': text, 'choices': choices, 'label': label}
    if 'id' in record:
      example['id'] = str(record['id'])
    splits[('train', 'validation')[count % 10] if count % 10 < 2 else 'test'].append(example)
    count += 1
    most = max(most, len(choices))
  return base.make_task('multiple_choice', 'classification', splits, settings,
                        label_names=[str(i) for i in range(most)], metrics=('accuracy',),
                        template='{text}')
