"""Downstream scoring inside a comparison sweep: each entry's job trains, then scores its own run
(tools/compare.py --mode score), in order, with exact arguments, resuming after a failure; the
random-initialisation control is scored once per architecture whichever job finishes first."""

from __future__ import annotations

import json
import os
import shlex
import sys

import pytest

from comparison import downstream as downstream_lib
from launching import backends, base, record as record_lib, sweep as sweep_lib
from tests import launch_helpers as helpers
from tests.helpers import finished_budget_run as _run, run_recording_python3
from tools import compare as compare_tool
from tools import launch

HOSTILE = ['$(touch pwned)', '`touch pwned`', 'a\'b"c', 'x; touch pwned', 'line\nbreak',
           'ü \t€', '${HOME}', '*', '-', '', '\\', 'a"$(touch pwned)"', "'; touch pwned; '"]


def _stub(tmp_path, codes=()) -> tuple[str, str]:
  """(an interpreter stand-in that logs its arguments and exits with codes[i] on its i-th
  call (0 past the end), its call log)."""
  calls = str(tmp_path / 'calls.jsonl')
  stub = tmp_path / 'python_stub'
  stub.write_text(
      f'#!{sys.executable}\nimport json, sys\n'
      f'with open({calls!r}, "a", encoding="utf-8") as f:\n'
      '  f.write(json.dumps(sys.argv[1:]) + "\\n")\n'
      f'n = sum(1 for _ in open({calls!r}, encoding="utf-8"))\n'
      f'codes = {list(codes)!r}\n'
      'sys.exit(codes[n - 1] if n <= len(codes) else 0)\n')
  stub.chmod(0o755)
  return str(stub), calls


def _calls(path: str) -> list[list[str]]:
  with open(path, encoding='utf-8') as f:
    calls = [json.loads(line) for line in f]
  return [call for call in calls if call[:1] != ['-m']]  # launching.mark updates from sbatch


def _sweep(tmp_path, capsys, arms='clm,mlm') -> tuple[str, str]:
  root = str(tmp_path / 'cmp')
  assert compare_tool.main(['--root', root, '--preset', 'tiny', '--arms', arms, '--seeds', '0',
                            '--mode', 'sweep', '--downstream', 'stdlib_package',
                            '--zero_shot_limit', '5']) == 0
  out = capsys.readouterr().out
  assert '# each job scores its run downstream once train.py succeeds' in out
  return root, os.path.join(root, 'sweep.py')


SCORE = ['tools/compare.py', '--mode', 'score', '--preset', 'tiny', '--downstream=stdlib_package',
         '--zero_shot_limit=5']


def _train(root: str, arm: str, name: str = '') -> list[str]:
  return ['train.py', '--config', f'configs/compare.py:{arm}:tiny', '--workdir',
          os.path.join(root, name or arm), '--config.seed=0']


