"""The Cloud TPU backend against a fake gcloud: slices made on demand and never more than
--max_slices, a preempted run requeued once per preemption and resumed exactly, and every slice
deleted, also when the launcher is interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import launch_helpers as helpers
from tests.helpers import read_metrics
from launching import record, sweep as sweep_lib
from launching.backends import tpu_vm
from tools import launch, status

TPU = ['--backend', 'tpu_vm', '--zone', 'us-central2-b', '--accelerator_type', 'v4-8', '--spot',
       '--poll_seconds', '0.2', '--mounted_workdir_root']


def seeds_sweep(tmp_path, count: int) -> str:
  return helpers.write_sweep(str(tmp_path / 'sweep.py'), [
      {'config': 'configs/clm.py:tiny', 'seed': seed} for seed in range(1, count + 1)])


def test_slices_are_capped_requeued_and_all_deleted(tmp_path, monkeypatch, capsys):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'default': {'ssh': 'ok'}, 'by_name': {
      '-0-1': {'provision': 3, 'ssh': 'lost'},   # spot capacity taken back mid-run
      '-1-1': {'end': 'FAILED'},                 # never becomes ACTIVE
      '-3-1': {'ssh': 'fail'}, '-3-2': {'ssh': 'fail'}}})
  root = str(tmp_path / 'runs')
  code = launch.main(['--sweep', seeds_sweep(tmp_path, 4), '--workdir_root', root,
                      '--max_slices', '2', '--max_retries', '1', '--log_dir',
                      str(tmp_path / 'logs'), *TPU])
  assert code == 1, capsys.readouterr().out
  created, deleted, most = helpers.slice_lifetimes(state)
  assert most == 2  # both slots were used, never a third slice
  assert sorted(deleted) == sorted(created) and len(set(created)) == len(created) == 7
  assert sorted(name.split('-', 2)[2] for name in created) == [
      '0-1', '0-2', '1-1', '1-2', '2-1', '3-1', '3-2']
  assert not os.listdir(os.path.join(state, 'qr'))
  creates = [c for c in helpers.calls(state, 'gcloud') if helpers.words(c)[3] == 'create']
  assert all('--spot' in c['args'] and '--accelerator-type=v4-8' in c['args'] for c in creates)
  saved = {seed: record.read(os.path.join(root, f'seed={seed}')) for seed in (1, 2, 3, 4)}
  assert [(s['state'], s['attempts'], s['preemptions'], s['failures'])
          for s in saved.values()] == [('done', 2, 1, 0), ('done', 2, 0, 1), ('done', 1, 0, 0),
                                       ('failed', 2, 0, 2)]
  assert saved[4]['reason'].startswith('Cannot write metrics to /w/metrics.jsonl: No space left.')
  # Queued while its slice provisions, running once ACTIVE, preempted, and again.
  assert [h['state'] for h in saved[1]['history']] == [
      'queued', 'queued', 'running', 'preempted', 'queued', 'running', 'done']
  # Every worker got the code archive before train.py was started on it.
  scp = [c for c in helpers.calls(state, 'gcloud') if helpers.words(c)[3] == 'scp']
  assert len(scp) == 6 and all('--worker=all' in c['args'] for c in scp)
  table = status.table([status.read_run(os.path.join(root, f'seed={s}')) for s in (1, 2, 3, 4)])
  lines = table.splitlines()
  assert 'done, preempted and requeued 1x' in lines[1]
  assert 'failed' in lines[4] and 'No space left' in lines[4]


@pytest.mark.slow
def test_preempted_run_resumes_with_the_losses_of_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                       tmp_path_factory,
                                                                       shared_cache):
  corpus, reference, _ = helpers.reference_run(tmp_path_factory, shared_cache)
  state = str(tmp_path / 'cloud')
  # The first slice is preempted after step 2 (its checkpoint there); the run is requeued on a
  # second slice, which gets the code again, installs it and resumes.
  helpers.use_fakes(monkeypatch, state, shared_cache, script={
      'by_name': {'-0-1': {'ssh': 'preempt', 'pause_at': 2}}})
  sweep = helpers.write_sweep(str(tmp_path / 'sweep.py'), [helpers.tiny_run(corpus)])
  root = str(tmp_path / 'runs')
  assert launch.main(['--sweep', sweep, '--workdir_root', root, '--log_dir',
                      str(tmp_path / 'logs'), *TPU]) == 0
  workdir = os.path.join(root, 'clm-tiny')
  resumed = [r for r in read_metrics(workdir) if r['split'] == 'train']
  whole = [r for r in read_metrics(reference) if r['split'] == 'train']
  assert [r['step'] for r in resumed] == [r['step'] for r in whole] == [1, 2, 3, 4]
  assert [r['loss'] for r in resumed] == [r['loss'] for r in whole]
  assert len({r['loss'] for r in whole}) == 4
  saved = record.read(workdir)
  assert (saved['state'], saved['attempts'], saved['preemptions']) == ('done', 2, 1)
  created, deleted, _ = helpers.slice_lifetimes(state)
  assert len(created) == 2 and sorted(deleted) == sorted(created)
  homes = os.listdir(os.path.join(state, 'workers'))
  assert all(os.path.exists(os.path.join(state, 'workers', h, 'home', 'pretraining-objectives',
                                         'train.py')) for h in homes) and len(homes) == 2


def test_interrupted_launcher_deletes_every_slice_it_made(tmp_path):
  state = str(tmp_path / 'cloud')
  env = dict(os.environ, **helpers.fake_environment(state))
  # Deleting takes a second a slice, so the second signal below lands while slices are deleted.
  helpers.write_script(state, {'default': {'ssh': 'hang', 'delete_seconds': 1}})
  launcher = subprocess.Popen(
      [sys.executable, 'tools/launch.py', '--sweep', seeds_sweep(tmp_path, 3), '--workdir_root',
       str(tmp_path / 'runs'), '--max_slices', '2', *TPU], cwd=helpers.REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while len([c for c in helpers.calls(state) if helpers.words(c)[3:4] == ['scp']]) < 2:
    assert time.time() < deadline and launcher.poll() is None, launcher.communicate()[0]
    time.sleep(0.1)
  launcher.send_signal(signal.SIGTERM)
  time.sleep(0.3)
  if launcher.poll() is None:
    launcher.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not skip deletion
  output = launcher.communicate(timeout=60)[0]
  assert launcher.returncode == 130, output
  assert 'still deleting slices; please wait' in output
  created, deleted, most = helpers.slice_lifetimes(state)
  assert len(created) == 2 and most == 2 and sorted(deleted) == sorted(created), output
  assert not os.listdir(os.path.join(state, 'qr'))
  states = [record.read(str(tmp_path / 'runs' / f'seed={s}'))['state'] for s in (1, 2, 3)]
  assert states == ['stopped'] * 3


def test_dry_run_prints_every_gcloud_command(capsys, tmp_path):
  assert launch.main(['--sweep', seeds_sweep(tmp_path, 2), '--workdir_root', 'gs://b/sweep',
                      '--backend', 'tpu-vm', '--zone', 'z1', '--accelerator_type', 'v5litepod-16',
                      '--reserved', '--project', 'p', '--data_dir', 'gs://b/tfds', '--dry_run']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('# archive of this checkout') and lines[1] == '# seed=1'
  create, describe, copy, ssh, delete = lines[2:7]
  name = create.split()[5]
  assert create == (f'gcloud compute tpus queued-resources create {name} --node-id={name} '
                    '--zone=z1 --project=p --accelerator-type=v5litepod-16 '
                    '--runtime-version=tpu-ubuntu2204-base --reserved')
  assert name.startswith('po-') and name.endswith('-0-1')
  assert copy.startswith(f'gcloud compute tpus tpu-vm scp ARCHIVE {name}:pretraining-objectives')
  assert ssh.endswith("&& export PRETRAINING_OBJECTIVES_DISTRIBUTED=1 && python3 train.py "
                      "--config configs/clm.py:tiny --workdir "
                      "gs://b/sweep/seed=1 --config.seed=1 --config.data.data_dir=gs://b/tfds'")
  assert delete.endswith('--zone=z1 --project=p --force --quiet')
  assert not os.path.exists(tmp_path / 'cloud')


def test_a_checkout_too_big_to_ship_is_refused_before_any_slice(tmp_path, monkeypatch, capsys):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={})
  monkeypatch.setattr('launching.backends.tpu_vm.MAX_ARCHIVE_BYTES', 1000)
  assert launch.main(['--sweep', seeds_sweep(tmp_path, 1), '--workdir_root',
                      str(tmp_path / 'runs'), *TPU]) == 2
  error = capsys.readouterr().err
  assert 'MiB (the largest file is ' in error and 'add data and outputs to .gitignore' in error
  assert not helpers.calls(state) and not os.path.exists(tmp_path / 'runs')


def test_launches_in_one_second_never_share_slice_names(monkeypatch):
  monkeypatch.setattr('time.time', lambda: 2_000_000_000.0)
  args = launch.parse_args(['--sweep', 's.py', '--workdir_root', 'gs://b/r', *TPU])
  run = sweep_lib.expand([{'config': 'configs/clm.py:tiny'}], 'gs://b/r')[0]
  names = {tpu_vm.TpuVm(args).slice_name(run, 1) for _ in range(20)}
  assert len(names) == 20
  assert all(re.fullmatch(r'po-[0-9a-z]{6}-0-1', name) for name in names)


def test_a_slice_name_taken_already_is_left_alone(tmp_path, monkeypatch, capsys):
  """Another launcher's slice with the name this one asks for is never deleted."""
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={'default': {'ssh': 'ok'}})
  monkeypatch.setattr('launching.backends.tpu_vm.secrets.randbelow', lambda n: 7)
  theirs = 'po-000007-0-1'
  assert subprocess.run(['gcloud', 'compute', 'tpus', 'queued-resources', 'create', theirs,
                         f'--node-id={theirs}', '--zone=us-central2-b'], check=False,
                        capture_output=True).returncode == 0
  root = str(tmp_path / 'runs')
  assert launch.main(['--sweep', seeds_sweep(tmp_path, 1), '--workdir_root', root,
                      '--max_retries', '1', '--log_dir', str(tmp_path / 'logs'), *TPU]) == 0
  created, deleted, _ = helpers.slice_lifetimes(state)
  assert created == [theirs, 'po-000007-0-2'] and deleted == ['po-000007-0-2']
  assert os.listdir(os.path.join(state, 'qr')) == [f'{theirs}.json']
  saved = record.read(os.path.join(root, 'clm-tiny'))
  assert (saved['state'], saved['attempts'], saved['failures']) == ('done', 2, 1)
  assert capsys.readouterr().out.count('ALREADY_EXISTS') == 1


def test_workers_join_with_jax_distributed_from_the_vm_metadata(monkeypatch):
  """A TPU VM slice's workers keep their list in the VM's metadata, which only JAX's own
  detection reads: the backend's variable makes train.py call initialize() with no arguments."""
  import jax

  from configs import base as base_config
  from training import distributed
  assert tpu_vm.DISTRIBUTED_ENV == distributed.INITIALIZE_ENV
  calls = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  for name in ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'OMPI_COMM_WORLD_SIZE',
               'SLURM_NTASKS', distributed.INITIALIZE_ENV):
    monkeypatch.delenv(name, raising=False)
  settings = base_config.get_config().distributed
  assert distributed.maybe_initialize(settings) is False and calls == []
  monkeypatch.setenv(distributed.INITIALIZE_ENV, '1')
  assert distributed.maybe_initialize(settings) is True and calls == [((), {})]
  settings.auto = False
  assert distributed.maybe_initialize(settings) is False and len(calls) == 1
