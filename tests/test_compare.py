"""Controlled arms: same token streams per format, a config diff of objective fields only,
equal token budgets, and the comparison command's sweep and progress line."""

from __future__ import annotations

import importlib.util
import json
import os
import types

import numpy as np
import pytest

from configs import compare
from data import pipeline
from data import tokenizer as tokenizer_lib
from tools import compare as compare_tool
from tools import report

from tests.conftest import TEST_CACHE_ENV, read_metrics, small_run_config

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
  diff = report.config_diff(configs)
  assert report.uncontrolled(diff, configs) == []
  assert {'objective', 'data.format', 'model.num_token_types', 'model.two_stream',
          'model.num_sentence_classes'} <= set(diff)
  assert diff['data.format']['mlm'] == 'packed'
  assert diff['data.format']['mlm_pairs'] == diff['data.format']['mlm_nsp'] == 'sentence_pairs'
  assert diff['model.two_stream']['plm'] is True
  # A shared setting changed in one arm is caught.
  configs['mlm']['optimizer']['learning_rate'] = 1.0
  assert report.uncontrolled(report.config_diff(configs), configs) == [
      'optimizer.learning_rate']


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
  with pytest.raises(ValueError, match='what the arms differ in'):
    compare_tool.parse_overrides(['--config.mlm.mask_rate=0.3'])
  assert compare_tool.main(['--root', root, '--arms', 'nope']) == 2


def test_progress_line_estimates_the_whole_comparison():
  runs = [types.SimpleNamespace()] * 3
  progress = compare_tool.ComparisonProgress(runs)
  line = progress.line(0, 'clm', 1, 'step 50/100 | loss 5.0 | 500 ms/step', 50, 100)
  # 50 steps left here and 100 in each of the two runs after it, at 0.5 s a step.
  assert line.startswith('[1/3 clm seed 1] step 50/100')
  assert line.endswith('comparison left ~2m05s')
