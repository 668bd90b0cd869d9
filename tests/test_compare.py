"""Controlled arms: same token streams per format, a config diff of objective fields only,
equal token budgets, and the comparison command's sweep and progress line."""

from __future__ import annotations

import importlib.util
import json
import os
import types

import numpy as np
import pytest

from comparison import controls
from configs import compare
from data import pipeline
from data import tokenizer as tokenizer_lib
from launching import sweep as sweep_lib
from tools import compare as compare_tool
from tools import report
from training.metrics import format_duration

from tests.helpers import TEST_CACHE_ENV, read_metrics, small_run_config

WORDS = 'the cat sat on a mat while dogs ran far away from home and never came back'.split()


def _documents(count: int) -> list[str]:
  rng = np.random.default_rng(0)
  return [' '.join(' '.join(rng.choice(WORDS, size=6)).capitalize() + '.'
                   for _ in range(int(rng.integers(2, 5)))) for _ in range(count)]


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tok')
  config = compare.get_config('mlm:tiny')
  config.data.vocab_size = 300
  previous = os.environ.get(TEST_CACHE_ENV)
  os.environ[TEST_CACHE_ENV] = str(folder / 'cache')
  try:
    return tokenizer_lib.load_or_train(config.data, str(folder), _documents(100))
  finally:
    if previous is None:
      del os.environ[TEST_CACHE_ENV]
    else:
      os.environ[TEST_CACHE_ENV] = previous


def _first_batch(arm: str, tokenizer, documents) -> dict[str, np.ndarray]:
  config = compare.get_config(f'{arm}:tiny')
  config.seq_len = 32
  data_format = compare.ARMS[arm].data_format
  iterator = pipeline.make_iterator(config, data_format, 'train', tokenizer, documents,
                                    local_batch_size=4, process_index=0, process_count=1)
  return next(iterator)


def test_arms_sharing_a_format_read_identical_streams(tokenizer):
  documents = _documents(30)
  windows = {arm: _first_batch(arm, tokenizer, documents) for arm in ('clm', 'mlm', 'plm')}
  pairs = {arm: _first_batch(arm, tokenizer, documents) for arm in ('mlm_pairs', 'mlm_nsp')}
  for group in (windows, pairs):
    first, *others = group.values()
    for other in others:
      assert sorted(other) == sorted(first)
      for key in first:
        np.testing.assert_array_equal(other[key], first[key])
  assert (windows['clm']['segment_ids'] > 0).all()  # windows are packed full
  assert (pairs['mlm_nsp']['tokens'][:, 0] == tokenizer.vocab.cls_id).all()  # [CLS] A [SEP] B


def test_config_diff_is_only_objective_fields_and_required_features():
  names = compare.arm_names()
  assert names[:6] == ['clm', 'mlm', 'mlm_pairs', 'mlm_nsp', 'mlm_sop', 'plm']
  configs = {arm: json.loads(compare.get_config(f'{arm}:tiny').to_json()) for arm in names}
  diff = controls.config_diff(configs)
  assert controls.uncontrolled(diff, configs) == []
  assert {'objective', 'data.format', 'model.num_token_types', 'model.two_stream',
          'model.num_sentence_classes'} <= set(diff)
  assert diff['data.format']['mlm'] == 'packed'
  assert diff['data.format']['mlm_pairs'] == diff['data.format']['mlm_nsp'] == 'sentence_pairs'
  assert diff['model.two_stream']['plm'] is True
  # A shared setting changed in one arm is caught.
  configs['mlm']['optimizer']['learning_rate'] = 1.0
  assert controls.uncontrolled(controls.config_diff(configs), configs) == [
      'optimizer.learning_rate']


@pytest.mark.slow
def test_token_budget_stops_arms_within_one_batch(tmp_path, shared_cache):
  import train  # pylint: disable=import-outside-toplevel

  budget = 3000
  seen = {}
  for arm in ('clm', 'mlm_nsp'):
    config = small_run_config(compare.get_config(f'{arm}:tiny'), shared_cache)
    config.model.update(num_layers=1, embed_dim=32, mlp_dim=64, num_heads=2)
    config.budget.tokens = budget
    config.budget.keep_fractions = ()
    config.total_steps = 200
    config.eval_steps = 0
    config.log_every = 1
    workdir = str(tmp_path / arm)
    train.run(config, workdir)
    records = [r for r in read_metrics(workdir) if r['split'] == 'train']
    seen[arm] = (records[-1]['tokens'], records[-1]['step'])
    assert seen[arm][0] >= budget
  batch_tokens = config.batch_size * config.seq_len
  assert abs(seen['clm'][0] - seen['mlm_nsp'][0]) <= batch_tokens
  assert seen['clm'][1] < seen['mlm_nsp'][1]  # pairs carry padding: more steps, same tokens


