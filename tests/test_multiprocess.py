"""Two processes on 127.0.0.1 (gloo), 2 CPU devices each, train exactly like one process with 4.

Both runs go through train.setup and train.train (tests/multiprocess_worker.py) on the same
synthetic global batches; the two-process run also shows that each process feeds only its
rows, that only process 0 logs and writes metrics, and that the checkpoint is written
collectively (it restores to the one-process parameters).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import train
from tests import multiprocess_worker as worker
from training import loop
from tests.helpers import FAST_COMPILE_FLAGS, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 180  # for all workers together; a hung collective fails here, not in CI's limit


def gloo_available() -> bool:
  try:
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel
  except ImportError:  # another jaxlib layout: let the run itself say what is missing
    return True
  return hasattr(_jax, 'make_gloo_tcp_collectives')


pytestmark = pytest.mark.skipif(not gloo_available(),
                                reason='this jaxlib has no gloo CPU collectives')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def worker_env(cache: str, devices: int, port: int = 0) -> dict[str, str]:
  """A worker's environment, set before it imports jax."""
  env = dict(os.environ, PRETRAINING_OBJECTIVES_CACHE=cache, JAX_PLATFORMS='cpu',
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo', PYTHONUNBUFFERED='1',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}')
  if port:
    env['JAX_COORDINATOR_BIND_ADDRESS'] = f'127.0.0.1:{port}'  # not every interface
  return env


