"""A full disk ends a run within seconds, with one line, and loses nothing already written.

Without root the failures are simulated (a per-file size limit, an OSError from `os.write`);
as root a small tmpfs is filled for real (skipped where it cannot be mounted).
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from training import loop, metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES = {f'metric_{i:02d}': 0.5 + i for i in range(16)}  # 16 scalars a record


def read_metrics(workdir: str) -> list[dict]:
  """Every record of metrics.jsonl, each line checked to be whole."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    text = f.read()
  assert text.endswith('\n'), 'a partial last line'
  return [json.loads(line) for line in text.splitlines()]


def event_records(logdir: str) -> list:
  """Every event of the one event file in `logdir`, each record's framing and CRCs checked."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel

  (name,) = os.listdir(logdir)
  assert name.startswith('events.out.tfevents.')
  with open(os.path.join(logdir, name), 'rb') as f:
    data = f.read()
  events, offset = [], 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack('Q', header)
    assert struct.unpack('I', data[offset + 8:offset + 12])[0] == masked_crc32c(header)
    payload = data[offset + 12:offset + 12 + length]
    assert len(payload) == length, 'a record cut off part way'
    assert struct.unpack('I', data[offset + 12 + length:offset + 16 + length])[0] == \
        masked_crc32c(payload)
    events.append(event_pb2.Event.FromString(payload))
    offset += 16 + length
  return events


def scalar_steps(logdir: str) -> list[int]:
  """Steps of the scalar events; checks each holds every value of VALUES under train/."""
  steps = []
  for event in event_records(logdir)[1:]:  # the first is the file version
    assert {v.tag: v.simple_value for v in event.summary.value} == {
        f'train/{k}': np.float32(v) for k, v in VALUES.items()}
    steps.append(event.step)
  return steps


WRITE_UNTIL_FULL = r'''
import os, resource, sys
from training import metrics
writer = metrics.MetricWriter(sys.argv[1], enabled=True)
values = {f'metric_{i:02d}': 0.5 + i for i in range(16)}
# Files may not grow past 16 KiB: the event file reaches it first (EFBIG, as on a full disk).
resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, resource.RLIM_INFINITY))
try:
  for step in range(1, 1000):
    writer.write(step, 'train', values)
except metrics.WriteError as error:
  print(error)
  sys.exit(1)
'''


def test_a_failed_event_write_stops_the_writer_at_once(tmp_path):
  """tensorboardX's writer thread died on the failed write and its caller then blocked forever
  on the full queue; now the write that fails raises, and every file holds whole records."""
  done = subprocess.run([sys.executable, '-c', WRITE_UNTIL_FULL, str(tmp_path)], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 1, done.stderr[-2000:]
  message = done.stdout.strip()
  assert message.count('\n') == 0 and message.startswith(
      f'Cannot write TensorBoard events to {tmp_path}/tensorboard/events.out.tfevents.'), message
  assert 'File too large' in message and 'Traceback' not in done.stderr
  logged = [r['step'] for r in read_metrics(str(tmp_path))]
  # The failing step's line reached metrics.jsonl; its event was cut back off the event file.
  assert logged == list(range(1, len(logged) + 1)) and len(logged) > 2
  assert scalar_steps(str(tmp_path / 'tensorboard')) == logged[:-1]


def test_enospc_part_way_through_an_event_is_cut_back(tmp_path, monkeypatch):
  writer = metrics.MetricWriter(str(tmp_path), enabled=True)
  writer.write(1, 'train', VALUES)
  (name,) = os.listdir(tmp_path / 'tensorboard')
  events = tmp_path / 'tensorboard' / name
  size = events.stat().st_size
  real_write = os.write

  def half_then_full(fd, data):  # the event file takes half the bytes, then the disk is full
    if 'tfevents' not in os.readlink(f'/proc/self/fd/{fd}'):
      return real_write(fd, data)
    if os.fstat(fd).st_size == size:
      return real_write(fd, data[:len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'write', half_then_full)
  with pytest.raises(metrics.WriteError, match=r'^Cannot write TensorBoard events to .*: No space '
                     'left on device. Free disk space'):
    writer.write(2, 'train', VALUES)
  monkeypatch.undo()
  assert events.stat().st_size == size
  assert scalar_steps(str(tmp_path / 'tensorboard')) == [1]
  writer.write(3, 'train', VALUES)  # space again: the same file goes on
  writer.close()
  assert scalar_steps(str(tmp_path / 'tensorboard')) == [1, 3]
  assert [r['step'] for r in read_metrics(str(tmp_path))] == [1, 2, 3]


def test_status_is_rewritten_in_place_when_no_new_file_fits(tmp_path):
  loop.write_status(str(tmp_path), 'running', 4)
  (tmp_path / 'status.json.tmp').mkdir()  # the atomic write's temporary file cannot be made
  loop.write_status(str(tmp_path), 'failed', reason='Cannot write metrics: No space left.')
  status = json.loads((tmp_path / 'status.json').read_text())
  assert (status['state'], status['step'], status['reason']) == (
      'failed', None, 'Cannot write metrics: No space left.')


def test_a_status_that_cannot_be_written_is_a_one_line_write_error(tmp_path):
  (tmp_path / 'status.json').mkdir()
  with pytest.raises(metrics.WriteError, match=rf'^Cannot write status.json to {tmp_path}/'
                     r'status.json: Is a directory\. Free disk space'):
    loop.write_status(str(tmp_path), 'running', 0)
  assert not (tmp_path / 'status.json.tmp').exists()


# -- a real full disk (root only) ------------------------------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
  """A 3 MB tmpfs, unmounted afterwards; skips unless this process may mount one."""
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root')
  mount = tmp_path / 'tmpfs'
  mount.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)],
                        capture_output=True, text=True, check=False)
  if done.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  try:
    yield mount
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


def fill(directory) -> str:
  """Fills the file system of `directory` to its last byte; returns the filler's path."""
  path = os.path.join(directory, 'filler')
  fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
  try:
    for chunk in (1 << 16, 1 << 12, 1):
      try:
        while True:
          os.write(fd, b'\0' * chunk)
      except OSError as error:
        assert error.errno == errno.ENOSPC
  finally:
    os.close(fd)
  return path


