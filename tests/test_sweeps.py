"""Sweep expansion, run names from the keys that vary, and what tools/launch.py prints or runs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from configs.sweeps import objectives, product, zip_
from launching import record, sweep as sweep_lib
from tools import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, 'configs', 'sweeps', 'objectives.py')


def test_product_and_zip():
  assert product(a=[1, 2], b=['x']) == [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
  assert zip_(a=[1, 2], b=[3, 4]) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  assert product(zip_(a=[1, 2], b=[3, 4]), c=[5]) == [{'a': 1, 'b': 3, 'c': 5},
                                                     {'a': 2, 'b': 4, 'c': 5}]
  with pytest.raises(ValueError, match='one length'):
    zip_(a=[1], b=[1, 2])


def test_objectives_sweep_names_runs_from_the_keys_that_vary():
  runs = sweep_lib.expand(objectives.get_sweep(), 'runs/sweep')
  assert len(runs) == 3 * 2 * 2
  assert {run.config for run in runs} == {'configs/clm.py:tiny', 'configs/mlm.py:tiny',
                                          'configs/plm.py:tiny'}
  first = runs[0]
  # '-tiny' is common to every config and the key prefixes are left out.
  assert first.name == 'clm_num_layers=2_embed_dim=128_learning_rate=0.001'
  assert first.overrides == (('model.num_layers', 2), ('model.embed_dim', 128),
                             ('optimizer.learning_rate', 0.001))
  assert first.workdir == os.path.join('runs/sweep', first.name)
  assert len({run.name for run in runs}) == len(runs)
  assert [run.name for run in sweep_lib.expand(objectives.get_sweep(), 'r')] == \
      [run.name for run in runs]  # deterministic
  assert all(sweep_lib.MAX_NAME_CHARS >= len(run.name) for run in runs)


def test_names_leave_out_what_every_run_shares():
  files = sweep_lib.expand(product(config=['configs/clm.py:tiny'], **{
      'data.source': ['text'], 'data.validation_files': ['/data/valid.txt'],
      'data.train_files': ['/data/wikitext-2/train.txt', '/data/wikitext-103/train.txt']}), 'r')
  assert [run.name for run in files] == ['train_files=wikitext-2', 'train_files=wikitext-103']
  assert files[1].overrides[-1] == ('data.train_files', '/data/wikitext-103/train.txt')
  # Two varying keys with one last part keep their full names; a dict value stays readable.
  clash = sweep_lib.run_names([{'config': 'c.py', 'a.seed': 1, 'b.seed': 2},
                            {'config': 'c.py', 'a.seed': 3, 'b.seed': 4}])
  assert clash == ['a.seed=1_b.seed=2', 'a.seed=3_b.seed=4']
  mixed = sweep_lib.run_names([{'config': 'configs/compare.py:mlm_nsp:tiny', 'objective': {
      'mlm': 1.0, 'nsp': 1.0}}, {'config': 'configs/compare.py:clm:tiny', 'objective': 'clm'}])
  assert mixed == ['mlm_nsp_objective=mlm1.0+nsp1.0', 'clm_objective=clm']
  assert sweep_lib.run_names([{'config': 'configs/clm.py:tiny'}]) == ['clm-tiny']


def test_run_names_are_filesystem_safe_bounded_and_unique():
  names = sweep_lib.run_names([{'config': 'c.py', 'data.train_files': '/a b/*.txt'},
                            {'config': 'c.py', 'data.train_files': '/a b/?.txt'}])
  assert names == ['train_files=-.txt'] * 2  # '/a b/' is common; '*' and '?' are unsafe
  runs = sweep_lib.expand([{'config': 'c.py', 'data.train_files': '/a b/*.txt'},
                        {'config': 'c.py', 'data.train_files': '/a b/?.txt'}], 'r')
  assert len({run.name for run in runs}) == 2
  long = sweep_lib.run_names([{'config': 'configs/clm.py', **{f'k{i}': 'v' * 20 for i in range(10)}},
                           {'config': 'configs/clm.py', **{f'k{i}': 'w' * 20 for i in range(10)}}])
  assert all(len(name) == sweep_lib.MAX_NAME_CHARS for name in long) and long[0] != long[1]
  with pytest.raises(ValueError, match='same run'):
    sweep_lib.expand([{'config': 'configs/clm.py'}] * 2, 'r')
  with pytest.raises(ValueError, match='config'):
    sweep_lib.expand([{'seed': 1}], 'r')


def test_gcs_workdirs_join_with_slashes():
  runs = sweep_lib.expand([{'config': 'configs/mlm.py:tiny', 'seed': 3},
                        {'config': 'configs/mlm.py:tiny', 'seed': 4}], 'gs://bucket/sweep/')
  assert runs[0].workdir == 'gs://bucket/sweep/seed=3'


def test_comparison_sweep_takes_a_preset_and_names_runs_arm_and_seed():
  runs = sweep_lib.expand(sweep_lib.load_sweep('configs/sweeps/compare.py:small'), 'r')
  assert [run.name for run in runs[:4]] == ['clm_seed=0', 'clm_seed=1', 'clm_seed=2', 'mlm_seed=0']
  assert runs[0].config == 'configs/compare.py:clm:small' and runs[0].overrides == (('seed', 0),)
  assert {run.name.rsplit('_seed=', 1)[0] for run in runs} >= {'clm', 'mlm', 'mlm_pairs',
                                                               'mlm_nsp', 'mlm_sop', 'plm'}
  with pytest.raises(ValueError, match='choose a preset'):
    sweep_lib.load_sweep('configs/sweeps/compare.py:huge')


def test_local_dry_run_prints_train_commands(capsys):
  assert launch.main(['--sweep', SWEEP, '--workdir_root', 'runs/sweep', '--dry_run']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 12
  name = 'plm_num_layers=4_embed_dim=256_learning_rate=0.003'
  assert shlex.split(lines[-1]) == [
      sys.executable, 'train.py', '--config', 'configs/plm.py:tiny', '--workdir',
      f'runs/sweep/{name}', '--config.model.num_layers=4', '--config.model.embed_dim=256',
      '--config.optimizer.learning_rate=0.003']
  assert not os.path.exists('runs/sweep') or name not in os.listdir('runs/sweep')


def test_unknown_backend_and_bad_flags_are_one_line(capsys):
  with pytest.raises(SystemExit):
    launch.main(['--sweep', SWEEP, '--workdir_root', 'r', '--backend', 'k8s'])
  assert "Unknown --backend 'k8s'" in capsys.readouterr().err
  assert launch.main(['--sweep', SWEEP, '--workdir_root', 'r', '--backend', 'tpu-vm', '--zone',
                      'z', '--accelerator_type', 'v4-8']) == 2
  assert 'gs://' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    launch.main(['--sweep', SWEEP, '--workdir_root', 'gs://b', '--backend', 'gke', '--spot'])
  assert '--spot is a flag of --backend tpu_vm, not of --backend gke.' in capsys.readouterr().err
  assert launch.main(['--sweep', 'nope.py', '--workdir_root', 'r']) == 2
  assert capsys.readouterr().err.strip() == 'launch.py: error: --sweep nope.py does not exist.'


def _fake_train(tmp_path, codes):
  """A stand-in interpreter for train.py: exits with the next scripted code for its workdir and
  writes a metrics record; exit 2 prints train.py's one-line error."""
  script = tmp_path / 'fake_python'
  script.write_text(f'''#!{sys.executable}
import json, os, sys
workdir = sys.argv[sys.argv.index('--workdir') + 1]
os.makedirs(workdir, exist_ok=True)
path = os.path.join(workdir, 'calls')
calls = int(open(path).read()) if os.path.exists(path) else 0
open(path, 'w').write(str(calls + 1))
codes = {codes!r}.get(os.path.basename(workdir), [0])
code = codes[min(calls, len(codes) - 1)]
with open(os.path.join(workdir, 'config.json'), 'w') as f:
  json.dump({{'total_steps': 10}}, f)
with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
  f.write(json.dumps({{'step': 10 if code == 0 else 5, 'split': 'train', 'loss': 1.5}}) + '\\n')
if code == 2:
  print('train.py: error: config.seq_len=999 is longer than config.model.max_len=64.',
        file=sys.stderr)
sys.exit(code)
''')
  script.chmod(0o755)
  return str(script)


