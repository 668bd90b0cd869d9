"""Zero-shot yardstick: rank a task's options by the run's own likelihood, no training.

Each example becomes a context (the task's template filled with it, downstream/prompting.py)
and options: the task's label words (classification), or the example's own `choices`
(multiple choice, downstream/tasks/choice.py). Every option is scored as a continuation of
the same context by the rule of the run's objective (downstream/likelihood.py); the
prediction is the option of highest summed log-probability (`accuracy`, the main number),
of highest log-probability per UTF-8 byte of the option's text (`accuracy_norm`, as the
harness's acc_norm), and of highest log-probability less the option's log-probability after
a content-free input, the text replaced by 'N/A' (`accuracy_calibrated`: contextual
calibration, Zhao et al. 2021, as a difference of log-probabilities, i.e. PMI with a
content-free premise, Holtzman et al. 2021). Calibration removes each option's prior, so a
small model that names the same option for every input scores by what the input adds. No
hyper-parameter is involved, so every arm is measured the same way.
Example ids are hashes of the example's text, so the same example has the same id in every
arm and arms can be paired.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from typing import Any, NamedTuple, Sequence

import numpy as np

from downstream import likelihood, prompting
from downstream.tasks import registry
from downstream.tasks.base import Task

SCHEMA = 'zero-shot/1'
CONTENT_FREE = 'N/A'  # the calibration input (Zhao et al. 2021)


class Ranking(NamedTuple):
  """The predicted option per example under each of the three rules."""
  plain: np.ndarray  # highest summed log-probability
  normed: np.ndarray  # highest log-probability per byte
  calibrated: np.ndarray  # highest log-probability less that after the content-free input


def options_of(task: Task, example: dict[str, Any]) -> tuple[str, list[str]]:
  """(context text, option texts) of one example."""
  context = prompting.fill(task.template, example) if task.template else example.get('text', '')
  return context, option_texts(task, example)


def content_free(task: Task, example: dict[str, Any]) -> str:
  """The example's context with its text (and pair) replaced by CONTENT_FREE."""
  blank = {'text': CONTENT_FREE, 'text_pair': CONTENT_FREE if 'text_pair' in example else ''}
  return prompting.fill(task.template, blank) if task.template else CONTENT_FREE


def option_texts(task: Task, example: dict[str, Any]) -> list[str]:
  """The example's own choices, else the task's label words."""
  if 'choices' in example:
    return [str(c) for c in example['choices']]
  return list(task.label_words)


def check_task(task: Task, split: str) -> None:
  """One-line errors for a task the yardstick cannot rank, before any checkpoint is read."""
  if task.kind != 'classification':
    raise ValueError(f'Zero-shot ranking needs a classification or multiple-choice task; '
                     f'{task.name} is {task.kind}.')
  if split not in task.splits:
    raise ValueError(f'split={split!r} is not a split of task {task.name} '
                     f'({sorted(task.splits)}).')
  examples = task.splits[split]
  if not task.label_words and not all('choices' in e for e in examples):
    raise ValueError(f'Task {task.name} has no label words and its examples no choices: set '
                     'task_overrides={"label_words": " word1, word2"}.')


def example_ids(examples: Sequence[dict[str, Any]], split: str) -> list[str]:
  """A stable id per example: its own 'id', else a hash of its text, pair, choices and label
  (a repeated example gets a '-k' suffix in order)."""
  ids, seen = [], {}
  for example in examples:
    if 'id' in example:
      key = str(example['id'])
    else:
      content = json.dumps([example.get('text', ''), example.get('text_pair', ''),
                            example.get('choices'), example.get('label')], sort_keys=True)
      key = f'{split}-{hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]}'
    seen[key] = seen.get(key, 0) + 1
    ids.append(key if seen[key] == 1 else f'{key}-{seen[key] - 1}')
  return ids


def requests_for(scorer: likelihood.Scorer, tokenizer, context: str,
                 options: Sequence[str]) -> list[tuple[list[int], list[int]]]:
  """(context ids, option ids) per option: each option's pieces as they follow the context,
  after the very same context tokens (cut from the left to make room for the longest)."""
  context_ids = tokenizer.encode(context)
  joints = tokenizer.encode_batch([context + option for option in options])
  pieces = [prompting.continuation_ids(context_ids, joint, prompting.word_ids(tokenizer, option))
            for option, joint in zip(options, joints)]
  kept = scorer.fit(context_ids, max(pieces, key=len))
  return [(kept, piece) for piece in pieces]


