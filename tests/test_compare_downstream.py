"""Downstream inside an objective comparison: scores collected per arm, seed and checkpoint
(comparison/results.py), the random-initialisation control, grid edges and resumption."""

from __future__ import annotations

import json
import os

import pytest

from comparison import results
from tests.helpers import finished_budget_run as _run, write_json as _write


def _finetune(workdir: str, step: int, test, *, control: bool = False) -> None:
  record = {
      'schema': 'downstream-results/2', 'mode': 'finetune', 'task': 'toy', 'strategy': 'full',
      'metric': 'accuracy', 'seeds': [0, 1], 'selected': {'learning_rate': 1e-3, 'epochs': 3},
      'grid': [{'learning_rate': lr, 'epochs': 3} for lr in (1e-4, 1e-3)],
      'test': {'accuracy': {'mean': sum(test) / 2, 'std': 0.0, 'values': list(test)}},
      'test_examples': {'ids': ['test:0', 'test:1', 'test:2', 'test:3'],
                        'scores': {'0': [1, 0, 1, 0], '1': [1, 1, 1, 0]}},
      'pretraining': {'step': step, 'no_pretraining': control}}
  _write(os.path.join(workdir, 'downstream', 'toy', 'full', f'step_{step}.json'), record)


def test_collect_reads_every_score_with_its_compute(tmp_path):
  root = str(tmp_path)
  clm = _run(root, 'clm_seed=0', 'clm', 0)
  nsp = _run(root, 'mlm_nsp_seed=1', {'mlm': 1.0, 'nsp': 1.0}, 1, 'sentence_pairs')
  _finetune(clm, 4, (0.5, 0.75))
  _finetune(clm, 8, (0.75, 1.0))
  _finetune(clm, 0, (0.25, 0.5), control=True)
  _write(os.path.join(nsp, 'zero_shot', 'toy', 'step_2.json'), {
      'schema': 'zero-shot/1', 'task': 'toy', 'split': 'test', 'step': 2, 'likelihood': 'sum',
      'metric': 'accuracy', 'accuracy': 0.5, 'accuracy_calibrated': 1.0, 'n': 2,
      'examples': [{'id': 'a', 'correct': True, 'correct_calibrated': 1},
                   {'id': 'b', 'correct': False, 'correct_calibrated': 1}]})
  # An older results.json (schema /1, no examples) is read as its pretraining step.
  _write(os.path.join(nsp, 'downstream', 'toy', 'linear_probe', 'results.json'), {
      'schema': 'downstream-results/1', 'mode': 'finetune', 'task': 'toy',
      'strategy': 'linear_probe', 'metric': 'accuracy', 'seeds': [3],
      'selected': {'learning_rate': 0.1, 'epochs': 3},
      'grid': [{'learning_rate': lr, 'epochs': 3} for lr in (0.01, 0.1)],
      'test': {'accuracy': {'mean': 0.6, 'std': 0.0, 'values': [0.6]}},
      'pretraining': {'step': 8}})

  scores = results.collect(root)

  by_key = {(s.arm, s.step, s.kind, s.strategy, s.finetune_seed): s for s in scores}
  assert len(scores) == 9
  full = by_key[('clm', 4, 'finetune', 'full', 1)]
  assert (full.pretrain_seed, full.fraction, full.tokens, full.flops, full.budget) == (
      0, 0.5, 3900, 4e9, 8000)  # tokens from the checkpoint's data state
  assert (full.score, full.example_scores) == (0.75, (1.0, 1.0, 1.0, 0.0))
  assert full.example_ids == ('test:0', 'test:1', 'test:2', 'test:3')
  assert full.grid_edge == ('learning_rate',)  # 1e-3 is the top of (1e-4, 1e-3); epochs: 1 value
  last = by_key[('clm', 8, 'finetune', 'full', 0)]
  assert (last.fraction, last.tokens, last.flops) == (1.0, 8000, 8e9)
  control = by_key[('no_pretraining:clm', 0, 'finetune', 'full', 0)]
  assert (control.fraction, control.tokens, control.flops, control.score) == (0.0, 0, 0.0, 0.25)
  zero = by_key[('mlm_nsp', 2, 'zero_shot', results.ZERO_SHOT_STRATEGY, 0)]
  # No data state at step 2: interpolated between the records of steps 1 and 3.
  assert (zero.fraction, zero.tokens, zero.example_scores, zero.selected) == (
      0.25, 2000, (1.0, 0.0), {'likelihood': 'sum'})
  calibrated = by_key[('mlm_nsp', 2, 'zero_shot', results.ZERO_SHOT_CALIBRATED, 0)]
  assert (calibrated.metric, calibrated.score, calibrated.example_scores) == (
      'accuracy_calibrated', 1.0, (1.0, 1.0))
  old = by_key[('mlm_nsp', 8, 'finetune', 'linear_probe', 3)]
  assert (old.score, old.example_ids, old.grid_edge, old.fraction) == (
      0.6, (), ('learning_rate',), 1.0)


