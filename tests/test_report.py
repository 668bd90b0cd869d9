"""The report builds from workdirs alone: every arm and seed, a CSV that reads back, valid PNGs."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from comparison import heldout, tables
from comparison import runs as runs_lib
from configs import compare
from tools import report
from training import evaluation

ARMS = ('clm', 'mlm', 'mlm_nsp')
SEEDS = (0, 1)
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _examples(arm: str, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng([ARMS.index(arm), seed])
  n = 40
  examples = {'key': np.arange(n, dtype=np.uint32)}
  parts = ['clm'] if arm == 'clm' else ['mlm'] + (['nsp'] if arm == 'mlm_nsp' else [])
  for part in parts:
    count = np.ones(n, np.int32) if part == 'nsp' else rng.integers(5, 20, n).astype(np.int32)
    examples[f'{part}.count'] = count
    examples[f'{part}.nll'] = count * rng.uniform(1.0, 3.0, n)
    examples[f'{part}.correct'] = rng.binomial(count, 0.4).astype(np.int32)
    if part != 'nsp':
      examples[f'{part}.bytes'] = count * 4
  return examples


def _make_run(root: str, arm: str, seed: int) -> dict[str, float]:
  workdir = os.path.join(root, f'{arm}_seed={seed}')
  os.makedirs(os.path.join(workdir, 'eval'))
  config = compare.get_config(f'{arm}:tiny')
  config.seed = seed
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json())
  name = 'clm' if arm == 'clm' else 'mlm'
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w', encoding='utf-8') as f:
    for step in (0, 10, 20, 30):
      if step:
        f.write(json.dumps({'step': step, 'split': 'train', 'loss': 5.0, 'tokens': 1000 * step,
                            'flops': 1e9 * step, 'wall_time': 0.5 * step,
                            'tokens_per_sec': 2000.0 + seed}) + '\n')
      f.write(json.dumps({'step': step, 'split': 'eval', f'{name}_loss': 6.0 - step / 10,
                          f'{name}_bits_per_byte': 2.0 - step / 30 + 0.01 * seed}) + '\n')
  examples = _examples(arm, seed)
  objective = type('O', (), {'parts': tuple((p, 1.0, None) for p in
                                            sorted({k.split('.')[0] for k in examples} - {'key'}))})
  metrics = {'step': 30, 'split': 'validation', **evaluation.summarize(objective, examples)}
  evaluation.save_examples(os.path.join(workdir, 'eval', 'validation_examples.npz'), examples)
  with open(os.path.join(workdir, 'eval', 'validation.json'), 'w', encoding='utf-8') as f:
    json.dump(metrics, f)
  return metrics


def test_report_lists_every_run_and_reads_back(tmp_path):
  root = str(tmp_path / 'compare')
  expected = {(arm, seed): _make_run(root, arm, seed) for arm in ARMS for seed in SEEDS}
  written = report.write_report(root, root)
  text = open(written['report'], encoding='utf-8').read()
  for arm in ARMS:
    assert f'| {arm} | 2 |' in text  # the summary row: two seeds
    for seed in SEEDS:
      assert f'| {arm} | {seed} | {arm}_seed={seed} |' in text
  rows = tables.read_csv(os.path.join(root, 'results.csv'))
  assert len(rows) == len(expected)
  for row in rows:
    metrics = expected[(row['arm'], row['seed'])]
    for key, value in metrics.items():
      if isinstance(value, (int, float)):
        assert row[key] == value, key  # exact round trip
    assert row['tokens'] == 30_000 and row['flops'] == 3e10
  assert sorted(written['plots']) == ['throughput.png', 'validation_vs_flops.png',
                                      'validation_vs_tokens.png']
  for path in written['plots'].values():
    with open(path, 'rb') as f:
      data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    width, height = int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
    assert width > 100 and height > 100
  assert 'Only objective fields and the features they require differ.' in text
  assert written['uncontrolled'] == []


def test_a_setting_changed_in_one_seed_is_not_controlled(tmp_path):
  """Every run of an arm is checked, not only its first: a second seed with another width or
  learning rate is flagged within its arm, and its budget (now the arm's largest, which the
  tables compare at) against the other arms'."""
  root = str(tmp_path / 'compare')
  for arm in ('clm', 'mlm'):
    for seed in SEEDS:
      _make_run(root, arm, seed)
  path = os.path.join(root, 'mlm_seed=1', 'config.json')
  config = json.load(open(path, encoding='utf-8'))
  config['model']['num_layers'] = 6
  config['optimizer']['learning_rate'] = 0.05
  config['budget']['tokens'] = 999_999
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(config, f)
  written = report.write_report(root, root)
  assert written['uncontrolled'] == ['budget.tokens', 'model.num_layers',
                                     'optimizer.learning_rate', 'model.num_layers (in mlm)',
                                     'optimizer.learning_rate (in mlm)']
  assert 'NOT CONTROLLED' in open(written['report'], encoding='utf-8').read()


