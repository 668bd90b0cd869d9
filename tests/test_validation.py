"""Config validation before compilation: every numeric setting's range, and resume refusals
that name the setting that changed."""

from __future__ import annotations

import os

import pytest

from configs import base, bert, clm, mlm, plm
from training import checks

PRESETS = [(clm, 'tiny'), (clm, 'gpt2_small'), (mlm, 'tiny'), (mlm, 'base'), (bert, 'tiny'),
           (bert, 'bert_base'), (bert, 'sop_tiny'), (plm, 'tiny'), (plm, 'xlnet_base')]


@pytest.mark.parametrize('module, preset', PRESETS)
def test_every_preset_passes(module, preset):
  config = module.get_config(preset)
  checks.check_keys(config)
  checks.check_values(config)


@pytest.mark.parametrize('key, value, expected', [
    ('nonfinite.max_consecutive', 0, 'config.nonfinite.max_consecutive must be >= 1, got 0.'),
    ('nonfinite.max_consecutive', -3, 'config.nonfinite.max_consecutive must be >= 1, got -3.'),
    ('optimizer.warmup_steps', -1, 'config.optimizer.warmup_steps must be >= 0, got -1.'),
    ('optimizer.b2', 1.0, 'config.optimizer.b2 must be >= 0 and < 1, got 1.0.'),
    ('optimizer.end_learning_rate_ratio', 1.5,
     'config.optimizer.end_learning_rate_ratio must be >= 0 and <= 1, got 1.5.'),
    ('optimizer.eps', 0.0, 'config.optimizer.eps must be > 0, got 0.0.'),
    ('optimizer.grad_clip_norm', -1.0, 'config.optimizer.grad_clip_norm must be > 0, got -1.0.'),
    ('optimizer.learning_rate', float('nan'), 'config.optimizer.learning_rate must be finite'),
    ('model.dropout', 1.0, 'config.model.dropout must be >= 0 and < 1, got 1.0.'),
    ('model.init_std', 0.0, 'config.model.init_std must be > 0, got 0.0.'),
    ('model.num_token_types', -2, 'config.model.num_token_types must be >= 0, got -2.'),
    ('data.short_seq_prob', 1.5, 'config.data.short_seq_prob must be >= 0 and <= 1, got 1.5.'),
    ('data.vocab_size', 5, 'config.data.vocab_size must be >= 8, got 5.'),
    ('seed', -1, 'config.seed must be >= 0, got -1.'),
    ('seq_len', 1, 'config.seq_len must be >= 2, got 1.'),
    ('pause_at_step', -5, 'config.pause_at_step must be >= 0, got -5.'),
    ('keep_checkpoints', 0, 'config.keep_checkpoints must be > 0, got 0.'),
    ('eval_steps', -1, 'config.eval_steps must be >= 0, got -1.'),
    ('total_steps', 2.5, 'config.total_steps must be an integer, got 2.5.'),
    ('model.embed_dim', 102, 'config.model.embed_dim=102 does not divide by'),
    ('budget.tokens', -5, 'config.budget.tokens must be >= 0, got -5.'),
    ('budget.flops', -1.0, 'config.budget.flops must be >= 0, got -1.0.'),
    ('budget.keep_fractions', (0.5, 2.0),
     'config.budget.keep_fractions must be fractions of the run in (0, 1], got 2.0.'),
    ('budget.keep_fractions', (0.0,),
     'config.budget.keep_fractions must be fractions of the run in (0, 1], got 0.0.'),
])
def test_out_of_range_settings_are_one_line_errors(key, value, expected):
  config = clm.get_config('tiny')
  with config.unlocked():
    *parents, leaf = key.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    del target[leaf]  # ConfigDict keeps a field's type; a config file may give any value
    target[leaf] = value
  with pytest.raises(ValueError) as error:
    checks.check_values(config)
  assert str(error.value).startswith(expected) and '\n' not in str(error.value)


def test_two_budgets_at_once_are_refused():
  config = clm.get_config('tiny')
  config.budget.tokens, config.budget.flops = 1000, 1e9
  with pytest.raises(ValueError, match=r'^config.budget.tokens and config.budget.flops are both '
                     r'set: a run stops at one budget; set the other to 0.$'):
    checks.check_values(config)


def _saved_run(tmp_path, config):
  (tmp_path / 'config.json').write_text(config.to_json())
  return str(tmp_path)


@pytest.mark.parametrize('saved, now', [('clm', 'mlm'), ('mlm', {'mlm': 1.0, 'nsp': 1.0}),
                                        ({'mlm': 1.0, 'nsp': 1.0}, {'mlm': 1.0, 'nsp': 0.5})])
