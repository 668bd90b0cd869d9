"""The SLURM backend: sbatch scripts run by a fake sbatch whose fake srun starts the tasks here
with SLURM's environment; two tasks train exactly like one, and a stopped job requeues itself."""

from __future__ import annotations

import glob
import json
import os
import random
import shlex
import socket
import subprocess
import sys

import pytest

import numpy as np

from tests import launch_helpers as helpers
from tests.helpers import read_metrics
from tools import launch
from launching import record


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


@pytest.mark.slow
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


TRICKY = {'objective': "{'mlm': 1, 'sop': 1}",
          'data.train_files': '/d/it\'s a "file" $HOME `x`.txt'}


def expected_train(root: str, seed: int) -> list[str]:
  return [sys.executable, 'train.py', '--config', 'configs/bert.py:tiny', '--workdir',
          os.path.join(root, f'seed={seed}'), "--config.objective={'mlm': 1, 'sop': 1}",
          '--config.data.train_files=/d/it\'s a "file" $HOME `x`.txt', f'--config.seed={seed}']


@pytest.mark.parametrize('array', [False, True])
def test_paths_with_spaces_and_quoted_values_survive_the_script(tmp_path, capsys, array):
  """Each script, run by bash with a stand-in srun, hands srun train.py's exact arguments, and
  its #SBATCH lines keep a path with spaces in the double quotes sbatch reads."""
  root = str(tmp_path / 'my runs')
  sweep = helpers.write_sweep(str(tmp_path / 'sweep.py'), [
      {'config': 'configs/bert.py:tiny', **TRICKY, 'seed': s} for s in (1, 2)])
  assert launch.main(['--sweep', sweep, '--workdir_root', root, '--backend', 'slurm',
                      '--slurm_python', sys.executable, '--dry_run'] +
                     (['--array'] if array else [])) == 0
  scripts = ['#!/bin/bash' + text for text in capsys.readouterr().out.split('#!/bin/bash')[1:]]
  assert len(scripts) == (1 if array else 2)
  name = 'my runs' if array else 'seed=1'
  log = os.path.join(root, 'slurm', f'{name}.%A_%a.out' if array else f'{name}.%j.out')
  assert f'#SBATCH --output="{log}"' in scripts[0].splitlines()
  assert f'#SBATCH --job-name={"my-runs" if array else "seed=1"}' in scripts[0].splitlines()
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(f"""#!{sys.executable}
import json, sys
with open({str(tmp_path / 'srun.json')!r}, 'w') as f:
  json.dump(sys.argv[1:], f)
""")
  (bin_dir / 'srun').chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', SLURM_JOB_ID='7',
             SLURM_ARRAY_JOB_ID='7', SLURM_ARRAY_TASK_ID='1')
  text = scripts[0].split('\n# ')[0]  # the next script's header follows
  assert subprocess.run(['bash', '-n'], input=text, text=True, check=False).returncode == 0
  done = subprocess.run(['bash'], input=text, text=True, env=env, capture_output=True,
                        check=False)
  assert done.returncode == 0, done.stderr
  with open(tmp_path / 'srun.json', encoding='utf-8') as f:
    assert json.load(f) == ['--kill-on-bad-exit=1', *expected_train(root, 2 if array else 1)]


def test_multi_task_runs_need_one_task_per_gpu(tmp_path, capsys):
  sweep = helpers.write_sweep(str(tmp_path / 'sweep.py'), [{'config': 'configs/clm.py:tiny'}])
  common = ['--sweep', sweep, '--workdir_root', str(tmp_path / 'r'), '--backend', 'slurm',
            '--gpus_per_node', '8', '--dry_run']
  assert launch.main(common + ['--nodes', '2', '--tasks_per_node', '1']) == 2
  assert capsys.readouterr().err == (
      'launch.py: error: --gpus_per_node 8 with --tasks_per_node 1: jax.distributed gives each '
      'SLURM task the one GPU of its local task id, so give --tasks_per_node 8 (one task per '
      'GPU).\n')
  assert launch.main(common + ['--nodes', '2', '--tasks_per_node', '8']) == 0
  assert '#SBATCH --ntasks-per-node=8' in capsys.readouterr().out.splitlines()
  assert launch.main(common) == 0  # one task: no jax.distributed, it sees every GPU