def test_a_seed_trained_twice_is_refused(tmp_path):
  """The same arm and seed in two workdirs (a comparison widened after it ran) would count
  twice in the mean ± std: one line naming both."""
  root = str(tmp_path / 'compare')
  _make_run(root, 'clm', 0)
  _make_run(root, 'clm', 1)
  os.rename(os.path.join(root, 'clm_seed=1'), os.path.join(root, 'clm'))
  _make_run(root, 'clm', 1)
  with pytest.raises(ValueError, match=r'^.*/clm.* and .*/clm.* are both arm clm seed 1 at budget '
                     r'400000: a seed counts once'):
    report.write_report(root, root)
  assert report.main(['--root', root]) == 2


def test_mean_and_std_over_seeds_in_the_table(tmp_path):
  root = str(tmp_path / 'compare')
  values = {seed: _make_run(root, 'clm', seed)['clm_bits_per_byte'] for seed in SEEDS}
  rows = tables.write_csv(str(tmp_path / 'r.csv'), runs_lib.find_runs(root))
  table = '\n'.join(heldout.family_tables(rows))
  mean, std = np.mean(list(values.values())), np.std(list(values.values()), ddof=1)
  assert f'| clm | clm | {tables.fmt(float(mean))} ± {tables.fmt(float(std))} |' in table


def test_bootstrap_difference_by_hand():
  examples = _examples('clm', 0)
  same = heldout.bootstrap_difference([examples], [examples], 'clm', 'bits_per_byte')
  assert same['paired'] and same['difference'] == 0.0 and same['low'] == same['high'] == 0.0
  shifted = dict(examples, **{'clm.nll': examples['clm.nll'] + math.log(2) * examples['clm.bytes']})
  result = heldout.bootstrap_difference([examples], [shifted], 'clm', 'bits_per_byte')
  # Adding one bit per byte to every example shifts bits per byte by exactly 1.
  assert result['difference'] == pytest.approx(1.0)
  assert result['low'] == pytest.approx(1.0) and result['high'] == pytest.approx(1.0)
  other = dict(examples, key=examples['key'] + 1000)
  unpaired = heldout.bootstrap_difference([examples], [other], 'clm', 'accuracy')
  assert not unpaired['paired'] and unpaired['low'] < 0.0 < unpaired['high']


def _write_scores(workdir, step, rate, control=False, edge=()):
  """A fine-tuning results file with per-example test scores (two fine-tuning seeds)."""
  rng = np.random.default_rng([int(rate * 100), step])
  ids = [f'ex{i}' for i in range(50)]
  per_seed = {str(seed): rng.binomial(1, rate, 50).astype(float).tolist() for seed in (0, 1)}
  values = [float(np.mean(v)) for v in per_seed.values()]
  record = {'schema': 'downstream-results/2', 'mode': 'finetune', 'task': 'topic',
            'strategy': 'full', 'metric': 'accuracy', 'seeds': [0, 1],
            'test': {'accuracy': {'mean': float(np.mean(values)), 'values': values}},
            'test_examples': {'ids': ids, 'scores': per_seed},
            'selected': {'learning_rate': 1e-3}, 'grid_edge': list(edge),
            'pretraining': {'step': step, 'no_pretraining': control}}
  folder = os.path.join(workdir, 'downstream', 'topic', 'full')
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, f'step_{step}.json'), 'w', encoding='utf-8') as f:
    json.dump(record, f)
  return values


