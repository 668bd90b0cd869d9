"""The training loop and the command line around it: budgets, resume bookkeeping, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

import train
from configs import base, bert, clm
from tests.helpers import run_records, small_run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'train.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=env)


def test_configs_load_without_jax_and_objective_defaults_match_the_registry():
  code = ('import sys; from configs import bert, clm, mlm, plm; '
          '[m.get_config() for m in (bert, clm, mlm, plm)]; '
          'print("jax" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip() == 'False'
  from objectives import registry, sections  # pylint: disable=import-outside-toplevel
  # Every objective of objectives/ has its section (tests register more, from elsewhere).
  shipped = {name for name in registry.names()
             if registry.get_factory(name).__module__.startswith('objectives.')}
  assert shipped == set(sections.SECTIONS)
  assert {'clm', 'mlm', 'nsp', 'sop', 'plm', 'electra'} <= shipped
  for name in shipped:
    assert registry.defaults(name) == sections.SECTIONS[name], name


def test_an_objective_of_the_folder_without_a_config_section_is_refused():
  from objectives import registry  # pylint: disable=import-outside-toplevel

  def make(settings, *, vocab, seq_len):
    del settings, vocab, seq_len

  make.__module__ = 'objectives.unsectioned'
  with pytest.raises(ValueError, match=r"'unsectioned' \(objectives.unsectioned\) has no section"):
    registry.register('unsectioned')(make)
  with pytest.raises(ValueError, match='defaults other than its section'):
    registry.register('clm', defaults={'loss_chunk': 8})(make)
  assert 'unsectioned' not in registry.declared_names()


def test_objective_can_be_switched_on_the_command_line():
  result = _cli('--config', 'configs/clm.py', '--print_config',
                "--config.objective={'mlm': 1, 'sop': 1}")
  assert result.returncode == 0, result.stderr
  config = json.loads(result.stdout)
  assert config['objective'] == {'mlm': 1, 'sop': 1}
  assert 'mask_rate' in config['mlm'] and 'sop' in config
  back = _cli('--config', 'configs/bert.py', '--print_config', '--config.objective', 'clm')
  assert back.returncode == 0, back.stderr
  config = json.loads(back.stdout)
  assert config['objective'] == 'clm' and 'mlm' not in config and 'nsp' not in config
  switched = bert.get_config()
  base.apply_objective(switched, 'plm')
  assert switched.objective == 'plm' and 'plm' in switched and 'nsp' not in switched
  bad = _cli('--config', 'configs/clm.py', '--print_config', '--config.objective=mlmm')
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
  assert "Unknown objective 'mlmm'" in bad.stderr


def test_help_lists_every_setting_of_the_config():
  result = _cli('--config', 'configs/bert.py:tiny', '--help')
  assert result.returncode == 0
  for key in ('--config.mlm.mask_rate=0.15', '--config.optimizer.learning_rate',
              '--config.budget.tokens=0', '--config.data.'):
    assert key in result.stdout
  # A config file that defines a dataclass (its module must be findable while it loads).
  arms = _cli('--config', 'configs/compare.py:mlm:tiny', '--help')
  assert arms.returncode == 0 and '--config.budget.tokens=' in arms.stdout


@pytest.mark.slow
def test_token_budget_stops_at_the_budget_and_records_compute(tmp_path, shared_cache):
  config = small_run_config(bert.get_config('tiny'), shared_cache, total_steps=1000,
                            log_every=1, eval_steps=0, checkpoint_every=1, keep_checkpoints=1)
  config.budget.tokens = 2000
  config.budget.keep_fractions = (0.25, 0.5, 1.0)
  train.run(config, str(tmp_path))
  _, records = run_records(str(tmp_path))
  tokens = [r['tokens'] for r in records]
  per_step = [b - a for a, b in zip([0] + tokens, tokens)]
  assert tokens[-1] >= 2000 > tokens[-2]  # stops at the first step that reaches the budget
  assert all(0 < t <= 8 * 64 for t in per_step)
  assert records[-1]['padded_tokens'] == len(records) * 8 * 64 > tokens[-1]  # pairs carry padding
  flops = json.load(open(tmp_path / 'run.json', encoding='utf-8'))['flops_per_step']
  assert [r['flops'] for r in records] == [pytest.approx(r['step'] * flops) for r in records]
  assert all(r['wall_time'] > 0 for r in records)
  run_info = json.load(open(tmp_path / 'run.json', encoding='utf-8'))
  kept = run_info['kept_steps']
  last = records[-1]['step']
  assert len(kept) == 3 and kept[0] < kept[1] < last
  # Every step saved and only one recent checkpoint is kept, but the budget's fractions stay.
  assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()) == sorted(
      {k for k in kept if k <= last} | {last})


@pytest.mark.slow
def test_token_budget_outlasts_a_short_step_estimate(tmp_path, shared_cache, monkeypatch):
  """The planned steps only shape the schedule: a run whose estimate falls short trains on
  until its real tokens reach the budget, at the schedule's final learning rate."""
  from training import loop  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(loop, 'planned_steps', lambda exp: 2)
  config = small_run_config(bert.get_config('tiny'), shared_cache, total_steps=1000,
                            log_every=1, eval_steps=0, checkpoint_every=1000)
  config.budget.tokens = 2000
  train.run(config, str(tmp_path))
  _, records = run_records(str(tmp_path))
  tokens = [r['tokens'] for r in records]
  assert len(records) > 2 and tokens[-1] >= 2000 > tokens[-2]
  end = config.optimizer.learning_rate * config.optimizer.end_learning_rate_ratio
  assert [r['learning_rate'] for r in records[2:]] == pytest.approx([end] * (len(records) - 2))
  status = json.load(open(tmp_path / 'status.json', encoding='utf-8'))
  assert (status['state'], status['step']) == ('done', len(records))
  train.run(config, str(tmp_path))  # run again: nothing to do, no step added
  assert len(run_records(str(tmp_path))[1]) == len(records)


