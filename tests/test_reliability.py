"""Failure handling end to end: killed runs, preemption, cut-off checkpoints, NaNs, bad disks."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import train
from training import loop
from configs import base as base_config
from objectives import clm as clm_objective
from objectives import registry
from tests.helpers import read_metrics, small_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN_OBJECTIVE = 'reliability_test_nan'
STEPS = 8  # where the runs stop (config.pause_at_step); all compile for TOTAL steps
TOTAL = 12


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)


def train_losses(workdir):
  """step -> loss of the last train record of that step; also checks repeats agree."""
  losses = {}
  for record in read_metrics(workdir):
    if record['split'] != 'train':
      continue
    step = record['step']
    if step in losses:
      assert losses[step] == record['loss'], f'step {step} logged twice with different losses'
    losses[step] = record['loss']
  return losses


def command(workdir, cache, **overrides):
  """A tiny CLM run of train.py on the command line."""
  settings = {'total_steps': TOTAL, 'pause_at_step': STEPS, 'batch_size': 8, 'seq_len': 64,
              'log_every': 1, 'eval_steps': 0, 'checkpoint_every': 2, 'optimizer.warmup_steps': 2,
              'optimizer.learning_rate': 3e-3, 'model.num_layers': 2, 'model.embed_dim': 64,
              'model.num_heads': 2, 'model.mlp_dim': 128, 'model.max_len': 64,
              'data.builtin_max_files': 120, 'data.vocab_size': 600,
              'data.data_dir': os.path.join(cache, 'tfds')}
  settings.update(overrides)
  return ([sys.executable, 'train.py', '--config', 'configs/clm.py:tiny', '--workdir', workdir] +
          [f'--config.{key}={value}' for key, value in settings.items()])


def environment(cache):
  env = dict(os.environ, PRETRAINING_OBJECTIVES_CACHE=cache)
  env.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  env.setdefault('JAX_PLATFORMS', 'cpu')
  # Runs of the same shapes reuse each other's compiled steps.
  env.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(cache, 'xla'))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  return env


def run_to_end(workdir, cache, launcher=(), returncode=0, **overrides):
  done = subprocess.run([*launcher, *command(workdir, cache, **overrides)], cwd=REPO,
                        env=environment(cache), capture_output=True, text=True, timeout=180)
  assert done.returncode == returncode, done.stderr[-3000:]
  return done


def last_logged_step(workdir):
  try:
    records = read_metrics(workdir)
  except (FileNotFoundError, json.JSONDecodeError):
    return 0
  return max((r['step'] for r in records if r['split'] == 'train'), default=0)


def start_and_signal(workdir, cache, signum, at_step, **overrides):
  """Starts a run, sends `signum` once `at_step` is logged; returns (returncode, stdout)."""
  process = subprocess.Popen(command(workdir, cache, **overrides), cwd=REPO,
                             env=environment(cache), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 150
    while last_logged_step(workdir) < at_step:
      assert process.poll() is None, 'the run ended before it could be signalled'
      assert time.time() < deadline, 'the run did not reach the step in time'
      time.sleep(0.02)
    os.kill(process.pid, signum)
    output, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  return process.returncode, output


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, shared_cache):
  """A run paused at STEPS, never interrupted, logging every step."""
  workdir = str(tmp_path_factory.mktemp('whole') / 'run')
  run_to_end(workdir, shared_cache)
  return workdir


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path, shared_cache, uninterrupted):
  whole = train_losses(uninterrupted)
  assert sorted(whole) == list(range(1, STEPS + 1))
  workdir = str(tmp_path / 'killed')
  returncode, _ = start_and_signal(workdir, shared_cache, signal.SIGKILL, at_step=5)
  assert returncode == -signal.SIGKILL
  before = train_losses(workdir)
  assert max(before) < STEPS, 'the run finished before the kill'
  done = run_to_end(workdir, shared_cache)
  assert 'Resumed from' in done.stdout
  parts = train_losses(workdir)
  assert parts == whole  # exact float equality, every step
  for step, loss in before.items():
    assert whole[step] == loss


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_143(tmp_path, shared_cache):
  workdir = str(tmp_path / 'preempted')
  total = TOTAL
  returncode, output = start_and_signal(workdir, shared_cache, signal.SIGTERM, at_step=3,
                                        pause_at_step=0, checkpoint_every=100)
  assert returncode == loop.PREEMPTED_EXIT_CODE, output[-3000:]
  assert 'Stopped by SIGTERM after step' in output
  stopped_at = int(output.split('Stopped by SIGTERM after step ')[1].split(':')[0])
  assert 3 <= stopped_at < total
  checkpoints = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert str(stopped_at) in checkpoints, checkpoints
  assert last_logged_step(workdir) == stopped_at
  done = run_to_end(workdir, shared_cache, pause_at_step=0, checkpoint_every=100)
  assert f'Resumed from {workdir} at step {stopped_at}.' in done.stdout
  steps = [r['step'] for r in read_metrics(workdir) if r['split'] == 'train']
  assert steps == list(range(1, total + 1))
  assert str(total) in os.listdir(os.path.join(workdir, 'checkpoints'))


@pytest.mark.slow
def test_partial_checkpoint_is_ignored(tmp_path, shared_cache, uninterrupted):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  assert str(STEPS) in os.listdir(checkpoints)
  # What orbax leaves behind when a write is cut off: `<step>.orbax-checkpoint-tmp-<timestamp>`.
  partial = os.path.join(checkpoints, f'{STEPS + 2}.orbax-checkpoint-tmp-1700000000000000')
  os.makedirs(os.path.join(partial, 'state'))
  with open(os.path.join(partial, 'state', '_METADATA'), 'w', encoding='utf-8') as f:
    f.write('{"tree_metadata": {')  # cut off mid-write
  done = run_to_end(workdir, shared_cache, pause_at_step=0)
  assert f'at step {STEPS}.' in done.stdout, done.stdout[-2000:]
  steps = [r['step'] for r in read_metrics(workdir) if r['split'] == 'train']
  assert steps == list(range(1, TOTAL + 1))
  assert str(TOTAL) in os.listdir(checkpoints)


@dataclasses.dataclass(frozen=True)
class NanLM(clm_objective.CausalLM):
  """Causal LM whose loss is always NaN."""

  def loss(self, outputs, targets):
    loss, metrics = super().loss(outputs, targets)
    return loss * np.float32(np.nan), metrics


@registry.register(NAN_OBJECTIVE)
def make_nan_objective(settings, *, vocab, seq_len):
  del settings, vocab, seq_len
  return NanLM()


def nan_config(cache, **overrides):
  config = base_config.get_config(NAN_OBJECTIVE, 'tiny')
  settings = dict(total_steps=4, log_every=1, eval_steps=0, checkpoint_every=2)
  settings.update(overrides)
  return small_run_config(config, cache, **settings)


def restored_params(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)


@pytest.mark.slow
def test_nonfinite_updates_are_skipped_and_counted(tmp_path, shared_cache):
  workdir = str(tmp_path / 'skip')
  train.run(nan_config(shared_cache, **{'nonfinite.max_consecutive': 100}), workdir)
  records = [r for r in read_metrics(workdir) if r['split'] == 'train']
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert [r['nonfinite_steps'] for r in records] == [1, 2, 3, 4]
  assert all('loss' not in r for r in records)  # a skipped step adds nothing to the averages
  early, late = restored_params(workdir, 2), restored_params(workdir, 4)
  assert int(early['step']) == 2 and int(late['step']) == 4
  assert int(late['nonfinite_total']) == 4 and int(late['nonfinite_streak']) == 4
  for a, b in zip(_leaves(early['params']), _leaves(late['params'])):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(_leaves(early['opt_state']), _leaves(late['opt_state'])):
    np.testing.assert_array_equal(a, b)


def _leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize('overrides, step', [
    ({'nonfinite.policy': 'stop'}, 1),
    ({'nonfinite.policy': 'skip', 'nonfinite.max_consecutive': 3}, 3),
])
@pytest.mark.slow
def test_nonfinite_stops_with_floating_point_error(tmp_path, shared_cache, overrides, step):
  with pytest.raises(FloatingPointError, match=rf'up to step {step} '):
    train.run(nan_config(shared_cache, total_steps=6, checkpoint_every=100, **overrides),
              str(tmp_path / 'stop'))


@pytest.mark.slow
def test_unwritable_metrics_file_is_a_clear_oserror(tmp_path, shared_cache):
  workdir = tmp_path / 'run'
  (workdir / 'metrics.jsonl').mkdir(parents=True)
  config = small_run_config(base_config.get_config('clm', 'tiny'), shared_cache, total_steps=1,
                            log_every=1, eval_steps=0)
  config.model.max_len = 64
  with pytest.raises(OSError, match='metrics.jsonl'):
    train.run(config, str(workdir))


@pytest.mark.slow
def test_stats_of_the_data_iterator_are_logged(uninterrupted):
  records = [r for r in read_metrics(uninterrupted) if r['split'] == 'train']
  documents = [r['data_documents'] for r in records]
  assert documents == sorted(documents) and documents[0] >= 1  # cumulative documents read
  assert all(r['data_skipped_empty'] == 0 for r in records)


@pytest.mark.parametrize('contents, line', [(None, None), ('x = 1\n\ndef get_config(:\n', 3)])
def test_broken_config_file_is_one_line_naming_file_and_line(tmp_path, contents, line):
  path = tmp_path / 'my_config.py'
  if contents is not None:
    path.write_text(contents)
  done = subprocess.run([sys.executable, 'train.py', '--config', f'{path}:tiny', '--workdir',
                         str(tmp_path / 'run')], cwd=REPO, capture_output=True, text=True,
                        timeout=60)
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1, done.stderr  # one line, no traceback
  where = f'{path}:{line}: SyntaxError' if line else f'{path} cannot be read: No such file'
  assert done.stderr.startswith('train.py: error: ') and where in done.stderr, done.stderr


FILE_SIZE_LIMIT = 64 << 10  # below orbax's array files, above metrics.jsonl and the rest
# Runs the command after it with writes past FILE_SIZE_LIMIT failing with EFBIG, as on a full
# disk (Python ignores SIGXFSZ, so the write fails instead of killing the process).
FULL_DISK = [sys.executable, '-c', 'import os, resource, sys; resource.setrlimit(resource.'
             f'RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, resource.RLIM_INFINITY)); '
             'os.execv(sys.argv[1], sys.argv[1:])']


@pytest.mark.slow
def test_full_disk_is_one_line_and_the_last_checkpoint_resumes(tmp_path, shared_cache,
                                                               uninterrupted):
  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  failed = run_to_end(workdir, shared_cache, launcher=FULL_DISK, returncode=1,
                      pause_at_step=STEPS + 2)
  last_line = failed.stderr.strip().splitlines()[-1]
  assert last_line.startswith('train.py: error: Cannot write the checkpoint '), failed.stderr
  assert f'{checkpoints}/{STEPS + 2}: File too large (errno 27)' in last_line
  assert f'the checkpoint of step {STEPS} is intact' in last_line
  noise = failed.stderr.strip().splitlines()  # orbax's own one-line reports come first
  assert len(noise) < 20 and 'Traceback' not in failed.stderr, failed.stderr[-3000:]
  assert sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())[-1] == STEPS
  assert int(restored_params(workdir, STEPS)['step']) == STEPS

  done = run_to_end(workdir, shared_cache, pause_at_step=STEPS + 2)  # space again
  assert f'Resumed from {workdir} at step {STEPS}.' in done.stdout
  losses = train_losses(workdir)  # steps logged before the failure are repeated exactly
  assert sorted(losses) == list(range(1, STEPS + 3))
  assert str(STEPS + 2) in os.listdir(checkpoints)


FULL_DISK_METRICS = r'''
import os, resource, sys
from training import metrics
path = os.path.join(sys.argv[1], 'metrics.jsonl')
writer = metrics.MetricWriter(sys.argv[1], enabled=True)
writer._tensorboard = None  # only metrics.jsonl is under test
writer.write(1, 'train', {'loss': 1.5})
limit = os.path.getsize(path) + 40  # the next record is longer: it would be cut off mid-line
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
try:
  writer.write(2, 'train', {'loss': 1.25, 'tokens_per_sec': 12345.678, 'note': 'x' * 80})
except metrics.WriteError as error:
  print(error)
'''


def test_full_disk_while_writing_metrics_leaves_no_partial_record(tmp_path):
  """A record that does not fit is one line of error and is not left half-written."""
  done = subprocess.run([sys.executable, '-c', FULL_DISK_METRICS, str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  message = done.stdout.strip()
  assert message.count('\n') == 0 and message.startswith(
      f'Cannot write metrics to {tmp_path}/metrics.jsonl: File too large'), done.stdout
  text = (tmp_path / 'metrics.jsonl').read_text()
  assert text.endswith('\n') and text.count('\n') == 1
  assert [r['step'] for r in read_metrics(str(tmp_path))] == [1]


def test_metrics_reader_and_writer_tolerate_a_partial_last_line(tmp_path):
  from training import metrics  # pylint: disable=import-outside-toplevel

  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "split": "tr')
  assert [r['step'] for r in metrics.read_records(str(path))] == [1]
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)  # a resumed run cuts it off
  writer.write(3, 'train', {'loss': 1.0})
  writer.close()
  assert [(r['step'], r['loss']) for r in metrics.read_records(str(path))] == [(1, 2.0), (3, 1.0)]
  assert [r['step'] for r in read_metrics(str(tmp_path))] == [1, 3]  # every line parses


def test_workdir_lock_refuses_a_second_run_and_takes_over_a_stale_lock(tmp_path):
  import socket  # pylint: disable=import-outside-toplevel

  from training import workdir_lock  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path / 'run')
  lock = os.path.join(workdir, workdir_lock.LOCK_NAME)
  with workdir_lock.workdir_lock(workdir) as held:
    assert held == lock
    owner = json.loads(open(lock, encoding='utf-8').read())
    assert owner['host'] == socket.gethostname() and owner['pid'] == os.getpid()
    with pytest.raises(workdir_lock.WorkdirLocked) as error:
      with workdir_lock.workdir_lock(workdir):
        pass
    assert str(error.value) == (f'{workdir} is in use by another run (pid {os.getpid()} on this '
                                'host): wait for it or use another --workdir.')
  assert not os.path.exists(lock)  # released

  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  with open(lock, 'w', encoding='utf-8') as f:  # a run killed without releasing it
    json.dump({'host': socket.gethostname(), 'pid': int(dead.stdout), 'time': time.time()}, f)
  with workdir_lock.workdir_lock(workdir):
    assert json.loads(open(lock, encoding='utf-8').read())['pid'] == os.getpid()
  with open(lock, 'w', encoding='utf-8') as f:  # this pid, but reused since the lock was taken
    json.dump({'host': socket.gethostname(), 'pid': os.getpid(), 'time': 1000.0}, f)
  with workdir_lock.workdir_lock(workdir):
    assert json.loads(open(lock, encoding='utf-8').read())['time'] > 1000.0

  with open(lock, 'w', encoding='utf-8') as f:
    json.dump({'host': 'other-host', 'pid': 1, 'time': time.time()}, f)
  with pytest.raises(workdir_lock.WorkdirLocked, match=f'run on host other-host .* delete {lock} '
                     'if that run is dead'):
    with workdir_lock.workdir_lock(workdir):
      pass
  assert json.loads(open(lock, encoding='utf-8').read())['host'] == 'other-host'  # untouched


@pytest.mark.slow
def test_corrupted_newest_checkpoint_resumes_from_the_one_before_exactly(tmp_path, shared_cache,
                                                                        uninterrupted):
  """Bytes of the newest checkpoint flipped on disk: one line names it, the run resumes from
  the previous one and repeats the lost steps bit for bit, and nothing intact is pruned."""
  from tests.helpers import biggest_file, corrupt  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path / 'run')
  shutil.copytree(uninterrupted, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  assert steps[-1] == STEPS and len(steps) >= 2
  corrupt(biggest_file(workdir, STEPS))
  done = run_to_end(workdir, shared_cache, pause_at_step=STEPS + 2)
  rejected = [line for line in done.stdout.splitlines() + done.stderr.splitlines()
              if 'cannot be restored' in line]
  assert len(rejected) == 1 and rejected[0].startswith(
      f'Checkpoint {checkpoints}/{STEPS} cannot be restored: '), done.stdout[-2000:]
  assert 'sha256' in rejected[0] and 'Traceback' not in done.stderr
  assert f'Resumed from {workdir} at step {steps[-2]}.' in done.stdout
  losses = train_losses(workdir)  # asserts every repeated step has the very same loss
  assert sorted(losses) == list(range(1, STEPS + 3))
  assert os.listdir(os.path.join(workdir, 'checkpoints_rejected'))[0].startswith(f'{STEPS}.')
  assert STEPS + 2 in [int(n) for n in os.listdir(checkpoints) if n.isdigit()]


def _text_run_config(tmp_path, shared_cache, objective='clm', **overrides):
  """A tiny run over a local text file of 60 three-sentence paragraphs, paused at step 2."""
  words = 'amber basin cedar delta ember fjord grove harbor inlet juniper'.split()
  rng = np.random.default_rng(0)
  paragraphs = ['. '.join(' '.join(rng.choice(words, 6)) for _ in range(3)).capitalize() + '.'
                for _ in range(60)]
  corpus = tmp_path / 'train.txt'
  corpus.write_text('\n\n'.join(paragraphs) + '\n')
  config = small_run_config(base_config.get_config(objective, 'tiny'), shared_cache,
                            total_steps=4, eval_steps=0, log_every=1, pause_at_step=2,
                            **overrides)
  config.data.update(source='text', train_files=str(corpus), vocab_size=320,
                     data_dir=str(tmp_path / 'tfds'))
  return config, corpus


@pytest.mark.slow
def test_a_run_resumes_across_on_the_fly_and_pretokenized_data(tmp_path, shared_cache):
  """Paused while reading text on the fly, resumed from the same corpus's pre-tokenized
  shards (another source, no train_files): the losses are the uninterrupted run's. MLM+NSP
  reads sentence pairs, whose random next segments also come from the shards; the streams of
  every format are equal on both paths (tests/test_reader.py)."""
  from data import pipeline, pretokenize  # pylint: disable=import-outside-toplevel
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  config, _ = _text_run_config(tmp_path, shared_cache, {'mlm': 1, 'nsp': 1})
  straight, cut = str(tmp_path / 'straight'), str(tmp_path / 'cut')
  train.run(config, cut)  # paused at step 2
  config.pause_at_step = 0
  train.run(config, straight)
  tokenizer = tokenizer_lib.Tokenizer(os.path.join(cut, 'tokenizer.model'))
  pretokenize.write(config.data, str(tmp_path / 'shards'), ['train'], 2, tokenizer,
                    pipeline.load_documents)
  config.data.update(source='pretokenized', pretokenized_dir=str(tmp_path / 'shards'),
                     train_files='')
  train.run(config, cut)
  want = [r for r in read_metrics(straight) if r['split'] == 'train']
  got = [r for r in read_metrics(cut) if r['split'] == 'train']
  assert [r['step'] for r in got] == [1, 2, 3, 4]
  assert [r['loss'] for r in got] == pytest.approx([r['loss'] for r in want], rel=1e-6)
  assert [r['tokens'] for r in got] == [r['tokens'] for r in want]


@pytest.mark.slow
def test_resume_on_an_edited_corpus_is_a_one_line_error_that_keeps_the_run(
    tmp_path, shared_cache):
  """The saved data position names its corpus: after the train file changed, resuming stops
  in one line naming the fix, and the workdir's records are untouched."""
  config, corpus = _text_run_config(tmp_path, shared_cache)
  workdir = str(tmp_path / 'run')
  train.run(config, workdir)
  before = {name: open(os.path.join(workdir, name), 'rb').read()
            for name in ('metrics.jsonl', 'config.json', 'status.json')}
  with open(corpus, 'a', encoding='utf-8') as f:
    f.write('\nA new closing paragraph. It changes the corpus.\n')
  with pytest.raises(train.SetupError) as error:
    train.run(config, workdir)
  message = str(error.value)
  assert message.startswith('The saved data position') and '\n' not in message
  assert 'different corpus' in message and 'start a new workdir' in message
  assert {name: open(os.path.join(workdir, name), 'rb').read() for name in before} == before