def test_downstream_headline_opens_the_report(tmp_path):
  """Two arms at three kept checkpoints and a random-initialisation control: the report opens
  with the arm x task table (the seeds' mean by hand), then differences, the MDE, the curve
  table beside its plot, scaling fits and lm-eval results."""
  root = str(tmp_path / 'compare')
  finals = {}
  for arm, rates in (('clm', (0.55, 0.6, 0.7)), ('mlm', (0.6, 0.75, 0.9))):
    _make_run(root, arm, 0)
    workdir = os.path.join(root, f'{arm}_seed=0')
    with open(os.path.join(workdir, 'run.json'), 'w', encoding='utf-8') as f:
      json.dump({'flops_per_step': 1e9, 'kept_steps': [10, 20, 30], 'total_steps': 30}, f)
    for step, rate in zip((10, 20, 30), rates):
      finals[arm] = _write_scores(workdir, step, rate, edge=('learning_rate',) * (arm == 'mlm'))
  control = _write_scores(os.path.join(root, 'clm_seed=0'), 0, 0.5, control=True)
  os.makedirs(os.path.join(root, 'clm_seed=0', 'lm_eval'))
  with open(os.path.join(root, 'clm_seed=0', 'lm_eval', 'results_step30.json'), 'w',
            encoding='utf-8') as f:
    json.dump({'results': {'piqa': {'acc,none': 0.61, 'acc_stderr,none': 0.011}}}, f)
  written = report.write_report(root, root)
  text = open(written['report'], encoding='utf-8').read()
  lines = text.splitlines()
  assert lines[2] == '## Downstream test scores (mean and 95% interval)'
  assert lines[4] == ('| arm | topic · full (accuracy) | tokens | FLOPs | mean rank |')
  clm_row = next(line for line in lines if line.startswith('| clm | 0.'))
  assert clm_row.startswith(f'| clm | {np.mean(finals["clm"]):.3f} [')
  assert clm_row.endswith('| 3e+04 | 3.000e+10 | 2.00 |')  # tokens from metrics.jsonl, FLOPs
  assert next(line for line in lines if line.startswith('| mlm | 0.')).endswith('| 1.00 |')
  assert any(line.startswith(f'| no_pretraining:clm | {np.mean(control):.3f} [') and
             line.endswith('| 0 | 0 | - |') for line in lines)
  assert ('with one pretraining seed they cover evaluation sampling and fine-tuning seeds'
          in text)
  assert '| clm − no_pretraining:clm |' in text and '| mlm − clm |' in text
  assert '## Smallest difference this study could detect' in text
  assert ('- WARNING: topic (full): the selected learning_rate sits at an edge of its grid for '
          'mlm (2 of 2); the best value' in text)  # the last checkpoint's 2 fine-tuning seeds
  assert '| topic · full (accuracy) | clm | 0.25 | 10 | 1e+04 | 1.000e+10 |' in text
  cell = clm_row.split(' | ')[1]  # the last checkpoint's interval is the headline's, exactly
  assert f'| topic · full (accuracy) | clm | 1 | 30 | 3e+04 | 3.000e+10 | {cell} |' in text
  assert '![downstream vs FLOPs](downstream_vs_flops.png)' in text
  assert '| topic · full (accuracy) | mlm | clm |' in text  # a compute multiplier row
  assert '| clm | piqa | acc | 0.6100 | 0.011 | 1 | 30 |' in text
  assert text.index('## Downstream') < text.index('## Cost') < text.index('## Scaling')
  with open(written['plots']['downstream_vs_flops.png'], 'rb') as f:
    assert f.read()[:8] == PNG_SIGNATURE


def test_bootstrap_matches_numpy_with_a_known_difference():
  """Seeds averaged inside every resample, paired weights, percentile interval: the same
  numbers as a direct numpy computation on per-example data with a known shift."""
  n = 200

  def arm(shift, seed):
    rng = np.random.default_rng(seed)
    count = rng.integers(5, 20, n)
    return {'key': np.arange(n, dtype=np.uint32), 'clm.count': count,
            'clm.correct': rng.binomial(count, 0.4),
            'clm.nll': count * (rng.uniform(1.0, 3.0, n) + shift * rng.uniform(0.0, 2.0, n)),
            'clm.bytes': count * 4}

  a, b = [arm(0.0, 1), arm(0.0, 2)], [arm(0.1, 1), arm(0.1, 2)]
  result = heldout.bootstrap_difference(a, b, 'clm', 'bits_per_byte')
  weights = np.random.default_rng(heldout.BOOTSTRAP_SEED).multinomial(
      n, np.full(n, 1.0 / n), size=heldout.BOOTSTRAP_SAMPLES)

  def bpb(runs, w):
    return np.mean([(w @ r['clm.nll']) / math.log(2) / (w @ r['clm.bytes']) for r in runs], axis=0)

  direct = bpb(b, weights) - bpb(a, weights)
  point = bpb(b, np.ones(n)) - bpb(a, np.ones(n))
  assert result['paired'] and result['difference'] == pytest.approx(float(point), rel=1e-12)
  low, high = np.percentile(direct, [2.5, 97.5])
  assert (result['low'], result['high']) == pytest.approx((low, high), rel=1e-12)
  assert low < point < high and high - low > 1e-3  # a real interval, around the shift


def test_bootstrap_seeds_of_different_examples_resample_on_their_own():
  """Seeds that scored different examples (their own keys, their own counts) get their own
  resamples instead of one weight matrix that does not fit them."""
  first = _examples('clm', 0)
  second = {key: value[:30] for key, value in _examples('clm', 1).items()}
  second['key'] = second['key'] + 100
  result = heldout.bootstrap_difference([first, second], [first, first], 'clm', 'accuracy')
  point_a = np.mean([r['clm.correct'].sum() / r['clm.count'].sum() for r in (first, second)])
  point_b = first['clm.correct'].sum() / first['clm.count'].sum()
  assert not result['paired']
  assert result['difference'] == pytest.approx(point_b - point_a)
  assert result['low'] < result['difference'] < result['high']