def test_local_backend_requeues_preempted_runs_and_records_failures(tmp_path):
  sweep = tmp_path / 'sweep.py'
  sweep.write_text('def get_sweep():\n  return [{"config": "configs/clm.py:tiny", "seed": s} '
                   'for s in (1, 2, 3)]\n')
  python = _fake_train(tmp_path, {'seed=1': [143, 0], 'seed=2': [2], 'seed=3': [0]})
  root = str(tmp_path / 'runs')
  args = ['--sweep', str(sweep), '--workdir_root', root, '--python', python, '--parallel', '2',
          '--keep_going', '--max_retries', '1']
  assert launch.main(args) == 1
  calls = {name: int((tmp_path / 'runs' / name / 'calls').read_text())
           for name in ('seed=1', 'seed=2', 'seed=3')}
  assert calls == {'seed=1': 2, 'seed=2': 1, 'seed=3': 1}  # a bad config is not retried
  saved = {name: record.read(os.path.join(root, name)) for name in calls}
  assert [saved[n]['state'] for n in calls] == ['done', 'failed', 'done']
  assert (saved['seed=1']['preemptions'], saved['seed=1']['attempts']) == (1, 2)
  assert saved['seed=2']['reason'] == 'config.seq_len=999 is longer than config.model.max_len=64.'
  assert saved['seed=2']['overrides'] == {'seed': 2}
  assert saved['seed=2']['command'][-2:] == [os.path.join(root, 'seed=2'), '--config.seed=2']
  logs = os.listdir(os.path.join(root, 'seed=1', 'launch_logs'))
  assert sorted(logs) == ['attempt_1.log', 'attempt_2.log']
  assert saved['seed=1']['log'] == os.path.join(root, 'seed=1', 'launch_logs', 'attempt_2.log')
  # A changed sweep whose names now point at other runs' workdirs is refused before anything
  # runs: batch_size is the same in every run, so it is not in the names.
  sweep.write_text('def get_sweep():\n  return [{"config": "configs/clm.py:tiny", "seed": s, '
                   '"batch_size": 4} for s in (1, 2)]\n')
  assert [run.name for run in sweep_lib.expand(sweep_lib.load_sweep(str(sweep)), root)] == \
      ['seed=1', 'seed=2']
  assert launch.main(args) == 2
  assert calls['seed=1'] == int((tmp_path / 'runs' / 'seed=1' / 'calls').read_text())
  assert json.loads((tmp_path / 'runs' / 'seed=2' / 'launch.json').read_text())['overrides'] == \
      {'seed': 2}


