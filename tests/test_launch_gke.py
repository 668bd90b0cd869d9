"""The GKE backend: JobSet manifests that parse as YAML with the topology, slice count and
command, applied through a fake kubectl, and a refused apply recorded as a failed run."""

from __future__ import annotations

import os
import json
import shlex
import subprocess
import sys
import time

import yaml

from tests import launch_helpers as helpers
from launching import record, sweep as sweep_lib
from launching.backends import gke
from tools import launch

GKE = ['--backend', 'gke', '--image', 'us-docker.pkg.dev/p/r/po:1', '--tpu_accelerator',
       'tpu-v5p-slice', '--topology', '4x4x4', '--num_slices', '2', '--gke_spot']


def sweep(tmp_path) -> str:
  return helpers.write_sweep(str(tmp_path / 'sweep.py'), [
      {'config': 'configs/compare.py:mlm_nsp:base', 'seed': s} for s in (1, 2, 3)])


def check_jobset(jobset: dict, seed: int) -> None:
  assert (jobset['apiVersion'], jobset['kind']) == ('jobset.x-k8s.io/v1alpha2', 'JobSet')
  assert jobset['metadata']['annotations']['pretraining-objectives/run'] == f'seed={seed}'
  assert jobset['spec']['failurePolicy'] == {'maxRestarts': 2}
  (job,) = jobset['spec']['replicatedJobs']
  assert job['replicas'] == 2  # slices
  spec = job['template']['spec']
  assert spec['parallelism'] == spec['completions'] == 16  # 64 chips, 4 per host
  pod = spec['template']['spec']
  assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': 'tpu-v5p-slice',
                                 'cloud.google.com/gke-tpu-topology': '4x4x4',
                                 'cloud.google.com/gke-spot': 'true'}
  (container,) = pod['containers']
  assert container['resources']['limits']['google.com/tpu'] == 4
  assert container['command'][:2] == ['bash', '-c']
  script = container['command'][2].splitlines()
  assert script[0] == 'cd /app || exit 1'
  train = shlex.split(next(line for line in script if line.startswith('python3 train.py')))
  assert train[:train.index('>')] == [
      'python3', 'train.py', '--config', 'configs/compare.py:mlm_nsp:base', '--workdir',
      f'gs://b/sweep/seed={seed}', f'--config.seed={seed}']
  env = {e['name']: e for e in container['env']}
  assert env['RESTART_ATTEMPT']['valueFrom']['fieldRef']['fieldPath'] == \
      "metadata.annotations['jobset.sigs.k8s.io/restart-attempt']"
  assert env['MEGASCALE_NUM_SLICES']['value'] == '2'
  assert env['MEGASCALE_SLICE_ID']['valueFrom']['fieldRef']['fieldPath'] == \
      "metadata.labels['jobset.sigs.k8s.io/job-index']"


def test_dry_run_manifests_parse_with_topology_slices_and_command(tmp_path, capsys):
  assert launch.main(['--sweep', sweep(tmp_path), '--workdir_root', 'gs://b/sweep',
                      '--max_retries', '2', '--dry_run', *GKE]) == 0
  text = capsys.readouterr().out
  assert text.splitlines()[0] == '# each manifest below is applied with: kubectl apply -f -'
  jobsets = [doc for doc in yaml.safe_load_all(text) if doc]
  assert len(jobsets) == 3
  for seed, jobset in zip((1, 2, 3), jobsets):
    check_jobset(jobset, seed)
  assert len({j['metadata']['name'] for j in jobsets}) == 3


def test_apply_through_kubectl_and_record_a_refusal(tmp_path, monkeypatch, capsys):
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={})
  root = str(tmp_path / 'runs')
  args = ['--sweep', sweep(tmp_path), '--workdir_root', 'gs://b/sweep', '--max_retries', '2',
          '--kube_context', 'ctx', *GKE]
  # Workdirs must be gs://, which this machine cannot write: the check refuses a local root,
  # and with the check lifted the launch writes its records under a local root instead.
  assert launch.main(args[:3] + [root] + args[4:]) == 2
  assert 'gs://' in capsys.readouterr().err
  monkeypatch.setattr('launching.backends.gke.Gke.check', lambda self, runs: None)
  assert launch.main(args[:3] + [root] + args[4:]) == 0
  applied = helpers.calls(state, 'kubectl')
  assert [c['args'] for c in applied] == [['--context=ctx', 'apply', '-f', '-']] * 3
  with open(applied[0]['manifest'], encoding='utf-8') as f:
    jobset = yaml.safe_load(f)
  assert jobset['spec']['replicatedJobs'][0]['replicas'] == 2
  saved = record.read(os.path.join(root, 'seed=1'))
  assert saved['where'] == f'jobset {jobset["metadata"]["name"]}' and saved['state'] == 'queued'
  helpers.write_script(state, {'kubectl': 'fail'})
  assert launch.main(args[:3] + [root] + args[4:]) == 1
  saved = record.read(os.path.join(root, 'seed=2'))
  assert saved['state'] == 'failed'
  assert saved['reason'].startswith('kubectl apply failed: exit code 1: error: resource mapping '
                                    'not found')


