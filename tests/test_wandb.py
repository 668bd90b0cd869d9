"""The optional W&B writer: never required, never blocking, resumed into the same W&B run.

A stand-in `wandb` module checks the writer's behaviour when the service is slow or failing;
the real package (when installed) runs offline, and what it logged is read back from its
.wandb file with wandb's own reader (`wandb leet inspect --json`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import types

import pytest

from configs import base as base_config
from training import checks, metrics


class FakeRun:
  def __init__(self, log):
    self.step, self._log = 0, log

  def log(self, scalars, step):
    self._log.append((step, dict(scalars)))

  def finish(self, exit_code=0):
    self._log.append(('finish', exit_code))


def fake_wandb(monkeypatch, init):
  module = types.SimpleNamespace(init=init, Settings=lambda **kw: kw)
  monkeypatch.setitem(sys.modules, 'wandb', module)


SETTINGS = {'enabled': True, 'project': 'p', 'entity': '', 'group': ''}


def in_thread(fn, timeout: float = 60.0):
  """Runs fn(), failing the test instead of hanging it when fn blocks."""
  thread = threading.Thread(target=fn, daemon=True)
  thread.start()
  thread.join(timeout)
  assert not thread.is_alive(), f'blocked for {timeout} s'


def test_enabled_without_the_package_is_one_line_naming_the_setting(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'wandb' else real(name, *a))
  config = base_config.get_config('clm', 'tiny')
  checks.check_values(config)  # off by default: nothing needed
  config.logging.wandb.enabled = True
  with pytest.raises(ValueError, match=r"^config.logging.wandb.enabled=True needs the wandb "
                     r"package: pip install 'pretraining-objectives\[wandb\]'"):
    checks.check_values(config)


def test_a_slow_service_never_blocks_a_write(tmp_path, monkeypatch):
  logged, warnings, release = [], [], threading.Event()

  def slow_init(**kwargs):
    release.wait(60)  # the service answers only when the test lets it
    return FakeRun(logged)

  fake_wandb(monkeypatch, slow_init)
  monkeypatch.setattr(metrics.WandbWriter, 'QUEUE_SIZE', 4)
  writer = metrics.WandbWriter(str(tmp_path), SETTINGS, {}, warn=warnings.append)
  in_thread(lambda: [writer.write(step, {'train/loss': 1.0 / step}) for step in range(1, 11)])
  assert warnings == ['Warning: W&B is not keeping up: records from step 5 on are not sent to '
                      'W&B until it catches up (metrics.jsonl has every record).']
  release.set()
  writer.close()
  assert logged == [(step, {'train/loss': 1.0 / step}) for step in range(1, 5)] + [('finish', 0)]


def test_a_service_that_never_answers_delays_closing_by_a_bounded_wait(tmp_path, monkeypatch):
  warnings, never = [], threading.Event()
  fake_wandb(monkeypatch, lambda **kwargs: never.wait(600))
  monkeypatch.setattr(metrics.WandbWriter, 'CLOSE_SECONDS', 0.2)
  writer = metrics.WandbWriter(str(tmp_path), SETTINGS, {}, warn=warnings.append)
  writer.write(1, {'train/loss': 2.0})
  in_thread(writer.close)
  assert warnings == [f'Warning: W&B did not finish within 0.2 s; what it has not sent is in '
                      f'{tmp_path}/wandb (send it with `wandb sync`).']
  never.set()


def test_a_failing_service_is_one_warning_and_training_goes_on(tmp_path, monkeypatch):
  warnings = []

  def unreachable(**kwargs):
    raise ConnectionError('api.wandb.ai: Name or service not known\nsecond line')

  fake_wandb(monkeypatch, unreachable)
  writer = metrics.MetricWriter(str(tmp_path), enabled=True, extra=[
      metrics.WandbWriter(str(tmp_path), SETTINGS, {}, warn=warnings.append)])
  for step in range(1, 4):
    writer.write(step, 'train', {'loss': 1.0})
  writer.close()
  assert warnings == ['Warning: W&B logging stopped (ConnectionError: api.wandb.ai: Name or '
                      'service not known); training goes on and metrics.jsonl has every record '
                      '(config.logging.wandb).']
  assert [r['step'] for r in metrics.read_records(str(tmp_path / 'metrics.jsonl'))] == [1, 2, 3]


def test_the_run_is_named_after_the_workdir_and_keeps_its_id(tmp_path, monkeypatch):
  calls = []
  fake_wandb(monkeypatch, lambda **kwargs: calls.append(kwargs) or FakeRun([]))
  workdir = tmp_path / 'sweep_7' / 'lr_0.001'
  workdir.mkdir(parents=True)
  for group in ('', 'mine'):
    writer = metrics.WandbWriter(str(workdir), dict(SETTINGS, group=group), {'seed': 3})
    writer.close()
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  assert len(run_id) == 16
  for call, group in zip(calls, ('sweep_7', 'mine')):
    assert {k: v for k, v in call.items() if k != 'settings'} == {
        'project': 'p', 'entity': None, 'group': group, 'name': 'lr_0.001', 'id': run_id,
        'resume': 'allow', 'config': {'seed': 3}, 'dir': str(workdir)}


# -- the real package, offline ---------------------------------------------------------------

def history(workdir: str) -> list[dict]:
  """Every history row W&B wrote under workdir/wandb, in order, read with wandb's own reader."""
  rows = []
  folder = os.path.join(workdir, 'wandb')
  for run_dir in sorted(d for d in os.listdir(folder) if d.startswith('offline-run-')):
    (name,) = [n for n in os.listdir(os.path.join(folder, run_dir)) if n.endswith('.wandb')]
    done = subprocess.run([sys.executable, '-m', 'wandb', 'leet', 'inspect', '--json',
                           os.path.join(folder, run_dir, name)], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode:
      pytest.skip(f'this wandb cannot read its .wandb files back: {done.stderr.strip()[-200:]}')
    for line in done.stdout.splitlines():
      record = json.loads(line)
      if record['type'] == 'run':
        rows.append({'run': record['run']})
      elif record['type'] == 'history':
        item = record['history']['item']
        rows.append({k: v for k, v in item.items() if not k.startswith('_')} |
                    {'_step': item['_step']})
  return rows


def expected_rows(workdir: str) -> dict[int, dict]:
  """step -> every finite scalar metrics.jsonl holds for it, as `split/name`."""
  rows: dict[int, dict] = {}
  for record in metrics.read_records(os.path.join(workdir, 'metrics.jsonl')):
    row = rows.setdefault(record['step'], {})
    row.update({f'{record["split"]}/{k}': v for k, v in record.items()
                if k not in ('step', 'split', 'time') and math.isfinite(v)})
  return rows


@pytest.mark.slow
def test_offline_wandb_logs_every_record_and_resumes_into_the_same_run(tmp_path, monkeypatch):
  pytest.importorskip('wandb')
  monkeypatch.setenv('WANDB_MODE', 'offline')
  monkeypatch.setenv('WANDB_SILENT', 'true')
  workdir = str(tmp_path / 'compare' / 'clm_seed0')
  os.makedirs(workdir)
  settings = dict(SETTINGS, project='objectives')

  def run(steps):
    writer = metrics.MetricWriter(workdir, enabled=True, extra=[
        metrics.WandbWriter(workdir, settings, {'seed': 0, 'model': {'num_layers': 2}})])
    for step in steps:
      writer.write(step, 'train', {'loss': 10.0 / step, 'mfu': float('nan'), 'tokens': 64 * step})
      if step % 4 == 0:
        writer.write(step, 'eval', {'loss': 9.0 / step, 'accuracy': step / 100})
    writer.close()

  run(range(1, 7))
  run(range(7, 10))  # a resumed run: the same W&B run, in a second offline folder
  rows = history(workdir)
  runs = [row['run'] for row in rows if 'run' in row]
  run_id = open(os.path.join(workdir, 'wandb_run_id')).read().strip()
  assert [(r['run_id'], r['display_name'], r['run_group'], r['project']) for r in runs] == [
      (run_id, 'clm_seed0', 'compare', 'objectives')] * 2
  assert json.loads(json.dumps(runs[0]['config']['update']))['model'] == {'num_layers': 2}
  logged = {row['_step']: {k: v for k, v in row.items() if k != '_step'}
            for row in rows if 'run' not in row}
  assert logged == expected_rows(workdir)
  assert sorted(logged) == list(range(1, 10))
  assert set(logged[4]) == {'train/loss', 'train/tokens', 'eval/loss', 'eval/accuracy'}


@pytest.mark.slow
def test_a_training_run_logs_its_records_to_offline_wandb(tmp_path, shared_cache, monkeypatch):
  pytest.importorskip('wandb')
  import train  # pylint: disable=import-outside-toplevel

  for name, value in (('WANDB_MODE', 'offline'), ('WANDB_SILENT', 'true'),
                      ('WANDB_CONSOLE', 'off'), ('PRETRAINING_OBJECTIVES_CACHE', shared_cache)):
    monkeypatch.setenv(name, value)
  config = base_config.get_config('clm', 'tiny')
  config.update(total_steps=4, batch_size=8, seq_len=32, log_every=2, eval_every=4,
                eval_steps=1, checkpoint_every=4)
  config.optimizer.warmup_steps = 1
  config.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, max_len=32)
  config.data.update(builtin_max_files=60, vocab_size=600,
                     data_dir=os.path.join(shared_cache, 'tfds'))
  config.logging.wandb.update(enabled=True, project='objectives')
  workdir = str(tmp_path / 'sweep_1' / 'clm')
  train.run(config, workdir)
  rows = history(workdir)
  (run,) = [row['run'] for row in rows if 'run' in row]
  assert (run['display_name'], run['run_group']) == ('clm', 'sweep_1')
  assert run['config']['update']['total_steps'] == 4
  logged = {row['_step']: {k: v for k, v in row.items() if k != '_step'}
            for row in rows if 'run' not in row}
  assert sorted(logged) == [0, 2, 4] and logged == expected_rows(workdir)
  assert {'train/loss', 'train/tokens', 'eval/loss'} <= set(logged[4])
