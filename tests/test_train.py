"""train.py end to end on CPU: the loss falls, runs resume exactly, bad input fails early."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import train
from configs import clm
from tests.helpers import read_metrics, small_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)


def config_for(shared_cache, **overrides):
  return small_run_config(clm.get_config('tiny'), shared_cache, **overrides)


@pytest.mark.slow
def test_loss_falls_and_second_invocation_resumes(tmp_path, shared_cache, capsys):
  workdir = str(tmp_path / 'run')
  result = train.run(config_for(shared_cache, total_steps=24, log_every=4, eval_every=12,
                                checkpoint_every=12), workdir)
  records = read_metrics(workdir)
  evals = [r for r in records if r['split'] == 'eval']
  trains = [r for r in records if r['split'] == 'train']
  assert evals[0]['step'] == 0 and evals[-1]['step'] == 24
  assert evals[-1]['loss'] < evals[0]['loss'] - 0.5
  assert trains[-1]['loss'] < trains[0]['loss']
  assert {'tokens_per_sec', 'step_time', 'tokens', 'flops', 'wall_time'} <= set(trains[-1])
  assert result['eval_loss'] == pytest.approx(evals[-1]['loss'])
  for name in ('config.json', 'run.json', 'tokenizer.model'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints')))[-1] == '24'
  assert any(name.startswith('events') for name in os.listdir(os.path.join(workdir, 'tensorboard')))

  capsys.readouterr()
  train.run(config_for(shared_cache, total_steps=32, log_every=4, eval_every=12,
                       checkpoint_every=12), workdir)
  assert 'Resumed from' in capsys.readouterr().out
  steps = [r['step'] for r in read_metrics(workdir) if r['split'] == 'train']
  assert steps == [4, 8, 12, 16, 20, 24, 28, 32]  # continued at 24, nothing repeated


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_losses_bitwise(tmp_path, shared_cache):
  settings = dict(total_steps=10, log_every=1, eval_steps=0, checkpoint_every=5)
  train.run(config_for(shared_cache, **settings), str(tmp_path / 'whole'))
  interrupted = str(tmp_path / 'parts')
  train.run(config_for(shared_cache, pause_at_step=7, **settings), interrupted)
  train.run(config_for(shared_cache, **settings), interrupted)
  whole = [r['loss'] for r in read_metrics(str(tmp_path / 'whole'))]
  parts = [r['loss'] for r in read_metrics(interrupted)]
  assert len(whole) == 10 and whole == parts


@pytest.mark.parametrize('overrides, fragment', [
    (dict(seq_len=128), 'config.seq_len'),
    ({'data.tokenizer': '/nonexistent/sp.model'}, 'config.data.tokenizer'),
    ({'data.source': 'tfds', 'data.tfds_name': 'no_such_dataset_xyz'}, 'config.data.tfds_name'),
    ({'objective': 'no_such_objective'}, 'config.objective'),
    ({'batch_size': 12}, 'config.batch_size'),
    ({'mesh.fsdp': 3}, 'config.mesh'),
    ({'model.vocab_size': 123}, 'config.model.vocab_size'),
])
def test_bad_input_is_one_line_before_compilation(tmp_path, shared_cache, overrides, fragment):
  config = config_for(shared_cache)
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  with pytest.raises(train.SetupError) as error:
    train.run(config, str(tmp_path / 'bad'))
  message = str(error.value)
  assert fragment in message and '\n' not in message
  assert not os.path.exists(os.path.join(tmp_path, 'bad', 'checkpoints'))


def test_a_config_that_fails_validation_leaves_no_workdir(tmp_path, shared_cache):
  """Validation runs once, before the workdir is made or any process joined."""
  config = config_for(shared_cache, seq_len=128)
  with pytest.raises(train.SetupError, match=r'^config.seq_len=128 exceeds the 64 learned'):
    train.run(config, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad')


def test_unknown_key_in_config_file_is_named(tmp_path, shared_cache):
  config = config_for(shared_cache)
  config.model.num_layerz = 3
  with pytest.raises(train.SetupError, match=r'config\.model\.num_layerz.*num_layers'):
    train.run(config, str(tmp_path / 'bad'))


@pytest.mark.slow
def test_changed_config_refuses_to_resume(tmp_path, shared_cache):
  workdir = str(tmp_path / 'run')
  train.run(config_for(shared_cache, total_steps=2, eval_steps=0), workdir)
  changed = config_for(shared_cache, total_steps=4, eval_steps=0)
  changed.model.num_layers = 3
  with pytest.raises(train.SetupError, match='allow_config_change'):
    train.run(changed, workdir)


def test_command_line_errors_are_one_line(tmp_path):
  command = [sys.executable, 'train.py', '--config', 'configs/clm.py:tiny', '--workdir',
             str(tmp_path / 'cli'), '--config.model.num_layerz=3']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode != 0
  assert 'num_layerz' in done.stderr
  missing = subprocess.run(
      [sys.executable, 'train.py', '--config', str(tmp_path / 'nope.py'), '--workdir',
       str(tmp_path / 'cli')], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert missing.returncode != 0 and 'nope.py' in missing.stderr


def test_checkpoints_work_under_a_relative_workdir(tmp_path, monkeypatch):
  """README's command passes `--workdir runs/clm`; orbax itself wants absolute paths."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from training import checkpoint  # pylint: disable=import-outside-toplevel

  monkeypatch.chdir(tmp_path)
  state = {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}
  saver = checkpoint.Checkpointer('runs/relative', keep=2, process_index=0)
  saver.save(3, state, {'cursor': 7})
  saver.close()
  loader = checkpoint.Checkpointer('runs/relative', keep=2, process_index=0)
  assert loader.complete_steps() == [3]
  restored, data_state = loader.restore(3, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
  loader.close()
  np.testing.assert_array_equal(np.asarray(restored['w']), state['w'])
  assert data_state == {'cursor': 7}
  assert (tmp_path / 'runs' / 'relative' / 'checkpoints' / '3').is_dir()