def test_objective_change_refusal_names_config_objective(tmp_path, saved, now):
  workdir = _saved_run(tmp_path, base.get_config(saved, 'tiny'))
  with pytest.raises(ValueError) as error:
    checks.check_resume(base.get_config(now, 'tiny'), workdir)
  message = str(error.value)
  assert message.startswith(f'{workdir} holds a run of config.objective={saved!r} but this run '
                            f'has {now!r}'), message
  assert '--config.allow_config_change=True' in message


def test_other_changes_name_their_setting(tmp_path):
  workdir = _saved_run(tmp_path, base.get_config('mlm', 'tiny'))
  config = base.get_config('mlm', 'tiny')
  config.mlm.mask_rate = 0.2
  with pytest.raises(ValueError, match=r'config.mlm.mask_rate=0.15 but this run has 0.2'):
    checks.check_resume(config, workdir)
  config.mlm.mask_rate = 0.15
  config.total_steps = 10  # may change on resume
  checks.check_resume(config, workdir)
  assert os.path.exists(os.path.join(workdir, 'config.json'))


def test_a_setting_added_since_the_run_started_resumes_at_its_default(tmp_path):
  saved = base.get_config('mlm', 'tiny')
  with saved.unlocked():
    del saved.mlm['sbo']  # a run from before config.mlm.sbo existed
  workdir = _saved_run(tmp_path, saved)
  checks.check_resume(base.get_config('mlm', 'tiny'), workdir)
  config = base.get_config('mlm', 'tiny')
  config.mlm.update(unit='span', sbo=True)
  with pytest.raises(ValueError, match=r'config.mlm.sbo=None but this run has True'):
    checks.check_resume(config, workdir)


@pytest.mark.parametrize('module', [bert, mlm, plm])
def test_preset_lists_agree_between_errors_readme_and_configs(module):
  """The presets README's table names for a config file are the ones its error offers."""
  import re  # pylint: disable=import-outside-toplevel

  name = module.__name__.replace('.', '/') + '.py'
  readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'README.md'),
                encoding='utf-8').read()
  row = next(line for line in readme.splitlines() if line.startswith('|') and f'`{name}`' in line)
  documented = re.findall(r'`(\w+)`', row.split(f'`{name}`')[1].split('|')[0])
  with pytest.raises(ValueError) as error:
    module.get_config('no_such_preset')
  offered = str(error.value).split('choose one of ')[1].rstrip('.').split(', ')
  assert documented == offered == list(module.PRESETS)
  for preset in module.PRESETS:
    module.get_config(preset)


def test_switching_to_pretokenized_shards_resumes_but_other_data_changes_do_not(tmp_path):
  """Where the documents come from may change between a corpus and its shards (the restore
  checks their fingerprints); what shapes the examples may not."""
  saved = clm.get_config('tiny')
  saved.data.update(source='text', train_files='/corpus/*.txt')
  workdir = _saved_run(tmp_path, saved)
  now = clm.get_config('tiny')
  now.data.update(source='pretokenized', pretokenized_dir='/shards')
  checks.check_resume(now, workdir)
  now.data.short_seq_prob = 0.5
  with pytest.raises(ValueError, match=r'config.data.short_seq_prob=0.1 but this run has 0.5'):
    checks.check_resume(now, workdir)
  other = clm.get_config('tiny')
  other.data.update(source='builtin')
  with pytest.raises(ValueError, match=r"config.data.source='text' but this run has 'builtin'"):
    checks.check_resume(other, workdir)


def test_the_settings_table_declares_every_shared_setting_and_range():
  """configs/base.py SETTINGS is the one declaration: the built config holds exactly its keys
  (besides data/config.py's and the objective's), at its defaults for the preset's shape."""
  config = base.get_config('clm', 'small', batch_size=8)
  flat = base.flatten(config)
  shape = dict(base.RUN_PRESETS['small'], batch_size=8)
  shared = {k for k in flat if not k.startswith(('data.', 'clm')) and k != 'objective'}
  declared = {k for k, s in base.SETTINGS.items() if s.default != base.DATA}
  assert shared == declared
  for key in declared:
    setting = base.SETTINGS[key]
    if setting.default == base.PRESET:
      expected = base.MODEL_PRESETS['small'][key.split('.')[1]]
    else:
      expected = setting.default(shape) if callable(setting.default) else setting.default
    assert flat[key] == expected, key
  assert flat['batch_size'] == 8 and flat['model.max_len'] == 512
  assert {k for k, s in base.SETTINGS.items() if s.default == base.DATA} <= set(flat)
  assert checks.RANGES['optimizer.b2'] == (base.FLOAT, (0, True), (1, False))
  assert len(checks.RANGES) == 41
