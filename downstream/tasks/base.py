"""What a downstream task is: labelled examples per split, their kind, metrics and prompt.

Examples are plain dicts:
  - classification / regression: {'text': str, 'text_pair': str (pair tasks), 'label': int|float}
  - extractive QA: {'id': str, 'question': str, 'context': str,
                    'answers': [{'text': str, 'start': int}, ...]} (start: character offset)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

from data.sources.split import hash_fraction
from downstream import metrics as metrics_lib

KINDS = ('classification', 'regression', 'qa')
DEFAULT_METRICS = {'classification': ('accuracy',), 'regression': ('pearson', 'spearman'),
                   'qa': ('exact_match', 'f1')}


@dataclasses.dataclass
class Task:
  """A task's data and how it is scored; `metrics[0]` selects hyperparameters on the dev split."""

  name: str
  kind: str
  splits: dict[str, list[dict[str, Any]]]  # 'train', 'validation', optionally 'test'
  label_names: tuple[str, ...] = ()
  metrics: tuple[str, ...] = ()
  pair: bool = False
  template: str = ''  # prompting: e.g. '{text}\nTopic:'; the label word follows it
  label_words: tuple[str, ...] = ()  # one per label, e.g. (' earn', ' acq')

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'Task {self.name}: kind must be one of {KINDS}, got {self.kind!r}.')
    self.metrics = (tuple(m.strip() for m in self.metrics if m.strip())
                    or DEFAULT_METRICS[self.kind])
    self._check_metrics()
    for split in ('train', 'validation'):
      if not self.splits.get(split):
        raise ValueError(f'Task {self.name} has no {split} examples: check its files or settings.')
    if self.kind == 'classification' and len(self.label_names) < 2:
      raise ValueError(f'Task {self.name} has {len(self.label_names)} label(s); classification '
                       'needs at least 2.')
    if self.label_words and len(self.label_words) != len(self.label_names):
      raise ValueError(f'Task {self.name}: config.task.label_words has {len(self.label_words)} '
                       f'words for {len(self.label_names)} labels {list(self.label_names)}.')

  def _check_metrics(self) -> None:
    """Unknown metric names fail here, when the task is built, rather than after training."""
    known = metrics_lib.QA_METRICS if self.kind == 'qa' else tuple(metrics_lib.LABEL_METRICS)
    unknown = [name for name in self.metrics if name not in known]
    if unknown:
      raise ValueError(f'Task {self.name}: unknown metric {unknown[0]!r} (config.task.metrics): '
                       f'{self.kind} tasks are scored by {sorted(known)}.')

  @property
  def num_labels(self) -> int:
    return 1 if self.kind == 'regression' else len(self.label_names)

  @property
  def main_metric(self) -> str:
    return self.metrics[0]


def split_of(key: str, validation: float = 0.1, test: float = 0.1) -> str:
  """'validation', 'test' or 'train' by a hash of `key` (the unit that must not cross splits)."""
  value = hash_fraction(key)
  if value < validation:
    return 'validation'
  if value < validation + test:
    return 'test'
  return 'train'


def capped(examples: Sequence[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
  """The first `limit` examples (all when limit <= 0)."""
  return list(examples[:limit]) if limit > 0 else list(examples)


def parse_words(value: Any) -> tuple[str, ...]:
  """Label words from a comma-separated string or a sequence ('' -> none)."""
  if not value:
    return ()
  if isinstance(value, str):
    return tuple(value.split(','))
  return tuple(str(v) for v in value)


def make_task(name: str, kind: str, splits: dict[str, list[dict[str, Any]]],
              settings: dict[str, Any], *, label_names: Sequence[str] = (),
              metrics: Sequence[str] = (), pair: bool = False, template: str = '',
              label_words: Sequence[str] = ()) -> Task:
  """A Task with the common settings applied: example caps, template and label-word overrides."""
  for key in ('max_train_examples', 'max_eval_examples'):
    value = settings.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
      raise ValueError(f'config.task.{key} must be 0 (all examples) or a positive cap, '
                       f'got {value!r}.')
  capped_splits = {}
  for split, examples in splits.items():
    limit = settings.get('max_train_examples', 0) if split == 'train' else \
        settings.get('max_eval_examples', 0)
    if examples:
      capped_splits[split] = capped(examples, limit)
  words = parse_words(settings.get('label_words')) or tuple(label_words)
  return Task(name=name, kind=kind, splits=capped_splits, label_names=tuple(label_names),
              metrics=tuple(metrics), pair=pair, template=settings.get('template') or template,
              label_words=words)