class Workers:
  """Worker processes started together; waits for all, or stops all at the first failure."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self.procs: list[tuple[str, subprocess.Popen]] = []

  def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
    with open(self._log(name, 'out'), 'w') as out, open(self._log(name, 'err'), 'w') as err:
      self.procs.append((name, subprocess.Popen(
          [sys.executable, '-m', 'tests.multiprocess_worker', *args], cwd=REPO, env=env,
          stdout=out, stderr=err)))

  def wait(self, timeout: float) -> None:
    deadline, problem = time.time() + timeout, None
    try:
      while problem is None and any(proc.poll() is None for _, proc in self.procs):
        failed = [name for name, proc in self.procs if proc.poll() not in (None, 0)]
        if failed:
          problem = f'worker {failed[0]} failed; the others were stopped'
        elif time.time() > deadline:
          problem = f'workers still running after {timeout}s (a hang?) were stopped'
        else:
          time.sleep(0.2)
    finally:
      for _, proc in self.procs:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    failed = [name for name, proc in self.procs if proc.returncode]
    if problem is None and failed:
      problem = f'worker {failed[0]} failed'
    if problem:
      pytest.fail(f'{problem}.\n{self.logs()}')

  def stdout(self, name: str) -> str:
    with open(self._log(name, 'out'), encoding='utf-8', errors='replace') as f:
      return f.read()

  def logs(self, chars: int = 3000) -> str:
    parts = []
    for name, proc in self.procs:
      with open(self._log(name, 'err'), encoding='utf-8', errors='replace') as f:
        parts.append(f'--- {name} (exit {proc.returncode}) stderr tail ---\n{f.read()[-chars:]}')
    return '\n'.join(parts)

  def _log(self, name: str, stream: str) -> str:
    return os.path.join(self.logdir, f'{name}.{stream}')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, shared_cache):
  """Trains the one-process (4 devices) and two-process (2 x 2 devices) runs side by side."""
  root = tmp_path_factory.mktemp('multiprocess')
  # Build the corpus and tokenizer here once, so the three workers only read the cache.
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)
    train.setup(worker.worker_config(shared_cache), str(root / 'warm'))
  single, multi = str(root / 'single'), str(root / 'multi')
  workers = Workers(str(root))
  workers.start('single', ['--workdir', single, '--cache', shared_cache],
                worker_env(shared_cache, devices=4))
  port = free_port()
  for process in (0, 1):
    workers.start(f'process{process}',
                  ['--workdir', multi, '--cache', shared_cache, '--coordinator',
                   f'127.0.0.1:{port}', '--num_processes', '2', '--process_id', str(process)],
                  worker_env(shared_cache, devices=2, port=port))
  workers.wait(TIMEOUT_S)
  return {'single': single, 'multi': multi, 'workers': workers}


def report(workdir: str, process: int) -> dict:
  with open(os.path.join(workdir, f'worker_{process}.json'), encoding='utf-8') as f:
    return json.load(f)


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
  single = [r for r in read_metrics(runs['single']) if r['split'] == 'train']
  multi = [r for r in read_metrics(runs['multi']) if r['split'] == 'train']
  assert [r['step'] for r in multi] == [r['step'] for r in single] == list(
      range(1, worker.STEPS + 1))
  losses = [r['loss'] for r in single]
  assert len(set(losses)) == len(losses)  # new batches and updates: the loss moves
  assert all(r['nonfinite_steps'] == 0 and r['grad_norm'] > 0 for r in single + multi)
  np.testing.assert_allclose([r['loss'] for r in multi], losses, rtol=1e-5)
  np.testing.assert_allclose([r['grad_norm'] for r in multi], [r['grad_norm'] for r in single],
                             rtol=1e-4)


@pytest.mark.slow
def test_each_process_feeds_only_its_rows(runs):
  first, second = report(runs['multi'], 0), report(runs['multi'], 1)
  for process, seen in enumerate((first, second)):
    assert (seen['process_index'], seen['process_count']) == (process, 2)
    assert (seen['device_count'], seen['local_device_count']) == (4, 2)
    assert seen['initialized_again']  # a second setup keeps the live jax.distributed
  # Half the global batch each, no row twice: which half follows the mesh's device order.
  assert len(first['rows']) == len(second['rows']) == 4
  assert sorted(first['rows'] + second['rows']) == list(range(8))
  alone = report(runs['single'], 0)
  assert (alone['process_count'], alone['local_device_count'], alone['rows']) == (1, 4,
                                                                                list(range(8)))
  assert not alone['initialized_again']


@pytest.mark.slow
def test_only_process_zero_logs_and_writes_metrics(runs):
  steps = [(r['split'], r['step']) for r in read_metrics(runs['multi'])]
  assert steps == [('train', step) for step in range(1, worker.STEPS + 1)]  # no duplicates
  with open(os.path.join(runs['multi'], 'run.json'), encoding='utf-8') as f:
    assert json.load(f)['processes'] == 2
  progress = re.compile(r'^(step |.*M parameters \|)', re.M)
  assert len(progress.findall(runs['workers'].stdout('process0'))) == worker.STEPS + 1
  assert not progress.findall(runs['workers'].stdout('process1'))


@pytest.mark.slow
def test_checkpoint_is_written_collectively(runs):
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  def restore(workdir: str):
    path = os.path.join(workdir, 'checkpoints', str(worker.STEPS), 'state')
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=as_numpy)

  single, multi = restore(runs['single']), restore(runs['multi'])
  assert int(multi['step']) == worker.STEPS
  assert jax.tree.structure(multi) == jax.tree.structure(single)
  for got, want in zip(jax.tree.leaves(multi), jax.tree.leaves(single)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  data_states = sorted(os.listdir(os.path.join(runs['multi'], 'data_state')))
  assert data_states == [f'step_{worker.STEPS}.process_{p}.json' for p in (0, 1)]


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path, shared_cache, runs):
  """SIGTERM reaches one process only; jax's preemption sync stops both after the same step,
  with a collective checkpoint there, instead of one saving while the other trains (a hang)."""
  import signal  # pylint: disable=import-outside-toplevel

  del runs  # only orders this test after the cache is warm
  workdir = str(tmp_path / 'run')
  workers = Workers(str(tmp_path))
  port = free_port()
  for process in (0, 1):
    workers.start(f'process{process}',
                  ['--workdir', workdir, '--cache', shared_cache, '--steps', '500',
                   '--coordinator', f'127.0.0.1:{port}', '--num_processes', '2',
                   '--process_id', str(process)],
                  worker_env(shared_cache, devices=2, port=port))
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + TIMEOUT_S
  try:
    while not (os.path.exists(metrics) and len(read_metrics(workdir)) >= 3):
      if time.time() > deadline or any(p.poll() is not None for _, p in workers.procs):
        pytest.fail(f'the workers did not reach step 3.\n{workers.logs()}')
      time.sleep(0.2)
    workers.procs[1][1].send_signal(signal.SIGTERM)
    codes = [proc.wait(timeout=max(deadline - time.time(), 1)) for _, proc in workers.procs]
  finally:
    for _, proc in workers.procs:
      if proc.poll() is None:
        proc.kill()
  assert codes == [loop.PREEMPTED_EXIT_CODE] * 2, workers.logs()
  last = read_metrics(workdir)[-1]['step']
  assert last < 500
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(last)))
  assert sorted(os.listdir(os.path.join(workdir, 'data_state')))[-2:] == [
      f'step_{last}.process_{p}.json' for p in (0, 1)]
  assert 'Stopped by SIGTERM' in workers.stdout('process0')