@pytest.mark.slow
def test_resume_mid_interval_logs_the_uninterrupted_average_and_pause_at_the_end(
    tmp_path, shared_cache):
  def config(**overrides):
    settings = dict(total_steps=6, log_every=4, eval_steps=0, checkpoint_every=100)
    return small_run_config(clm.get_config('tiny'), shared_cache, **{**settings, **overrides})

  straight, cut = str(tmp_path / 'straight'), str(tmp_path / 'cut')
  train.run(config(), straight)
  train.run(config(pause_at_step=2), cut)
  train.run(config(pause_at_step=6), cut)  # pause_at_step == total_steps: one save, no error
  _, want = run_records(straight)
  _, got = run_records(cut)
  assert [r['step'] for r in got] == [4, 6]  # no duplicate record
  for key in ('loss', 'clm_accuracy', 'tokens', 'flops'):
    assert [r[key] for r in got] == pytest.approx([r[key] for r in want], rel=1e-6), key
  assert sorted(os.listdir(os.path.join(cut, 'checkpoints'))) == ['2', '6']
  status = json.load(open(os.path.join(cut, 'status.json'), encoding='utf-8'))
  assert (status['state'], status['step']) == ('done', 6)

  # A restore that cannot fit (a different width) fails in one line and rewrites nothing.
  saved = open(os.path.join(cut, 'config.json'), encoding='utf-8').read()
  wider = config(total_steps=8, allow_config_change=True)
  wider.model.embed_dim = 96
  with pytest.raises(train.SetupError, match="model.embed_dim") as error:
    train.run(wider, cut)
  assert len(str(error.value).splitlines()) == 1
  assert open(os.path.join(cut, 'config.json'), encoding='utf-8').read() == saved


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path, shared_cache):
  workdir = str(tmp_path / 'run')
  args = ['--config', 'configs/clm.py:tiny', '--workdir', workdir, '--config.total_steps=400',
          '--config.log_every=1', '--config.eval_steps=0', '--config.checkpoint_every=1000',
          '--config.batch_size=8', '--config.seq_len=64', '--config.model.num_layers=1',
          '--config.model.embed_dim=32', '--config.model.num_heads=2',
          '--config.model.mlp_dim=64', '--config.model.max_len=64',
          '--config.data.builtin_max_files=120', '--config.data.vocab_size=600',
          f'--config.data.data_dir={os.path.join(shared_cache, "tfds")}']
  env = dict(os.environ, PRETRAINING_OBJECTIVES_CACHE=shared_cache)
  process = subprocess.Popen([sys.executable, 'train.py', *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith('step      3/'):
      process.send_signal(signal.SIGINT)
      break
  output = ''.join(lines) + process.stdout.read()
  assert process.wait(timeout=120) == 130, output
  assert 'Traceback' not in output and 'Stopped by SIGINT after step' in output
  stopped = int(output.split('Stopped by SIGINT after step ')[1].split(':')[0])
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == [str(stopped)]
  status = json.load(open(os.path.join(workdir, 'status.json'), encoding='utf-8'))
  assert (status['state'], status['step']) == ('preempted', stopped)


def test_dry_run_validates_and_counts_without_training(tmp_path, shared_cache, capsys):
  config = small_run_config(bert.get_config('tiny'), shared_cache)
  config.budget.flops = 1e12
  summary = train.dry_run(config, str(tmp_path))
  run_config = small_run_config(bert.get_config('tiny'), shared_cache)
  from training import experiment  # pylint: disable=import-outside-toplevel
  exp = experiment.build(run_config, str(tmp_path / 'other'))
  assert summary['flops_per_step'] == exp.flops_per_step
  assert summary['steps'] == int(1e12 // exp.flops_per_step)  # what the FLOPs budget buys
  assert summary['params'] > 0 and summary['data_format'] == 'sentence_pairs'
  assert 'params' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ['other', 'tokenizer.json', 'tokenizer.model']
