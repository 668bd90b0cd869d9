"""The zero-shot yardstick: options ranked by the scorer's sums (and per-byte means), stable
example ids, the result file's schema and atomic round trip, and one real pretraining run."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from downstream import likelihood, zero_shot
from downstream.tasks.base import Task

from tests import downstream_helpers as helpers


class _FixedScorer:
  """A Scorer stand-in whose log-probability of a continuation is a fixed table's."""

  rule = 'exact'

  def __init__(self, table):
    self.table = table
    self.requests = []

  def fit(self, context, continuation):
    return list(context)[-4:]

  def score(self, requests, batch_size=32):
    self.requests += list(requests)
    return [likelihood.Scored(self.table[tuple(cont)], False, len(cont)) for _, cont in requests]


class _CharTokenizer:
  """One id per character (the option pieces are then exactly the option's characters)."""

  def encode(self, text):
    return [ord(c) for c in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def _task(examples, label_words=()):
  return Task(name='toy', kind='classification', label_names=('a', 'b', 'c'),
              splits={'train': examples, 'validation': examples, 'test': examples},
              template='{text} ->', label_words=tuple(label_words))


def test_options_rank_by_sum_and_by_bytes():
  """' x' (2 bytes, -1.0) beats ' yyyy' (5 bytes, -2.0) by the sum, loses per byte (-0.5 vs
  -0.4); every option of one example follows the very same context tokens."""
  tokenizer = _CharTokenizer()
  table = {tuple(tokenizer.encode(' x')): -1.0, tuple(tokenizer.encode(' yyyy')): -2.0,
           tuple(tokenizer.encode(' z')): -5.0}
  scorer = _FixedScorer(table)
  examples = [{'text': 'first', 'label': 0}, {'text': 'second', 'label': 1}]
  plain, normed, _ = zero_shot.rank(scorer, tokenizer, _task(examples, [' x', ' yyyy', ' z']),
                                    examples)
  assert plain.tolist() == [0, 0] and normed.tolist() == [1, 1]
  contexts = [tuple(context) for context, _ in scorer.requests]
  assert contexts == [tuple(tokenizer.encode('first ->'))[-4:]] * 3 + [
      tuple(tokenizer.encode('second ->'))[-4:]] * 3 + [  # the content-free input, once
          tuple(tokenizer.encode('N/A ->'))[-4:]] * 3
  # Multiple choice: each example's own options.
  examples = [{'text': 'q', 'choices': [' z', ' x'], 'label': 1}]
  plain, _, _ = zero_shot.rank(_FixedScorer(table), tokenizer, _task(examples), examples)
  assert plain.tolist() == [1]


class _ContextScorer(_FixedScorer):
  """log P(option | context) from a table keyed by (context text, option text)."""

  def fit(self, context, continuation):
    return list(context)

  def score(self, requests, batch_size=32):
    self.requests += list(requests)
    return [likelihood.Scored(self.table[(''.join(map(chr, ctx)), ''.join(map(chr, cont)))],
                              False, len(cont)) for ctx, cont in requests]


def test_calibrated_rank_subtracts_the_options_log_probability_after_the_content_free_input():
  """Prior after 'N/A ->': ' a' -1, ' b' -3. 'x': -1.5 vs -2.0, so ' a' by the sum but ' b' once
  calibrated (-0.5 vs +1.0); 'y': -0.5 vs -3.5, ' a' both ways (+0.5 vs -0.5)."""
  table = {('N/A ->', ' a'): -1.0, ('N/A ->', ' b'): -3.0, ('x ->', ' a'): -1.5,
           ('x ->', ' b'): -2.0, ('y ->', ' a'): -0.5, ('y ->', ' b'): -3.5,
           ('N/A ->', ' c'): -1.0, ('x ->', ' c'): -9.0, ('y ->', ' c'): -9.0}
  scorer = _ContextScorer(table)
  examples = [{'text': 'x', 'label': 1}, {'text': 'y', 'label': 0}]
  ranking = zero_shot.rank(scorer, _CharTokenizer(), _task(examples, [' a', ' b', ' c']), examples)
  assert ranking.plain.tolist() == [0, 0] and ranking.calibrated.tolist() == [1, 0]
  assert len(scorer.requests) == 9  # 2 examples x 3 options, then the shared prior once
  example = {'text': 'p', 'text_pair': 'q', 'label': 0}
  pair = Task(name='toy', kind='classification', label_names=('a', 'b'),
              splits={s: [example] for s in ('train', 'validation', 'test')},
              template='{text} | {text_pair} ->')
  assert zero_shot.content_free(pair, example) == 'N/A | N/A ->'


def test_example_ids_are_stable_and_unique():
  examples = [{'text': 'a', 'label': 0}, {'text': 'b', 'label': 1}, {'text': 'a', 'label': 0},
              {'text': 'c', 'label': 0, 'id': 'own'}]
  ids = zero_shot.example_ids(examples, 'test')
  assert ids == zero_shot.example_ids([dict(e) for e in examples], 'test')
  assert len(set(ids)) == 4 and ids[2] == ids[0] + '-1' and ids[3] == 'own'


def test_tasks_without_options_are_refused_before_any_checkpoint(tmp_path):
  with pytest.raises(ValueError, match='no label words'):
    zero_shot.check_task(_task([{'text': 'a', 'label': 0}]), 'test')
  with pytest.raises(ValueError, match="split='dev' is not a split"):
    zero_shot.check_task(_task([{'text': 'a', 'label': 0}], ['x', 'y', 'z']), 'dev')
  path = _choice_file(tmp_path / 'choice.jsonl')
  with pytest.raises(ValueError, match='does not exist'):
    zero_shot.score_workdir(str(tmp_path / 'missing'), 'multiple_choice',
                            task_overrides={'file': path})


def _choice_file(path, count=40):
  """Multiple-choice examples whose right option repeats the context's last word."""
  words = helpers.WORDS[0] + helpers.WORDS[1]
  records = []
  for i in range(count):
    word, other = words[i % len(words)], words[(i * 7 + 3) % len(words)]
    other = other if other != word else words[(i + 1) % len(words)]
    label = i % 2
    choices = [f' {other}', f' {word}'] if label else [f' {word}', f' {other}']
    records.append({'text': f'{word} {word} {word}', 'choices': choices, 'label': label})
  return helpers.write_jsonl(str(path), records)


def test_result_round_trip_is_atomic_and_sorted(tmp_path, monkeypatch):
  """score_workdir's dict (schema, counts, per-example ids) written under zero_shot/<task>/
  and read back; a failing write leaves no file."""
  path = _choice_file(tmp_path / 'choice.jsonl')
  fake = types.SimpleNamespace(step=7, objective='clm', tokenizer=_CharTokenizer())
  table = {}
  monkeypatch.setattr(likelihood, 'load', lambda workdir, step: (_Echo(table), fake))
  result = zero_shot.score_workdir(str(tmp_path), 'multiple_choice', limit=5,
                                   task_overrides={'file': path})
  assert result['schema'] == 'zero-shot/1' and result['step'] == 7 and result['n'] == 5
  assert result['likelihood'] == 'exact' and result['metric'] == 'accuracy'
  assert result['accuracy'] == 1.0 == result['accuracy_norm']  # _Echo prefers the repeat
  assert result['content_free'] == 'N/A'
  assert [set(e) for e in result['examples']] == [
      {'id', 'correct', 'correct_norm', 'correct_calibrated'}] * 5
  written = zero_shot.write_result(str(tmp_path), dict(result, task='a/b'))
  assert written == os.path.join(str(tmp_path), 'zero_shot', 'a_b', 'step_7.json')
  zero_shot.write_result(str(tmp_path), dict(result, step=3))
  assert [(r['task'], r['step']) for r in zero_shot.read_results(str(tmp_path))] == [
      ('a/b', 7), ('multiple_choice', 3)]
  with pytest.raises(TypeError):
    zero_shot.write_result(str(tmp_path), dict(result, step=9, bad=object()))
  assert sorted(os.listdir(tmp_path / 'zero_shot' / 'multiple_choice')) == ['step_3.json']


class _Echo(_FixedScorer):
  """Scores an option 0 when its characters end the context, else -1."""

  def score(self, requests, batch_size=32):
    return [likelihood.Scored(0.0 if ctx[-len(cont) + 1:] == cont[1:] else -1.0, False,
                              len(cont)) for ctx, cont in requests]

  def fit(self, context, continuation):
    return list(context)


@pytest.mark.slow
def test_score_workdir_on_a_pretraining_run(tmp_path, monkeypatch):
  """A real 4-step causal run: the result's counts are exact and equal a direct rank()."""
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', str(tmp_path / 'cache'))
  workdir = helpers.pretrain(str(tmp_path / 'clm'), 'clm',
                             helpers.pretraining_corpus(str(tmp_path / 'corpus.jsonl')))
  path = _choice_file(tmp_path / 'choice.jsonl')
  result = zero_shot.score_workdir(workdir, 'multiple_choice', task_overrides={'file': path},
                                   batch_size=8)
  task = zero_shot.registry.build({'name': 'multiple_choice', 'file': path})
  assert result['n'] == len(task.splits['test']) and result['step'] == helpers.PRETRAIN_STEPS
  scorer, pretrained = likelihood.load(workdir, None)
  plain, normed, calibrated = zero_shot.rank(scorer, pretrained.tokenizer, task,
                                             task.splits['test'])
  labels = np.asarray([e['label'] for e in task.splits['test']])
  assert [e['correct'] for e in result['examples']] == (plain == labels).astype(int).tolist()
  assert result['accuracy_norm'] == float((normed == labels).mean())
  assert result['accuracy_calibrated'] == float((calibrated == labels).mean())
  with open(zero_shot.write_result(workdir, result), encoding='utf-8') as f:
    assert json.load(f)['examples'] == result['examples']