def test_grid_edges_name_only_grids_with_several_values():
  grid = [{'learning_rate': lr, 'epochs': e} for lr in (1, 2, 3) for e in (5,)]
  assert results.grid_edges({'learning_rate': 2, 'epochs': 5}, grid) == ()
  assert results.grid_edges({'learning_rate': 1, 'epochs': 5}, grid) == ('learning_rate',)


def test_arm_of_names_the_comparison_arms():
  assert results.arm_of({'objective': 'mlm', 'data': {'format': 'sentence_pairs'}}) == 'mlm_pairs'
  assert results.arm_of({'objective': 'mlm', 'data': {'format': ''}}) == 'mlm'
  assert results.arm_of({'objective': {'mlm': 1.0, 'sop': 1.0},
                         'data': {'format': 'sentence_order_pairs'}}) == 'mlm_sop'
  assert results.arm_of({'objective': 'electra', 'data': {}}) == 'electra'


def test_plan_lists_each_kept_checkpoint_and_one_control_per_architecture(tmp_path):
  from comparison import downstream

  root = str(tmp_path)
  clm = _run(root, 'clm', 'clm', 0)
  nsp = _run(root, 'mlm_nsp', {'mlm': 1.0, 'nsp': 1.0}, 0, 'sentence_pairs')
  sop = _run(root, 'mlm_sop', {'mlm': 1.0, 'sop': 1.0}, 0, 'sentence_order_pairs')
  os.makedirs(os.path.join(clm, 'checkpoints', '9'))  # the budget's end, past the planned 8
  running = _run(root, 'plm', 'plm', 0)  # still training: nothing of it is scored yet
  _write(os.path.join(running, 'status.json'), {'state': 'running', 'step': 4})
  _write(os.path.join(nsp, 'status.json'), {'state': 'done', 'step': 8})
  settings = downstream.Settings(tasks=('toy',), zero_shot=('words',))
  kinds = {clm: 'causal', nsp: 'pairs', sop: 'pairs'}
  jobs, controls = downstream.plan([clm, nsp, sop, running], settings, architecture_of=kinds.get)
  assert controls == {'clm': ['clm'], 'mlm_nsp': ['mlm_nsp', 'mlm_sop']}
  found = [(os.path.basename(j.workdir), j.step, j.kind, j.control) for j in jobs]
  assert found == [
      ('clm', 0, 'finetune', True), ('clm', 2, 'finetune', False),
      ('clm', 4, 'finetune', False), ('clm', 9, 'finetune', False),
      ('mlm_nsp', 0, 'finetune', True), ('mlm_nsp', 2, 'finetune', False),
      ('mlm_nsp', 4, 'finetune', False), ('mlm_nsp', 8, 'finetune', False),
      ('mlm_sop', 2, 'finetune', False), ('mlm_sop', 4, 'finetune', False),
      ('mlm_sop', 8, 'finetune', False),
      ('clm', 2, 'zero_shot', False), ('clm', 4, 'zero_shot', False),
      ('clm', 9, 'zero_shot', False),
      ('mlm_nsp', 2, 'zero_shot', False), ('mlm_nsp', 4, 'zero_shot', False),
      ('mlm_nsp', 8, 'zero_shot', False),
      ('mlm_sop', 2, 'zero_shot', False), ('mlm_sop', 4, 'zero_shot', False),
      ('mlm_sop', 8, 'zero_shot', False)]
  assert jobs[0].path == os.path.join(clm, 'downstream', 'toy', 'full', 'step_0.json')
  assert jobs[11].path == os.path.join(clm, 'zero_shot', 'words', 'step_2.json')


def test_a_finished_score_is_never_run_again(tmp_path):
  from comparison import downstream

  clm = _run(str(tmp_path), 'clm', 'clm', 0)
  settings = downstream.Settings(tasks=('toy',), control=False)
  jobs, _ = downstream.plan([clm], settings, architecture_of=lambda w: 'one')
  _finetune(clm, 2, (0.5, 0.5))  # step 2 was scored before the run was killed
  ran = []
  original = downstream.run_job
  downstream.run_job = lambda job, settings, log: ran.append(job.step)
  try:
    assert downstream.run_all(jobs, settings, log=lambda line: None) == 2
  finally:
    downstream.run_job = original
  assert ran == [4, 8]
  # (The stand-in wrote nothing.) A second command scoring the same root writes step 8 while
  # this one runs step 4: the job is checked again when its turn comes and skipped.
  ran.clear()
  lines = []

  def run_and_race(job, settings, log):
    ran.append(job.step)
    if job.step == 4:
      _finetune(clm, 8, (0.5, 0.5))

  downstream.run_job = run_and_race
  try:
    assert downstream.run_all(jobs, settings, log=lines.append) == 1
  finally:
    downstream.run_job = original
  assert ran == [4] and lines[-1].endswith('| written meanwhile by another command')