def test_sweep_mode_and_overrides(tmp_path, capsys):
  root = str(tmp_path / 'cmp')
  code = compare_tool.main(['--root', root, '--arms', 'clm,mlm_nsp', '--seeds', '0,1',
                            '--mode', 'sweep', '--config.data.builtin_max_files=5'])
  assert code == 0
  assert f'tools/launch.py --sweep {root}/sweep.py' in capsys.readouterr().out
  spec = importlib.util.spec_from_file_location('sweep', os.path.join(root, 'sweep.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  entries = module.get_sweep()
  assert [(e['config'], e['seed']) for e in entries] == [
      ('configs/compare.py:clm:tiny', 0), ('configs/compare.py:clm:tiny', 1),
      ('configs/compare.py:mlm_nsp:tiny', 0), ('configs/compare.py:mlm_nsp:tiny', 1)]
  assert all(e['data.builtin_max_files'] == '5' for e in entries)
  for section in ('mlm', 'electra', 'span_corruption', 'prefix_lm', 'deshuffle'):
    with pytest.raises(ValueError, match='what the arms differ in'):
      compare_tool.parse_overrides([f'--config.{section}.mask_rate=0.3'])
  assert compare_tool.main(['--root', root, '--arms', 'nope']) == 2


def test_progress_line_counts_start_up_and_wall_time_per_step():
  runs = [types.SimpleNamespace()] * 3
  now = [100.0]
  progress = compare_tool.ComparisonProgress(runs, clock=lambda: now[0])
  progress.start()
  now[0] = 130.0  # 30 s of start-up (data, compile) before the first step line
  first = progress.line(0, 'clm', 1, 'step 10/100 | loss 5.0 | 500 ms/step', 10, 100)
  # At 0.5 s a step: 90 steps and a 30 s evaluation here, then two runs of 30 + 50 + 30 s.
  assert first.startswith('[1/3 clm seed 1] step 10/100')
  assert first.endswith('comparison left ~4m55s')
  now[0] = 190.0  # 40 steps in 60 s of wall time (evaluations, checkpoints): 1.5 s a step
  line = progress.line(0, 'clm', 1, 'step 50/100 | loss 5.0 | 500 ms/step', 50, 100)
  assert line.endswith(f'comparison left ~{format_duration(50 * 1.5 + 30 + 2 * (60 + 150))}')


def test_children_run_where_the_caller_is_and_earlier_workdirs_are_kept(tmp_path, monkeypatch):
  """A relative root and relative paths in overrides are the caller's; a seed trained before
  under another workdir name goes on there instead of training again."""
  monkeypatch.chdir(tmp_path)
  calls = []

  def fake_train(command, **kwargs):
    calls.append((command, kwargs))
    return types.SimpleNamespace(stdout=iter(()), wait=lambda: 0)

  earlier = tmp_path / 'cmp' / 'clm'  # `--arms clm,mlm --seeds 0` named it so
  earlier.mkdir(parents=True)
  config = compare.get_config('clm:tiny')
  (earlier / 'config.json').write_text(config.to_json())
  args, overrides = compare_tool.parse_args(['--root', 'cmp', '--arms', 'clm', '--seeds', '0,1',
                                             '--config.data.train_files=books/*.txt'])
  runs = sweep_lib.expand(compare_tool.sweep_entries(
      ['clm'], [0, 1], 'tiny', overrides), os.path.abspath(args.root))
  assert [os.path.basename(r.workdir) for r in runs] == ['seed=0', 'seed=1']
  runs = compare_tool.keep_earlier_workdirs(runs, os.path.abspath('cmp'))
  assert [r.workdir for r in runs] == [str(earlier), str(tmp_path / 'cmp' / 'seed=1')]
  assert compare_tool.train_all(runs, execute=fake_train) == 0
  for command, kwargs in calls:
    assert 'cwd' not in kwargs  # the caller's directory, where books/*.txt is
    assert command[1] == os.path.join(compare_tool.REPO, 'train.py')
    assert command[3].startswith(os.path.join(compare_tool.REPO, 'configs', 'compare.py:clm'))
    assert '--config.data.train_files=books/*.txt' in command


def test_budgets_name_each_workdir_and_downstream_flags_are_checked(tmp_path, capsys):
  root = str(tmp_path / 'scaling')
  code = compare_tool.main(['--root', root, '--arms', 'clm,mlm', '--seeds', '0', '--mode',
                            'sweep', '--budgets', '1000,2000', '--downstream', 'stdlib_package',
                            '--finetune.seeds=(0,)'])
  assert code == 0
  out = capsys.readouterr().out
  assert "--downstream=stdlib_package '--finetune.seeds=(0,)'" in out
  entries = sweep_lib.load_sweep(os.path.join(root, 'sweep.py'))
  runs = sweep_lib.expand(entries, root)
  assert [os.path.basename(r.workdir) for r in runs] == [
      'clm_tokens=1000', 'clm_tokens=2000', 'mlm_tokens=1000', 'mlm_tokens=2000']
  assert [compare_tool.run_budget(r) for r in runs] == [1000, 2000, 1000, 2000]
  args, _ = compare_tool.parse_args(['--root', root, '--downstream', 'stdlib_package',
                                     '--downstream_strategy', 'linear_probe',
                                     '--finetune.task.max_train_examples=50'])
  settings = compare_tool.downstream_settings(args, args.finetune_overrides)
  assert (settings.tasks, settings.strategy, settings.control) == (
      ('stdlib_package',), 'linear_probe', True)
  assert settings.recipe['pooling'] == 'mean'
  assert settings.overrides == (('task.max_train_examples', 50),)
  args, _ = compare_tool.parse_args(['--root', root, '--downstream', '--zero_shot'])
  settings = compare_tool.downstream_settings(args, args.finetune_overrides)
  assert (settings.tasks, settings.zero_shot) == (('stdlib_package',), ('stdlib_package',))
  bad = [['--downstream', 'nope'], ['--downstream', 'stdlib_package', '--finetune.lr=1'],
         ['--downstream', 'stdlib_package', '--downstream_strategy', 'lora'],
         ['--budgets', '1000', '--config.budget.tokens=5']]
  for extra in bad:
    assert compare_tool.main(['--root', root, '--arms', 'clm', '--mode', 'sweep', *extra]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