def rank(scorer: likelihood.Scorer, tokenizer, task: Task, examples: Sequence[dict[str, Any]],
         *, batch_size: int = 32) -> Ranking:
  """The predicted option per example by summed log-probability, per byte, and calibrated.
  The content-free requests of one (context, options) pair, shared by every example of a
  label-word task, are built and scored once."""
  requests, spans, sizes, priors = [], [], [], []
  blank_start: dict[tuple[str, tuple[str, ...]], int] = {}  # -> its first blank request
  blank_requests: list[tuple[list[int], list[int]]] = []
  for example in examples:
    context, options = options_of(task, example)
    spans.append((len(requests), len(options)))
    requests += requests_for(scorer, tokenizer, context, options)
    sizes += [max(len(option.encode('utf-8')), 1) for option in options]
    blank = (content_free(task, example), tuple(options))
    if blank not in blank_start:
      blank_start[blank] = len(blank_requests)
      blank_requests += requests_for(scorer, tokenizer, blank[0], options)
    priors += range(blank_start[blank], blank_start[blank] + len(options))
  scored = scorer.score(requests + blank_requests, batch_size=batch_size)
  every = np.asarray([r.logprob for r in scored])
  scores, blank_scores = every[:len(requests)], every[len(requests):]
  per_byte = scores / np.asarray(sizes, np.float64)
  calibrated = scores - blank_scores[np.asarray(priors, np.int64)]

  def best(values: np.ndarray) -> np.ndarray:
    return np.asarray([int(np.argmax(values[a:a + n])) for a, n in spans])

  return Ranking(best(scores), best(per_byte), best(calibrated))


def score_workdir(workdir: str, task: str, *, step: int | None = None, split: str = 'test',
                  limit: int | None = None, batch_size: int = 32,
                  task_overrides: dict | None = None) -> dict:
  """The zero-shot accuracy of `workdir`'s checkpoint at `step` (None: latest) on `task`."""
  if limit is not None and limit < 1:
    raise ValueError(f'limit={limit} must be a positive number of examples (or None for all).')
  built = registry.build({'name': task, **dict(task_overrides or {})})
  check_task(built, split)
  examples = built.splits[split][:limit] if limit else built.splits[split]
  scorer, pretrained = likelihood.load(workdir, step)
  ranking = rank(scorer, pretrained.tokenizer, built, examples, batch_size=batch_size)
  labels = np.asarray([int(e['label']) for e in examples])
  correct, correct_norm, correct_calibrated = (ranking.plain == labels, ranking.normed == labels,
                                               ranking.calibrated == labels)
  return {'schema': SCHEMA, 'task': task, 'split': split, 'step': pretrained.step,
          'objective': pretrained.objective, 'likelihood': scorer.rule, 'metric': 'accuracy',
          'accuracy': float(correct.mean()), 'accuracy_norm': float(correct_norm.mean()),
          'accuracy_calibrated': float(correct_calibrated.mean()),
          'content_free': CONTENT_FREE, 'n': len(examples),
          'examples': [{'id': i, 'correct': int(c), 'correct_norm': int(n),
                        'correct_calibrated': int(k)}
                       for i, c, n, k in zip(example_ids(examples, split), correct, correct_norm,
                                             correct_calibrated)]}


def result_path(workdir: str, task: str, step: int) -> str:
  return os.path.join(workdir, 'zero_shot', task.replace('/', '_'), f'step_{step}.json')


def write_result(workdir: str, result: dict) -> str:
  """Writes `result` atomically to <workdir>/zero_shot/<task>/step_<N>.json; returns the path."""
  path = result_path(workdir, result['task'], int(result['step']))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
  try:
    with os.fdopen(handle, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  return path


def read_results(workdir: str) -> list[dict]:
  """Every zero-shot result written for `workdir`, ordered by task then step."""
  results = []
  for path in glob.glob(os.path.join(workdir, 'zero_shot', '*', 'step_*.json')):
    with open(path, encoding='utf-8') as f:
      result = json.load(f)
    if result.get('schema') == SCHEMA:
      results.append(result)
  return sorted(results, key=lambda r: (r['task'], r['step']))
