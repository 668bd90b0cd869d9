"""The SLURM backend: sbatch scripts run by a fake sbatch whose fake srun starts the tasks here
with SLURM's environment; two tasks train exactly like one, and a stopped job requeues itself."""

from __future__ import annotations

import os
import random
import shlex
import socket

import numpy as np
import pytest

from tests import launch_helpers as helpers
from tests.conftest import read_metrics
from tools import launch
from tools.backends import record

SEQ_LEN = 32
DOC_CHARS = SEQ_LEN - 3  # a character tokenizer adds a word-start piece; packing adds bos, eos


def free_slurm_job_id() -> int:
  """A job id whose coordinator port (jax: 61440 + id % 4096) is free here now."""
  for _ in range(50):
    job = random.randrange(1, 4096) + 4096 * 7
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', 61440 + job % 4096))
      except OSError:
        continue
    return job
  raise RuntimeError('no free port in 61440-65535')


@pytest.fixture(name='sweep')
def fixture_sweep(tmp_path):
  """One run over documents of exactly one window each, read in order: a two-process run then
  sees the very rows of the one-process run's batches, only in another order."""
  rng = random.Random(0)
  corpus = tmp_path / 'corpus.txt'
  documents = [''.join(rng.choice('abcdefghij') for _ in range(DOC_CHARS)) for _ in range(80)]
  corpus.write_text('\n\n'.join(documents))
  entry = dict(helpers.TINY_RUN, total_steps=4, checkpoint_every=4, seq_len=SEQ_LEN, **{
      'model.max_len': SEQ_LEN, 'data.source': 'text', 'data.train_files': str(corpus),
      'data.shuffle': False, 'data.tokenizer_model_type': 'char', 'data.vocab_size': 300})
  del entry['data.builtin_max_files']
  return helpers.write_sweep(str(tmp_path / 'sweep.py'), [entry]), documents


def launch_slurm(tmp_path, monkeypatch, sweep, root, tasks, script):
  state = str(tmp_path / f'cloud_{tasks}')
  helpers.use_fakes(monkeypatch, state, str(tmp_path / 'cache'), script=script)
  monkeypatch.setenv('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
  assert launch.main(['--sweep', sweep, '--workdir_root', root, '--backend', 'slurm',
                      '--tasks_per_node', str(tasks), '--time', '0:10:00']) == 0
  return state


def test_two_tasks_train_like_one_and_a_stopped_job_requeues(tmp_path, monkeypatch, sweep):
  sweep_file, documents = sweep
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  # One task; its first step is stopped by SIGTERM (143), so the script requeues the job.
  state = launch_slurm(tmp_path, monkeypatch, sweep_file, one, 1,
                       {'sbatch': 'run', 'srun': {'0': 143}})
  jobs = [c for c in helpers.calls(state) if c['tool'] == 'job']
  assert [(c['restart'], c['code']) for c in jobs] == [(0, 143), (1, 0)]
  assert [c['args'] for c in helpers.calls(state, 'scontrol')] == [['requeue', jobs[0]['args'][0]]]
  name = os.listdir(one)
  run_dir = os.path.join(one, [n for n in name if n != 'slurm'][0])
  saved = record.read(run_dir)
  assert (saved['state'], saved['attempts'], saved['preemptions']) == ('done', 2, 1)
  # The premise: every document is exactly one window of the run's tokenizer.
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  tokenizer = spm.SentencePieceProcessor(model_file=os.path.join(run_dir, 'tokenizer.model'))
  assert {len(tokenizer.encode(d)) + 2 for d in documents} == {SEQ_LEN}

  state = launch_slurm(tmp_path, monkeypatch, sweep_file, two, 2,
                       {'sbatch': 'run', 'job_ids': [free_slurm_job_id()]})
  assert [c['tasks'] for c in helpers.calls(state, 'srun')] == [2]
  single = [r for r in read_metrics(run_dir) if r['split'] == 'train']
  double = [r for r in read_metrics(os.path.join(two, os.path.basename(run_dir)))
            if r['split'] == 'train']
  assert [r['step'] for r in single] == [r['step'] for r in double] == [1, 2, 3, 4]
  assert len({r['loss'] for r in single}) == 4
  np.testing.assert_allclose([r['loss'] for r in double], [r['loss'] for r in single], rtol=1e-5)
  assert record.read(os.path.join(two, os.path.basename(run_dir)))['state'] == 'done'


def test_scripts_and_arrays_carry_tasks_resources_and_the_command(tmp_path, capsys):
  sweep = helpers.write_sweep(str(tmp_path / 'sweep.py'), [
      {'config': 'configs/bert.py:tiny', 'objective': {'mlm': 1.0, 'nsp': 1.0}, 'seed': s}
      for s in (1, 2)])
  common = ['--sweep', sweep, '--workdir_root', '/shared/sweep', '--backend', 'slurm',
            '--nodes', '2', '--tasks_per_node', '4', '--gpus_per_node', '4', '--partition', 'gpu',
            '--time', '2-00:00:00', '--setup', 'source venv/bin/activate', '--dry_run']
  assert launch.main(common) == 0
  text = capsys.readouterr().out
  assert text.count('#!/bin/bash') == 2
  first = text.split('\n\n')[0]
  for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=4', '#SBATCH --gpus-per-node=4',
               '#SBATCH --partition=gpu', '#SBATCH --time=2-00:00:00', '#SBATCH --requeue',
               'source venv/bin/activate', 'srun --kill-on-bad-exit=1 "${TRAIN[@]}"'):
    assert line in first.splitlines(), line
  train = next(line for line in first.splitlines() if line.startswith('TRAIN=('))
  words = shlex.split(train[len('TRAIN=('):-1])
  assert words == ['python3', 'train.py', '--config', 'configs/bert.py:tiny', '--workdir',
                   '/shared/sweep/seed=1', "--config.objective={'mlm': 1.0, 'nsp': 1.0}",
                   '--config.seed=1']
  assert launch.main(common + ['--array', '--array_parallel', '1']) == 0
  array = capsys.readouterr().out
  assert array.count('#!/bin/bash') == 1 and '#SBATCH --array=0-1%1' in array
  assert '/shared/sweep/seed=2' in array and not os.path.exists('/shared/sweep')