def test_the_pod_script_records_a_failure_only_from_the_first_pod(tmp_path, monkeypatch):
  """The container script, run here as two pods of a run whose config file does not exist:
  train.py refuses it (exit 2, nothing retried) and only pod 0 of slice 0 writes launch.json."""
  state = str(tmp_path / 'cloud')
  helpers.use_fakes(monkeypatch, state, script={})
  monkeypatch.setattr('launching.backends.gke.Gke.check', lambda self, runs: None)
  monkeypatch.setattr('launching.sweep.check_keys', lambda runs: None)  # train.py refuses it here
  entries = [{'config': 'configs/nope.py', 'seed': 1}]
  root = str(tmp_path / 'runs')
  args = ['--sweep', helpers.write_sweep(str(tmp_path / 'sweep.py'), entries), '--workdir_root',
          root, '--image_repo_dir', helpers.REPO, *GKE]
  assert launch.main(args) == 0
  with open(helpers.calls(state, 'kubectl')[0]['manifest'], encoding='utf-8') as f:
    jobset = yaml.safe_load(f)
  command = jobset['spec']['replicatedJobs'][0]['template']['spec']['template']['spec'][
      'containers'][0]['command']
  workdir = os.path.join(root, 'nope')
  codes = []
  for pod in ('1', '0'):  # the second pod first: it must leave the record alone
    env = dict(os.environ, JOB_COMPLETION_INDEX=pod, SLICE_INDEX='0', RESTART_ATTEMPT='0',
               TMPDIR=str(tmp_path))
    codes.append(subprocess.run(command, env=env, capture_output=True, check=False).returncode)
    if pod == '1':
      assert record.read(workdir)['state'] == 'queued'
  assert codes == [2, 2]
  saved = record.read(workdir)
  assert (saved['state'], saved['attempts'], saved['failures']) == ('failed', 1, 1)
  assert saved['reason'].startswith('--config file configs/nope.py cannot be read')


def test_the_pod_script_passes_sigterm_to_train_py_and_keeps_every_argument(tmp_path):
  """The pod's bash gets the pod's SIGTERM (as PID 1 in a pod) and must pass it to train.py,
  which saves and exits 143; the run is then recorded as preempted. The arguments, through
  YAML and bash, reach train.py exactly."""
  root = str(tmp_path / 'my runs')
  tricky = {'objective': "{'mlm': 1, 'sop': 1}",
            'data.train_files': '/d/it\'s a "file" $HOME `x`.txt', 'seed': 1}
  sweep_file = helpers.write_sweep(str(tmp_path / 'sweep.py'),
                                   [{'config': 'configs/bert.py:tiny', **tricky}])
  args = launch.parse_args(['--sweep', sweep_file, '--workdir_root', root, *GKE,
                            '--image_repo_dir', helpers.REPO])
  (run,) = sweep_lib.expand(sweep_lib.load_sweep(sweep_file), root)
  backend = gke.Gke(args)
  pod = yaml.safe_load(backend.manifest_text(run))['spec']['replicatedJobs'][0]['template'][
      'spec']['template']['spec']
  command = pod['containers'][0]['command']
  record.RunRecord.start(run.workdir, name=run.name, config=run.config,
                         overrides=dict(run.overrides), command=backend.record_command(run),
                         backend='gke')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  marks = tmp_path / 'marks'
  (bin_dir / 'python3').write_text(f"""#!{sys.executable}
import json, os, signal, sys, time
if sys.argv[1] != 'train.py':  # python3 -m launching.mark ...
  os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])
def saved(*_):
  open({str(marks)!r} + '.saved', 'w').close()
  sys.exit(143)
signal.signal(signal.SIGTERM, saved)
with open({str(marks)!r} + '.argv', 'w') as f:
  json.dump(sys.argv[1:], f)
print('step 1', flush=True)
while True:
  time.sleep(0.05)
""")
  (bin_dir / 'python3').chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
             JOB_COMPLETION_INDEX='0', SLICE_INDEX='0', RESTART_ATTEMPT='0', TMPDIR=str(tmp_path))
  pod_process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while not os.path.exists(f'{marks}.argv'):
    assert time.time() < deadline and pod_process.poll() is None, pod_process.communicate()[0]
    time.sleep(0.05)
  pod_process.terminate()  # what the kubelet sends the container's first process
  output = pod_process.communicate(timeout=60)[0]
  assert pod_process.returncode == 143, output
  assert os.path.exists(f'{marks}.saved')
  assert 'step 1' in output  # the output still reaches the pod's log
  with open(f'{marks}.argv', encoding='utf-8') as f:
    assert json.load(f) == ['train.py', '--config', 'configs/bert.py:tiny', '--workdir',
                            os.path.join(root, 'bert-tiny'),
                            "--config.objective={'mlm': 1, 'sop': 1}",
                            '--config.data.train_files=/d/it\'s a "file" $HOME `x`.txt',
                            '--config.seed=1']
  saved = record.read(run.workdir)
  assert (saved['state'], saved['attempts'], saved['preemptions'], saved['failures']) == (
      'preempted', 1, 1, 0)
