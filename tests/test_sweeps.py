"""Sweep expansion, run names and the commands tools/launch.py prints or runs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import types

import pytest

from configs.sweeps import objectives, product, zip_
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


def test_objectives_sweep_expands_to_named_runs():
  runs = launch.expand(objectives.get_sweep(), 'runs/sweep')
  assert len(runs) == 3 * 2 * 2
  assert {run.config for run in runs} == {'configs/clm.py:tiny', 'configs/mlm.py:tiny',
                                          'configs/plm.py:tiny'}
  first = runs[0]
  assert first.name == ('clm-tiny_model.num_layers=2_model.embed_dim=128_'
                        'optimizer.learning_rate=0.001')
  assert first.workdir == os.path.join('runs/sweep', first.name)
  assert len({run.name for run in runs}) == len(runs)
  assert [run.name for run in launch.expand(objectives.get_sweep(), 'r')] == \
      [run.name for run in runs]  # deterministic
  assert all(launch.MAX_NAME_CHARS >= len(run.name) for run in runs)


def test_run_names_are_filesystem_safe_and_bounded():
  name = launch.run_name('configs/clm.py:tiny', [('data.train_files', '/a b/*.txt')])
  assert name == 'clm-tiny_data.train_files=-a-b--.txt'
  long = launch.run_name('configs/clm.py', [(f'k{i}', 'v' * 20) for i in range(10)])
  assert len(long) == launch.MAX_NAME_CHARS and long.startswith('clm_k0=')
  with pytest.raises(ValueError, match='same run'):
    launch.expand([{'config': 'configs/clm.py'}] * 2, 'r')
  with pytest.raises(ValueError, match='config'):
    launch.expand([{'seed': 1}], 'r')


def test_gcs_workdirs_join_with_slashes():
  runs = launch.expand([{'config': 'configs/mlm.py:tiny', 'seed': 3}], 'gs://bucket/sweep/')
  assert runs[0].workdir == 'gs://bucket/sweep/mlm-tiny_seed=3'


def test_tpu_dry_run_prints_gcloud_commands(capsys):
  status = launch.main(['--sweep', SWEEP, '--workdir_root', 'gs://bucket/sweep', '--mode', 'tpu',
                        '--tpu', 'my-tpu', '--zone', 'us-central2-b', '--data_dir',
                        'gs://bucket/tfds', '--dry_run'],
                       execute=lambda *a, **k: pytest.fail('dry run executed a command'))
  assert status == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 12
  words = shlex.split(lines[0])
  assert words[:9] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu',
                       '--zone=us-central2-b', '--worker=all', words[8]]
  remote = words[8].removeprefix('--command=')
  name = 'clm-tiny_model.num_layers=2_model.embed_dim=128_optimizer.learning_rate=0.001'
  assert remote == (
      'cd ~/pretraining-objectives && python3 train.py --config configs/clm.py:tiny --workdir '
      f'gs://bucket/sweep/{name} --config.model.num_layers=2 --config.model.embed_dim=128 '
      '--config.optimizer.learning_rate=0.001 --config.data.data_dir=gs://bucket/tfds')


def test_tpu_mode_needs_gcs_and_a_tpu(capsys):
  with pytest.raises(SystemExit):
    launch.main(['--sweep', SWEEP, '--workdir_root', 'runs/sweep', '--mode', 'tpu', '--tpu', 't',
                 '--zone', 'z'])
  assert 'gs://' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    launch.main(['--sweep', SWEEP, '--workdir_root', 'gs://b/s', '--mode', 'tpu'])


def test_local_mode_runs_train_commands_in_order(tmp_path, capsys):
  executed = []

  def execute(command, **kwargs):
    executed.append((command, kwargs))
    return types.SimpleNamespace(returncode=0)

  root = str(tmp_path / 'sweep')
  assert launch.main(['--sweep', SWEEP, '--workdir_root', root, '--mode', 'local'],
                     execute=execute) == 0
  assert len(executed) == 12
  command, kwargs = executed[-1]
  name = 'plm-tiny_model.num_layers=4_model.embed_dim=256_optimizer.learning_rate=0.003'
  assert command == [sys.executable, 'train.py', '--config', 'configs/plm.py:tiny', '--workdir',
                     os.path.join(root, name), '--config.model.num_layers=4',
                     '--config.model.embed_dim=256', '--config.optimizer.learning_rate=0.003']
  assert kwargs['cwd'] == REPO


def test_local_mode_stops_at_a_failed_run(tmp_path, capsys):
  calls = []

  def execute(command, **kwargs):  # pylint: disable=unused-argument
    calls.append(command)
    return types.SimpleNamespace(returncode=2)

  assert launch.main(['--sweep', SWEEP, '--workdir_root', str(tmp_path), '--mode', 'local'],
                     execute=execute) == 2
  assert len(calls) == 1
  assert 'exited with 2' in capsys.readouterr().err


def test_dry_mode_from_the_command_line():
  done = subprocess.run([sys.executable, 'tools/launch.py', '--sweep', 'configs/sweeps/objectives.py',
                         '--workdir_root', 'runs/sweep'], cwd=REPO, capture_output=True, text=True,
                        timeout=60, check=False)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 12 and all(line.startswith('python train.py --config configs/') for line in lines)
