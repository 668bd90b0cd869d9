"""The SLURM backend: sbatch scripts run by a fake sbatch whose fake srun starts the tasks here
with SLURM's environment; two tasks train exactly like one, and a stopped job requeues itself."""

from __future__ import annotations

import glob
import json
import os
import random
import shlex
import socket

import numpy as np

from tests import launch_helpers as helpers
from tests.conftest import read_metrics
from tools import launch
from tools.backends import record


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


def test_two_tasks_train_like_one_process_after_a_requeue(tmp_path, monkeypatch,
                                                          tmp_path_factory, shared_cache):
  """The documents are one window each and read in order, so the two tasks together see the
  very rows of the one-process run's batches, in another order: the losses must agree."""
  corpus, reference, documents = helpers.reference_run(tmp_path_factory, shared_cache)
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  tokenizer = spm.SentencePieceProcessor(model_file=os.path.join(reference, 'tokenizer.model'))
  assert {len(tokenizer.encode(d)) + 2 for d in documents} == {helpers.SEQ_LEN}  # the premise
  state = str(tmp_path / 'cloud')
  # The job's first step ends with SIGTERM's 143 before training; the script requeues the job.
  helpers.use_fakes(monkeypatch, state, shared_cache, script={
      'sbatch': 'run', 'job_ids': [free_slurm_job_id()], 'srun': {'0': 143}})
  monkeypatch.setenv('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
  sweep = helpers.write_sweep(str(tmp_path / 'sweep.py'), [helpers.tiny_run(corpus)])
  root = str(tmp_path / 'runs')
  assert launch.main(['--sweep', sweep, '--workdir_root', root, '--backend', 'slurm',
                      '--tasks_per_node', '2', '--time', '0:10:00']) == 0
  jobs = [c for c in helpers.calls(state) if c['tool'] == 'job']
  logs = ''.join(open(path, encoding='utf-8', errors='replace').read()
                 for path in glob.glob(os.path.join(root, 'slurm', '*.out')))
  assert [(c['restart'], c['code']) for c in jobs] == [(0, 143), (1, 0)], logs[-3000:]
  assert [c['args'] for c in helpers.calls(state, 'scontrol')] == [['requeue', jobs[0]['args'][0]]]
  assert [c['tasks'] for c in helpers.calls(state, 'srun')] == [0, 2]
  workdir = os.path.join(root, 'clm-tiny')
  saved = record.read(workdir)
  assert (saved['state'], saved['attempts'], saved['preemptions']) == ('done', 2, 1)
  assert saved['where'] == f'slurm job {jobs[0]["args"][0]}'
  with open(os.path.join(workdir, 'run.json'), encoding='utf-8') as f:
    assert json.load(f)['processes'] == 2
  single = [r for r in read_metrics(reference) if r['split'] == 'train']
  double = [r for r in read_metrics(workdir) if r['split'] == 'train']
  assert [r['step'] for r in single] == [r['step'] for r in double] == [1, 2, 3, 4]
  np.testing.assert_allclose([r['loss'] for r in double], [r['loss'] for r in single], rtol=1e-5)


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
