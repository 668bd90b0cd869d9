"""tools/status.py on workdirs made here: every state, step of total, losses, speed, time left."""

from __future__ import annotations

import json
import os

from tools import status
from launching import record

NOW = 2_000_000_000.0


def make_run(root, name, *, total=100, steps=(), evals=(), launch=None, age=0.0, extra=None):
  """A workdir as train.py and the launcher leave it; files `age` seconds old."""
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  files = []
  if total:
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump({'total_steps': total, 'seed': 0}, f)
    files.append('config.json')
  if steps or evals:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'w', encoding='utf-8') as f:
      for step in steps:
        f.write(json.dumps({'step': step, 'split': 'train', 'loss': 10.0 / step,
                            'tokens_per_sec': 2000.0 * step, 'step_time': 0.5}) + '\n')
      for step, loss in evals:
        f.write(json.dumps({'step': step, 'split': 'eval', 'loss': loss}) + '\n')
      f.write('{"step": 99, "split": "tra')  # a torn last line is skipped
    files.append('metrics.jsonl')
  if launch is not None:
    data = dict({'name': name, 'config': 'configs/clm.py:tiny', 'overrides': {}, 'attempts': 1,
                 'preemptions': 0, 'failures': 0, 'updated': NOW - age - 1}, **launch)
    record.write(workdir, data)
  for name_, content in (extra or {}).items():
    with open(os.path.join(workdir, name_), 'w', encoding='utf-8') as f:
      json.dump(content, f)
    files.append(name_)
  for file in files:
    os.utime(os.path.join(workdir, file), (NOW - age, NOW - age))
  return workdir


def test_every_state_with_step_losses_speed_and_time_left(tmp_path):
  root = str(tmp_path)
  make_run(root, 'a_queued', total=0, launch={'state': 'queued', 'attempts': 0,
                                               'overrides': {'total_steps': 50}})
  make_run(root, 'b_running', steps=(10, 20), evals=((20, 3.25),), launch={'state': 'running'})
  make_run(root, 'c_requeued', steps=(10, 40), launch={'state': 'running', 'preemptions': 2,
                                                       'attempts': 3})
  make_run(root, 'd_waiting', steps=(10,), age=900, launch={
      'state': 'preempted', 'preemptions': 1, 'reason': 'slice po-1-1 SUSPENDED'})
  make_run(root, 'e_done', steps=(50, 100), evals=((100, 2.5),), age=7200)
  make_run(root, 'f_failed', steps=(10,), launch={
      'state': 'failed', 'failures': 4, 'reason': 'Cannot write metrics: No space left.'})
  make_run(root, 'g_by_hand', steps=(30,), age=60)          # no launcher record, fresh
  make_run(root, 'h_abandoned', steps=(30,), age=3 * 3600)  # no launcher record, stale
  make_run(root, 'i_slurm_restarted', steps=(60,), launch={'state': 'queued'}, age=-30)
  make_run(root, 'j_written', steps=(5,), age=5000, extra={'status.json': {
      'state': 'failed', 'reason': 'Non-finite loss at step 5.'}})
  os.makedirs(os.path.join(root, 'slurm'))  # not a run
  runs = status.find_runs(root)
  assert [os.path.basename(r) for r in runs] == ['a_queued', 'b_running', 'c_requeued',
                                                 'd_waiting', 'e_done', 'f_failed', 'g_by_hand',
                                                 'h_abandoned', 'i_slurm_restarted', 'j_written']
  got = {os.path.basename(r): status.read_run(r, now=NOW) for r in runs}
  assert {name: s.state for name, s in got.items()} == {
      'a_queued': 'queued', 'b_running': 'running', 'c_requeued': 'running',
      'd_waiting': 'preempted', 'e_done': 'done', 'f_failed': 'failed', 'g_by_hand': 'running',
      'h_abandoned': 'stopped', 'i_slurm_restarted': 'running', 'j_written': 'failed'}
  running = got['b_running']
  assert (running.step, running.total_steps, running.train_loss, running.eval_loss) == \
      (20, 100, 0.5, 3.25)
  assert (running.tokens_per_sec, running.seconds_left) == (40000.0, 40.0)  # 80 steps x 0.5 s
  assert got['a_queued'].total_steps == 50 and got['a_queued'].step == 0
  assert got['c_requeued'].state_text() == 'running, preempted and requeued 2x'
  assert got['d_waiting'].state_text() == 'preempted 1x, requeued'
  assert got['e_done'].seconds_left == 0.0 and got['f_failed'].seconds_left is None
  assert got['j_written'].reason == 'Non-finite loss at step 5.'
  lines = status.table(list(got.values()), now=NOW).splitlines()
  assert lines[0].split() == ['RUN', 'STATE', 'STEP', 'TRAIN', 'LOSS', 'EVAL', 'LOSS', 'TOK/S',
                              'LEFT', 'UPDATED']
  row = dict(zip(got, lines[1:]))
  assert row['b_running'].split() == ['b_running', 'running', '20/100', '0.5000', '3.2500',
                                      '40.0k', '0m40s', '0m00s', 'ago']
  assert row['f_failed'].endswith('(Cannot write metrics: No space left.)')
  assert row['d_waiting'].endswith('(slice po-1-1 SUSPENDED)')
  assert 'no progress for 3h00m' in row['h_abandoned']
  assert lines[-1] == ('10 runs: 1 done, 2 failed, 1 preempted, 1 queued, 4 running, 1 stopped')


def test_command_line_prints_a_table_or_json(tmp_path, capsys):
  make_run(str(tmp_path), 'seed=1', steps=(100,), evals=((100, 2.0),))
  assert status.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1].split()[:5] == ['seed=1', 'done', '100/100', '0.1000', '2.0000']
  assert status.main([str(tmp_path), '--json']) == 0
  (line,) = capsys.readouterr().out.splitlines()
  assert json.loads(line)['state'] == 'done' and json.loads(line)['eval_loss'] == 2.0
  assert status.main([str(tmp_path / 'seed=1')]) == 0  # one workdir
  assert 'seed=1' in capsys.readouterr().out
  assert status.main([str(tmp_path / 'missing')]) == 2
  assert 'does not exist' in capsys.readouterr().err


def test_a_budget_run_shows_the_steps_it_planned(tmp_path):
  """A token-budget run plans its steps from the budget (run.json), not config.total_steps."""
  make_run(str(tmp_path), 'budget', total=600, steps=(700,), extra={'run.json': {
      'total_steps': 733}}, age=5)
  [got] = [status.read_run(w, now=NOW) for w in status.find_runs(str(tmp_path))]
  assert (got.step, got.total_steps, got.seconds_left) == (700, 733, 33 * 0.5)
  assert '700/733' in status.table([got], now=NOW)