def test_finetune_config_takes_the_recipe_and_only_the_task_keys_it_has():
  from comparison import downstream

  settings = downstream.Settings(
      tasks=('stdlib_package',), strategy='linear_probe',
      recipe={'learning_rates': (0.01, 0.1), 'pooling': 'mean', 'task.max_train_examples': 50},
      overrides=(('task.train_file', 'x.jsonl'), ('seeds', (0,))))
  job = downstream.Job('w', 'clm', 0, 0, 'stdlib_package', 'finetune', 'linear_probe', True)
  config = downstream.finetune_config(job, settings)
  assert (config.strategy, config.step, config.random_init, config.pooling) == (
      'linear_probe', -1, True, 'mean')
  assert (config.learning_rates, config.seeds, config.task.max_train_examples) == (
      (0.01, 0.1), (0,), 50)
  assert 'train_file' not in config.task  # a setting of local files only


def _topic_files(folder) -> dict[str, str]:
  """A two-topic task any checkpoint can learn from words: animals vs numbers."""
  words = {'animal': 'cat dog horse cow sheep goat bird fish'.split(),
           'number': 'one two three four five six seven eight'.split()}
  paths = {}
  for split, count in (('train', 48), ('dev', 16), ('test', 16)):
    path = os.path.join(str(folder), f'{split}.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
      for i in range(count):
        label = 'animal' if i % 2 else 'number'
        text = ' '.join(words[label][(i * 3 + k) % 8] for k in range(6))
        f.write(json.dumps({'text': text, 'label': label}) + '\n')
    paths[split] = path
  return paths


@pytest.mark.slow
def test_comparison_with_downstream_writes_the_headline_table(tmp_path, monkeypatch,
                                                               shared_cache):
  """Two arms trained for a few steps, fine-tuned on a tiny task beside their controls and
  reported: report.md opens with the arm x task table, controls included; a second run of the
  same command recomputes nothing."""
  from tests import helpers
  from tools import compare as compare_tool

  monkeypatch.setenv(helpers.TEST_CACHE_ENV, shared_cache)
  monkeypatch.setenv('XLA_FLAGS', helpers.FAST_COMPILE_FLAGS)  # train.py on one CPU device
  files = _topic_files(tmp_path)
  root = str(tmp_path / 'cmp')
  command = [
      '--root', root, '--arms', 'clm,mlm', '--seeds', '0', '--budgets', '1024',
      '--config.batch_size=4', '--config.seq_len=32', '--config.model.num_layers=1',
      '--config.model.embed_dim=32', '--config.model.mlp_dim=64', '--config.model.max_len=32',
      '--config.data.builtin_max_files=120', '--config.data.vocab_size=600',
      f'--config.data.data_dir={os.path.join(shared_cache, "tfds")}', '--config.eval_steps=0',
      '--config.log_every=4', '--downstream', 'local', '--downstream_fractions=1.0',
      f'--finetune.task.train_file={files["train"]}',
      f'--finetune.task.validation_file={files["dev"]}',
      f'--finetune.task.test_file={files["test"]}', '--finetune.learning_rates=(1e-2,)',
      '--finetune.epochs=(2,)', '--finetune.seeds=(0,)', '--finetune.seq_len=16',
      '--finetune.batch_size=16']
  assert compare_tool.main(command) == 0
  scores = results.collect(root)
  assert sorted(s.arm for s in scores) == ['clm', 'mlm', 'no_pretraining:clm',
                                           'no_pretraining:mlm']
  for score in scores:
    assert len(score.example_ids) == 16 and score.budget == 1024
    assert score.score == sum(score.example_scores) / 16
  with open(os.path.join(root, 'report.md'), encoding='utf-8') as f:
    report = f.read()
  table = report[report.index('## Downstream test scores'):]
  assert '| clm |' in table and '| no_pretraining:mlm |' in table
  written = {s.arm: os.path.getmtime(os.path.join(root, s.arm.split(':')[-1], 'downstream',
                                                  'local', 'full', f'step_{s.step}.json'))
             for s in scores}
  assert compare_tool.main([*command, '--mode', 'downstream']) == 0
  assert written == {s.arm: os.path.getmtime(os.path.join(
      root, s.arm.split(':')[-1], 'downstream', 'local', 'full', f'step_{s.step}.json'))
                     for s in results.collect(root)}