def in_thread(fn, timeout: float = 60.0):
  """fn()'s result, failing the test (instead of hanging it) if it has not returned in time."""
  outcome = {}

  def target():
    try:
      outcome['value'] = fn()
    except BaseException as error:  # pylint: disable=broad-exception-caught
      outcome['error'] = error

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout)
  assert not thread.is_alive(), f'still blocked after {timeout} s'
  if 'error' in outcome:
    raise outcome['error']
  return outcome.get('value')


def test_writers_on_a_full_tmpfs_fail_at_once_and_go_on_when_space_is_freed(tmpfs):
  workdir = str(tmpfs / 'run')
  os.mkdir(workdir)
  loop.write_status(workdir, 'running', 0)
  writer = metrics.MetricWriter(workdir, enabled=True)
  writer.write(1, 'train', VALUES)
  filler = fill(tmpfs)

  def write_until_full():
    for step in range(2, 2000):
      writer.write(step, 'train', VALUES)

  with pytest.raises(metrics.WriteError, match='No space left on device'):
    in_thread(write_until_full)
  loop.write_status(workdir, 'failed', reason='disk full')  # in place: no new file fits
  assert json.loads(open(os.path.join(workdir, 'status.json')).read())['state'] == 'failed'
  logged = [r['step'] for r in read_metrics(workdir)]  # every line whole
  tensorboard = os.path.join(workdir, 'tensorboard')
  assert logged == list(range(1, len(logged) + 1))
  written = scalar_steps(tensorboard)  # every record whole
  assert written == logged[:len(written)] and len(logged) - len(written) in (0, 1)

  os.remove(filler)  # space again: a new writer appends after the whole records
  writer = metrics.MetricWriter(workdir, enabled=True)
  writer.write(len(logged) + 1, 'train', VALUES)
  assert [r['step'] for r in read_metrics(workdir)] == list(range(1, len(logged) + 2))


def train_command(workdir: str, cache: str, **overrides) -> list[str]:
  settings = {'total_steps': 12, 'batch_size': 8, 'seq_len': 64, 'log_every': 1,
              'eval_steps': 0, 'checkpoint_every': 4, 'optimizer.warmup_steps': 2,
              'model.num_layers': 1, 'model.embed_dim': 32, 'model.num_heads': 2,
              'model.mlp_dim': 64, 'model.max_len': 64, 'data.builtin_max_files': 120,
              'data.vocab_size': 600, 'data.data_dir': os.path.join(cache, 'tfds')}
  settings.update(overrides)
  return ([sys.executable, 'train.py', '--config', 'configs/clm.py:tiny', '--workdir', workdir] +
          [f'--config.{key}={value}' for key, value in settings.items()])


@pytest.mark.slow
def test_a_run_on_a_disk_that_fills_up_fails_in_one_line_and_resumes(tmpfs, shared_cache):
  """The disk fills once the checkpoint of step 4 is written: the run ends with one line
  (whichever writer fails first), says so in status.json, and runs again from step 4."""
  workdir = str(tmpfs / 'run')
  env = dict(os.environ, PRETRAINING_OBJECTIVES_CACHE=shared_cache)
  run = subprocess.Popen(train_command(workdir, shared_cache), cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    in_thread(lambda: wait_for(os.path.join(workdir, 'checkpoints', '4'), run), timeout=300)
    filler = fill(tmpfs)
    _, stderr = run.communicate(timeout=60)
  finally:
    run.kill()
  assert run.returncode == 1, stderr[-3000:]
  line = stderr.strip().splitlines()[-1]
  assert line.startswith('train.py: error: Cannot write ') and 'No space left on device' in line
  assert 'Traceback' not in stderr, stderr[-3000:]
  status = json.loads(open(os.path.join(workdir, 'status.json')).read())
  assert status['state'] == 'failed' and status['reason'] == line.removeprefix('train.py: error: ')
  logged = [r['step'] for r in read_metrics(workdir) if r['split'] == 'train']
  assert logged == list(range(1, len(logged) + 1)) and logged[-1] >= 4
  assert sorted(n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()) == ['4']

  os.remove(filler)
  done = subprocess.run(train_command(workdir, shared_cache, total_steps=5), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f'Resumed from {workdir} at step 4.' in done.stdout
  assert [r['step'] for r in read_metrics(workdir) if r['split'] == 'train'] == [1, 2, 3, 4, 5]
  assert json.loads(open(os.path.join(workdir, 'status.json')).read())['state'] == 'done'


def wait_for(path: str, process: subprocess.Popen) -> None:
  while not os.path.exists(path):
    assert process.poll() is None, 'the run ended before writing ' + path
    threading.Event().wait(0.02)