def test_sweep_entries_score_their_run_and_keep_their_names(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a gs:// root's sweep file is written here
  root, path = _sweep(tmp_path, capsys)
  entries = sweep_lib.load_sweep(path)
  assert [entry[sweep_lib.AFTER_KEY] for entry in entries] == [SCORE, SCORE]
  runs = sweep_lib.expand(entries, root)
  plain = sweep_lib.expand([{k: v for k, v in e.items() if k != 'after'} for e in entries], root)
  assert [(r.name, r.overrides) for r in runs] == [(r.name, r.overrides) for r in plain]
  assert base.after_command(runs[1], 'py') == ['py', *SCORE, f'--workdir={root}/mlm']
  assert base.after_command(plain[1], 'py') == []
  # Without downstream tasks, or with a gs:// root (scoring reads files), entries train only.
  assert compare_tool.main(['--root', root, '--arms', 'clm', '--seeds', '0', '--mode',
                            'sweep']) == 0
  assert 'after' not in sweep_lib.load_sweep(path)[0]
  assert compare_tool.main(['--root', 'gs://b/c', '--arms', 'clm', '--seeds', '0', '--mode',
                            'sweep', '--downstream', 'stdlib_package']) == 0
  assert 'scores downstream and reports' in capsys.readouterr().out
  assert 'after' not in sweep_lib.load_sweep('compare_sweep.py')[0]


@pytest.mark.parametrize('after', [['rm', '-rf', '/'], 'tools/compare.py', [],
                                   ['tools/compare.py', 3], ['../tools/compare.py'],
                                   ['tools/compare.py', 'a\0b']])
def test_an_after_command_other_than_compare_py_is_refused(after):
  with pytest.raises(ValueError, match='"after" must be a list of strings starting with '
                     'one of tools/compare.py'):
    sweep_lib.expand([{'config': 'configs/clm.py:tiny', 'after': after}], '/r')


def test_local_jobs_train_then_score_each_run_in_order(tmp_path, capsys):
  root, path = _sweep(tmp_path, capsys)
  stub, calls = _stub(tmp_path)
  assert launch.main(['--sweep', path, '--workdir_root', root, '--python', stub]) == 0
  assert _calls(calls) == [_train(root, 'clm'), [*SCORE, f'--workdir={root}/clm'],
                           _train(root, 'mlm'), [*SCORE, f'--workdir={root}/mlm']]
  with open(os.path.join(root, 'clm', 'launch.json'), encoding='utf-8') as f:
    assert json.load(f)['state'] == 'done'


def test_a_failed_score_requeues_the_job_and_a_refused_run_is_never_scored(tmp_path, capsys):
  root, path = _sweep(tmp_path, capsys, arms='clm')
  # Train, score (fails: exit 1), then the requeued attempt trains (resuming) and scores again.
  stub, calls = _stub(tmp_path, codes=[0, 1, 0, 0])
  assert launch.main(['--sweep', path, '--workdir_root', root, '--python', stub]) == 0
  name = 'compare-clm-tiny'  # one run: named by its config
  train, score = _train(root, 'clm', name), [*SCORE, f'--workdir={root}/{name}']
  assert _calls(calls) == [train, score, train, score]
  logs = sorted(os.listdir(os.path.join(root, name, 'launch_logs')))
  assert logs == ['attempt_1.log', 'attempt_2.log']  # scoring writes into its attempt's log
  os.remove(calls)
  stub, calls = _stub(tmp_path, codes=[2])  # train.py refuses its input: no score, no retry
  assert launch.main(['--sweep', path, '--workdir_root', root, '--python', stub]) == 1
  assert _calls(calls) == [train]


def test_slurm_jobs_train_then_score_and_a_failed_train_is_not_scored(tmp_path, monkeypatch,
                                                                      capsys):
  root, path = _sweep(tmp_path, capsys)
  helpers.use_fakes(monkeypatch, str(tmp_path / 'cloud'), script={'sbatch': 'run'})
  stub, calls = _stub(tmp_path)
  assert launch.main(['--sweep', path, '--workdir_root', root, '--backend', 'slurm',
                      '--slurm_python', stub]) == 0
  assert _calls(calls) == [_train(root, 'clm'), [*SCORE, f'--workdir={root}/clm'],
                           _train(root, 'mlm'), [*SCORE, f'--workdir={root}/mlm']]
  os.remove(calls)
  # clm's train.py fails (exit 1; its 2nd call, after `mark running`) with no retries left:
  # that job records the failure and scores nothing; mlm's job trains and scores.
  stub, calls = _stub(tmp_path, codes=[0, 1])
  assert launch.main(['--sweep', path, '--workdir_root', root, '--backend', 'slurm',
                      '--slurm_python', stub, '--max_retries', '0']) == 0
  assert _calls(calls) == [_train(root, 'clm'), _train(root, 'mlm'),
                           [*SCORE, f'--workdir={root}/mlm']]


@pytest.mark.parametrize('array', [False, True])
def test_hostile_after_arguments_reach_the_script_byte_for_byte_under_slurm(tmp_path, array):
  run = sweep_lib.Run('r', 'configs/clm.py:tiny', (('k', '$(touch pwned)'),), '/w/r$(x)',
                      after=('tools/compare.py', *HOSTILE))
  args = launch.parse_args(['--sweep', 's', '--workdir_root', '/w', '--backend', 'slurm'])
  backend = backends.get('slurm')(args)
  script = backend.array_script([run], 'a') if array else backend.script(run)
  start = script.index('\nAFTERS=(' if array else '\nAFTER=(') + 1
  lines = script[start:script.index('\nLOG=')].splitlines()
  lines = [line for line in lines if not line.startswith(('WORKDIR=', 'eval "TRAIN'))]
  text = '\n'.join(lines).replace('$SLURM_ARRAY_TASK_ID', '0') + '\n"${AFTER[@]}"\n'
  assert run_recording_python3(tmp_path, text) == ['tools/compare.py', *HOSTILE,
                                                     '--workdir=/w/r$(x)']
  assert sorted(os.listdir(tmp_path)) == ['argv.json', 'bin']  # nothing else ran


def test_tpu_vm_scores_on_worker_zero_and_gke_refuses(tmp_path):
  run = sweep_lib.Run('r', 'configs/clm.py:tiny', (), '/mnt/r', after=('tools/compare.py', 'a b'))
  args = launch.parse_args(['--sweep', 's', '--workdir_root', '/mnt', '--backend', 'tpu_vm',
                            '--zone', 'z', '--accelerator_type', 'v4-8'])
  command = backends.get('tpu_vm')(args).after_ssh_command('slice', run)
  assert command[:7] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'slice', '--zone=z']
  assert '--worker=0' in command
  script = command[-1][len('--command='):]
  assert script.endswith(' && ' + shlex.join(['python3', 'tools/compare.py', 'a b',
                                              '--workdir=/mnt/r']))
  args = launch.parse_args(['--sweep', 's', '--workdir_root', 'gs://b', '--backend', 'gke',
                            '--image', 'i', '--tpu_accelerator', 't', '--topology', '2x2x1'])
  gs_run = sweep_lib.Run('r', 'configs/clm.py:tiny', (), 'gs://b/r', after=run.after)
  with pytest.raises(ValueError, match='--backend gke cannot run a sweep entry'):
    backends.get('gke')(args).check([gs_run])