def test_nan_missing_and_single_seed_cells(tmp_path):
  """A diverged seed shows as nan (never as missing), a number held by fewer seeds than the
  arm says how many, one seed shows its value alone; std is the sample std."""
  root = str(tmp_path / 'compare')
  for seed in (0, 1, 2):
    _make_run(root, 'clm', seed)
  _make_run(root, 'mlm', 0)
  path = os.path.join(root, 'clm_seed=2', 'eval', 'validation.json')
  metrics = json.load(open(path, encoding='utf-8'))
  metrics['clm_loss'] = math.nan
  del metrics['clm_bits_per_byte']
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(metrics, f)
  rows = tables.write_csv(str(tmp_path / 'r.csv'), runs_lib.find_runs(root))
  table = '\n'.join(heldout.family_tables(rows))
  clm_row = next(line for line in table.splitlines() if line.startswith('| clm |'))
  bpb = [r['clm_bits_per_byte'] for r in rows if r['arm'] == 'clm' and 'clm_bits_per_byte' in r]
  assert len(bpb) == 2
  assert (f'{tables.fmt(float(np.mean(bpb)))} ± {tables.fmt(float(np.std(bpb, ddof=1)))} '
          '(2 of 3 seeds)') in clm_row
  assert '| nan ± nan |' in clm_row
  mlm_bpb = next(r['mlm_bits_per_byte'] for r in rows if r['arm'] == 'mlm')
  assert f'| {tables.fmt(mlm_bpb)} |' in table and heldout.mean_std([1.0]) == (1.0, 0.0)


def test_runs_without_an_exact_pass_of_the_last_checkpoint_are_named(tmp_path):
  root = str(tmp_path / 'compare')
  for seed in (0, 1, 2):
    _make_run(root, 'clm', seed)
  os.remove(os.path.join(root, 'clm_seed=1', 'eval', 'validation.json'))
  path = os.path.join(root, 'clm_seed=2', 'eval', 'validation.json')
  metrics = json.load(open(path, encoding='utf-8'))
  metrics['step'] = 20
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(metrics, f)
  text = open(report.write_report(root, root)['report'], encoding='utf-8').read()
  assert ('NOT AN EXACT PASS of the last checkpoint for: clm_seed=1 (no exact pass: last '
          'metrics.jsonl eval), clm_seed=2 (exact pass of step 20, not the last (30))') in text
  assert '| clm | 0 | clm_seed=0 | 30 | 3e+04 | 3.000e+10 | 15 | exact pass |' in text


def test_an_objective_set_differently_in_two_arms_is_not_controlled(tmp_path):
  """MLM at another masking rate in one MLM arm: the arms' MLM numbers do not compare."""
  root = str(tmp_path / 'compare')
  for arm in ('clm', 'mlm', 'mlm_nsp'):
    _make_run(root, arm, 0)
  path = os.path.join(root, 'mlm_nsp_seed=0', 'config.json')
  config = json.load(open(path, encoding='utf-8'))
  config['mlm']['mask_rate'] = 0.3
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(config, f)
  written = report.write_report(root, root)
  assert written['uncontrolled'] == ['mlm.mask_rate']


def test_runs_at_several_budgets_are_distinct_and_the_tables_read_the_largest(tmp_path):
  """--budgets gives one arm and seed several runs: the report keeps them all for its curves
  and fits, compares arms at each arm's largest budget, and still refuses a true duplicate."""
  root = str(tmp_path / 'compare')

  def budget_run(arm, budget, name):
    _make_run(root, arm, 0)
    workdir = os.path.join(root, f'{arm}_seed=0')
    config = json.load(open(os.path.join(workdir, 'config.json'), encoding='utf-8'))
    config['budget']['tokens'] = budget
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f)
    os.rename(workdir, os.path.join(root, name))

  budget_run('clm', 1000, 'clm_tokens=1000')
  budget_run('clm', 2000, 'clm_tokens=2000')
  budget_run('mlm', 2000, 'mlm_tokens=2000')
  written = report.write_report(root, root)
  text = open(written['report'], encoding='utf-8').read()
  assert (f'Token budgets {tables.fmt(1000)}, {tables.fmt(2000)}: the tables below are each '
          'arm\'s runs at its largest budget') in text
  rows = tables.read_csv(os.path.join(root, 'results.csv'))
  assert sorted(os.path.basename(r['workdir']) for r in rows) == ['clm_tokens=2000',
                                                                   'mlm_tokens=2000']
  assert len(written['runs']) == 2 and 'NOT CONTROLLED' not in text
  budget_run('mlm', 2000, 'mlm_again')
  with pytest.raises(ValueError, match=r'are both arm mlm seed 0 at budget 2000: a seed counts '
                     'once'):
    report.write_report(root, root)