def test_local_launcher_stopped_by_sigterm_stops_its_runs_and_marks_them(tmp_path):
  sweep = tmp_path / 'sweep.py'
  sweep.write_text('def get_sweep():\n  return [{"config": "configs/clm.py:tiny", "seed": s} '
                   'for s in (1, 2, 3)]\n')
  python = tmp_path / 'slow_python'  # a train.py that saves and exits 143 on SIGTERM
  python.write_text(f'''#!{sys.executable}
import os, signal, sys, time
workdir = sys.argv[sys.argv.index('--workdir') + 1]
signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(workdir, 'saved'), 'w').close(),
                                          sys.exit(143)))
open(os.path.join(workdir, 'started'), 'w').close()
time.sleep(60)
''')
  python.chmod(0o755)
  root = tmp_path / 'runs'
  launcher = subprocess.Popen([sys.executable, 'tools/launch.py', '--sweep', str(sweep),
                               '--workdir_root', str(root), '--python', str(python),
                               '--parallel', '2'], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while not all((root / f'seed={s}' / 'started').exists() for s in (1, 2)):
    assert time.time() < deadline and launcher.poll() is None, launcher.communicate()[0]
    time.sleep(0.1)
  launcher.send_signal(signal.SIGTERM)
  output = launcher.communicate(timeout=60)[0]
  assert launcher.returncode == 130, output
  assert [(root / f'seed={s}' / 'saved').exists() for s in (1, 2, 3)] == [True, True, False]
  assert [record.read(str(root / f'seed={s}'))['state'] for s in (1, 2, 3)] == ['stopped'] * 3


def test_dry_run_from_the_command_line():
  done = subprocess.run([sys.executable, 'tools/launch.py', '--sweep', 'configs/sweeps/objectives.py',
                         '--workdir_root', 'runs/sweep', '--dry_run'], cwd=REPO,
                        capture_output=True, text=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 12 and all(' train.py --config configs/' in line for line in lines)


def test_bad_sweeps_are_one_line_before_anything_runs(tmp_path, capsys):
  root = str(tmp_path / 'runs')
  misspelt = tmp_path / 'misspelt.py'
  misspelt.write_text('def get_sweep():\n  return [{"config": "configs/clm.py:tiny", '
                      '"optimizer.lerning_rate": r} for r in (0.001, 0.003)]\n')
  assert launch.main(['--sweep', str(misspelt), '--workdir_root', root]) == 2
  assert capsys.readouterr() == ('', (
      "launch.py: error: Run lerning_rate=0.001: 'optimizer.lerning_rate' is not a setting of "
      "configs/clm.py:tiny (did you mean 'optimizer.learning_rate'? python train.py --config "
      'configs/clm.py:tiny --help lists them).\n'))
  assert not os.path.exists(root)
  # A comparison arm (a config file with dataclasses) loads, and its keys are checked too.
  assert launch.main(['--sweep', 'configs/sweeps/compare.py', '--workdir_root', root,
                      '--dry_run']) == 0
  assert len(capsys.readouterr().out.splitlines()) == len(sweep_lib.load_sweep(
      'configs/sweeps/compare.py'))
  empty = tmp_path / 'empty.py'
  empty.write_text('SWEEP = []\n')
  assert launch.main(['--sweep', str(empty), '--workdir_root', root]) == 2
  assert capsys.readouterr().err == (
      f'launch.py: error: --sweep {empty} defines no get_sweep(): add one that returns a list '
      'of override dicts (docs/sweeps.md).\n')
  assert launch.main(['--sweep', 'configs/sweeps/objectives.py:small', '--workdir_root', root,
                      '--dry_run']) == 2
  assert capsys.readouterr().err == ('launch.py: error: --sweep configs/sweeps/objectives.py:'
                                     'small: its get_sweep() takes no argument; drop :small.\n')
  with pytest.raises(SystemExit) as exit_info:
    launch.main(['--sweep', SWEEP])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == ('launch.py: error: the following arguments are required: '
                                     '--workdir_root (see --help).\n')