def test_each_job_scores_its_run_and_one_control_per_architecture(tmp_path, monkeypatch, capsys):
  """mlm_nsp and mlm_sop share a network, clm has its own: whichever of a shared network's runs
  is scored first claims its control; scoring again runs nothing; --mode downstream agrees."""
  root = str(tmp_path)
  kinds = {'clm': 'causal', 'mlm_nsp': 'pairs', 'mlm_sop': 'pairs'}
  workdirs = {'clm': _run(root, 'clm', 'clm', 0),
              'mlm_nsp': _run(root, 'mlm_nsp', {'mlm': 1.0, 'nsp': 1.0}, 0, 'sentence_pairs'),
              'mlm_sop': _run(root, 'mlm_sop', {'mlm': 1.0, 'sop': 1.0}, 0,
                              'sentence_order_pairs')}
  for arm, workdir in workdirs.items():  # architecture()'s cache: nothing is traced
    os.makedirs(os.path.join(workdir, 'downstream'))
    with open(os.path.join(workdir, 'downstream', 'architecture.json'), 'w',
              encoding='utf-8') as f:
      f.write(kinds[arm])
  ran = []

  def fake_job(job, settings, log=print):  # pylint: disable=unused-argument
    ran.append((job.arm, job.step, job.control))
    os.makedirs(os.path.dirname(job.path), exist_ok=True)
    with open(job.path, 'w', encoding='utf-8') as f:
      f.write('{}')
    return job.path

  monkeypatch.setattr(downstream_lib, 'run_job', fake_job)
  settings = downstream_lib.Settings(tasks=('toy',))
  for arm in ('mlm_sop', 'clm', 'mlm_nsp', 'mlm_sop'):  # jobs end in any order; one again
    assert compare_tool.score_run(workdirs[arm], settings) == 0
  assert ran == [('mlm_sop', 0, True), ('mlm_sop', 2, False), ('mlm_sop', 4, False),
                 ('mlm_sop', 8, False),
                 ('clm', 0, True), ('clm', 2, False), ('clm', 4, False), ('clm', 8, False),
                 ('mlm_nsp', 2, False), ('mlm_nsp', 4, False), ('mlm_nsp', 8, False)]
  assert 'scored by the runs of mlm_sop' in capsys.readouterr().out
  claims = os.path.join(root, downstream_lib.CLAIMS_DIR)
  assert len(os.listdir(claims)) == 2  # no draft left behind
  jobs, controls = downstream_lib.plan(list(workdirs.values()), settings, claims_dir=claims)
  assert controls == {'clm': ['clm'], 'mlm_sop': ['mlm_nsp', 'mlm_sop']}
  assert all(job.done() for job in jobs) and len(jobs) == 11
  runs = [sweep_lib.Run(arm, 'configs/compare.py:x:tiny', (), w) for arm, w in workdirs.items()]
  assert compare_tool.downstream_all(runs, root, settings) == 0  # --mode downstream: nothing left
  assert len(ran) == 11
  assert ("no_pretraining:mlm_sop: the random-initialisation control of mlm_sop's architecture "
          '(shared by mlm_nsp)') in capsys.readouterr().out
  assert compare_tool.score_run(str(tmp_path / 'nothing'), settings) == 2
  assert 'holds no finished run: train it first' in capsys.readouterr().err


def test_tpu_vm_slices_score_on_worker_zero_after_training(tmp_path, monkeypatch, capsys):
  """Slice of run 0: train on every worker, then score on worker 0; run 1's training fails:
  its slice never scores."""
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'default': {'ssh': 'ok'},
                                                'by_name': {'-1-1': {'ssh': 'fail'}}})
  root = str(tmp_path / 'runs')
  after = ['tools/compare.py', '--mode', 'score', '--downstream=t']
  sweep = helpers.write_sweep(str(tmp_path / 'sweep.py'), [
      {'config': 'configs/clm.py:tiny', 'seed': seed, 'after': after} for seed in (0, 1)])
  assert launch.main(['--sweep', sweep, '--workdir_root', root, '--backend', 'tpu_vm', '--zone',
                      'z', '--accelerator_type', 'v4-8', '--poll_seconds', '0.2',
                      '--mounted_workdir_root', '--max_retries', '0',
                      '--log_dir', str(tmp_path / 'logs')]) == 1, capsys.readouterr().out
  ssh = [(helpers.words(c)[4].rsplit('-', 2)[1], next(a for a in c['args'] if a.startswith(
      '--worker=')), c['args'][-1]) for c in helpers.calls(state, 'gcloud')
         if helpers.words(c)[3] == 'ssh']
  # Each run's own calls in order (the two slices go at once).
  assert [worker for index, worker, _ in ssh if index == '0'] == ['--worker=all', '--worker=0']
  assert [worker for index, worker, _ in ssh if index == '1'] == ['--worker=all']
  score = next(command for index, worker, command in ssh if worker == '--worker=0')
  assert score.endswith(' && ' + shlex.join(['python3', *after,
                                             f'--workdir={root}/seed=0']))
  assert [record_lib.read(os.path.join(root, f'seed={s}'))['state'] for s in (0, 1)] == [
      'done', 'failed']
