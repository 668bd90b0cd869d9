"""Settings and task files that cannot work are one-line errors naming the setting (or the file
and line) and the fix, raised before any checkpoint is read or anything compiles. Nothing here
trains: the checks run on configs/finetune.py's config, the task loaders and tools/finetune.py's
flag parsing."""

import json
import os
import subprocess
import sys

import pytest

from configs import finetune as finetune_config
from downstream import encoding, runner
from downstream.tasks import registry
from tests import downstream_helpers as helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def files(tmp_path):
  train = helpers.write_jsonl(str(tmp_path / 'train.jsonl'), helpers.toy_examples(6, 1))
  dev = helpers.write_jsonl(str(tmp_path / 'dev.jsonl'), helpers.toy_examples(4, 2))
  return {'root': tmp_path, 'train': train, 'dev': dev}


def _config(files, **overrides):
  config = finetune_config.get_config('local')
  config.task.train_file, config.task.validation_file = files['train'], files['dev']
  for key, value in overrides.items():
    config[key] = value
  return config


def _error(function, *args) -> str:
  with pytest.raises(ValueError) as info:
    function(*args)
  message = str(info.value)
  assert '\n' not in message
  return message


def test_defaults_pass(files):
  config = _config(files)
  runner.check_config(config)
  runner.check_task(config, registry.build(config.task))


@pytest.mark.parametrize('key, value, message', [
    ('doc_stride', 0, 'config.doc_stride must be a positive token count (QA: how far apart the '
     'windows over a long context start), got 0.'),
    ('doc_stride', -8, 'config.doc_stride must be a positive token count (QA: how far apart the '
     'windows over a long context start), got -8.'),
    ('max_answer_tokens', 0, 'config.max_answer_tokens must be a positive token count (QA: the '
     'longest answer span decoded), got 0.'),
    ('max_query_tokens', -1, 'config.max_query_tokens must be a positive token count (QA: '
     'questions are cut to it), got -1.'),
])
def test_qa_lengths(files, key, value, message):
  assert _error(runner.check_config, _config(files, **{key: value})) == message


@pytest.mark.parametrize('seq_len', [-1, 1, 2])
def test_seq_len_below_the_single_layout(files, seq_len):
  message = _error(runner.check_config, _config(files, seq_len=seq_len))
  if seq_len < 0:
    assert message == ("config.seq_len must be 0 (the checkpoint's length) or a positive token "
                       "count, got -1.")
  else:
    assert message == (f'config.seq_len={seq_len} leaves no room for text: [CLS] text [SEP] '
                       '(causal: [bos] text [eos]) takes 2 special tokens plus at least one token '
                       "per text, so config.seq_len must be at least 3 (or 0 for the checkpoint's "
                       'length).')


def test_seq_len_minimum_per_layout(files):
  assert {name: runner.min_seq_len(name) for name in runner.LAYOUTS} == {
      'single': 3, 'pair': 5, 'qa': 5, 'prompt': 3, 'instruct': 4}
  runner.check_config(_config(files, seq_len=3))
  runner.check_config(_config(files, seq_len=3, mode='prompt'))
  instruct = _config(files, seq_len=3, mode='instruct')
  instruct.instruct.train_file = instruct.instruct.validation_file = files['train']
  assert 'at least 4' in _error(runner.check_config, instruct)
  pair = _config(files, seq_len=4)
  helpers.write_jsonl(files['train'], [dict(e, pair=e['text']) for e in
                                       helpers.toy_examples(6, 1)])
  helpers.write_jsonl(files['dev'], [dict(e, pair=e['text']) for e in helpers.toy_examples(4, 2)])
  pair.task.text_pair_field = 'pair'
  runner.check_config(pair)
  task = registry.build(pair.task)
  assert _error(runner.check_task, pair, task).startswith(
      'config.seq_len=4 leaves no room for text: [CLS] text [SEP] text_pair [SEP] takes 3 special '
      'tokens plus at least one token per text, so config.seq_len must be at least 5')
  pair.seq_len = 5
  runner.check_task(pair, task)


def test_minimum_seq_len_holds_a_token_of_every_text(tmp_path):
  from data import tokenizer as tokenizer_lib
  tokenizer = tokenizer_lib.Tokenizer(helpers.train_tokenizer(str(tmp_path / 'tok.model')))
  layout = encoding.layout_for(tokenizer.vocab, causal=False)
  example = {'text': 'apple banana', 'text_pair': 'river ocean', 'label': 0}
  single = encoding.encode_texts(tokenizer, [{'text': example['text'], 'label': 0}],
                                 runner.min_seq_len('single'), layout)
  pair = encoding.encode_texts(tokenizer, [example], runner.min_seq_len('pair'), layout)
  specials = {layout.start_id, layout.sep_id, layout.end_id}
  assert [t in specials for t in single['tokens'][0]] == [True, False, True]
  assert [t in specials for t in pair['tokens'][0]] == [True, False, True, False, True]
  assert list(pair['token_types'][0]) == [0, 0, 0, 1, 1]


@pytest.mark.parametrize('key, value, message', [
    ('warmup_fraction', -0.1, 'config.warmup_fraction must be in [0, 1] (the share of the steps '
     'that warm the learning rate up), got -0.1.'),
    ('warmup_fraction', 1.5, 'config.warmup_fraction must be in [0, 1] (the share of the steps '
     'that warm the learning rate up), got 1.5.'),
    ('head_dropout', 1.0, 'config.head_dropout must be in [0, 1), got 1.0.'),
    ('head_dropout', -0.5, 'config.head_dropout must be in [0, 1), got -0.5.'),
    ('weight_decay', -0.01, 'config.weight_decay must be >= 0, got -0.01.'),
    ('max_steps', -1, 'config.max_steps must be 0 (no cap) or a positive step cap, got -1.'),
    ('step', -2, 'config.step must be a checkpoint step (>= 0) or -1 for the latest, got -2.'),
    ('batch_size', 0, 'config.batch_size must be positive, got 0.'),
    ('learning_rates', (1e-3, float('nan')), 'config.learning_rates must be a non-empty tuple of '
     'distinct positive rates, got (0.001, nan).'),
    ('learning_rates', (), 'config.learning_rates must be a non-empty tuple of distinct positive '
     'rates, got ().'),
    ('epochs', (2.5,), 'config.epochs must be a non-empty tuple of distinct positive epoch '
     'counts, got (2.5,).'),
    ('seeds', (0, 0), 'config.seeds must be a non-empty tuple of distinct integer seeds, got '
     '(0, 0).'),
])
def test_recipe_numbers(files, key, value, message):
  assert _error(runner.check_config, _config(files, **{key: value})) == message


def test_recipe_bounds_are_allowed(files):
  runner.check_config(_config(files, warmup_fraction=0.0, head_dropout=0.0, weight_decay=0.0))
  runner.check_config(_config(files, warmup_fraction=1.0, max_steps=5, step=0))


def test_model_dropout_and_lora_alpha(files):
  config = _config(files)
  config.model.dropout = 1.0
  assert _error(runner.check_config, config) == 'config.model.dropout must be in [0, 1), got 1.0.'
  config = _config(files, strategy='lora', lora_alpha=0.0)
  assert _error(runner.check_config, config) == ('config.lora_alpha must be positive (adapters '
                                                 'scale by alpha / rank), got 0.0.')
  runner.check_config(_config(files, strategy='full', lora_alpha=0.0))  # unused without lora


def test_prompting_settings(files):
  config = _config(files, mode='prompt')
  config.prompting.seeds = ()
  assert _error(runner.check_config, config) == (
      'config.prompting.seeds must name at least one seed: each draws the demonstrations of '
      'config.prompting.shots=(0, 4), got ().')
  config.prompting.shots = (0,)
  runner.check_config(config)  # zero-shot draws nothing
  config = _config(files, mode='prompt')
  config.prompting.shots = (0, -2)
  assert _error(runner.check_config, config) == (
      'config.prompting.shots must be a non-empty tuple of distinct demonstration counts (>= 0), '
      'got (0, -2).')


def test_more_shots_than_train_examples(files):
  config = _config(files, mode='prompt')
  config.prompting.shots = (0, 7)
  runner.check_config(config)
  task = registry.build(config.task)
  assert _error(runner.check_task, config, task) == (
      'config.prompting.shots asks for 7 demonstrations but task local has 6 train examples to '
      'draw them from: lower config.prompting.shots.')
  config.prompting.shots = (0, 6)
  runner.check_task(config, task)
  config.prompting.split = 'test'
  assert _error(runner.check_task, config, task) == (
      "config.prompting.split='test' is not a split of task local (['train', 'validation']).")


def test_instruct_checks_come_first(files):
  config = _config(files, mode='instruct')
  assert 'needs config.instruct.train_file' in _error(runner.check_config, config)
  config.instruct.train_file = config.instruct.validation_file = files['train']
  config.strategy = 'linear_probe'
  assert _error(runner.check_config, config).startswith('config.strategy=linear_probe trains '
                                                        'only a task head')


def test_errors_come_before_the_checkpoint(files):
  missing = str(files['root'] / 'no_workdir')
  assert 'config.doc_stride' in _error(runner.run, _config(files, doc_stride=0), missing)
  config = _config(files)
  config.task.metrics = 'accuracy,bleu'
  assert 'unknown metric' in _error(runner.run, config, missing)
  config = _config(files, mode='prompt')
  config.prompting.shots = (50,)
  assert 'config.prompting.shots asks for 50' in _error(runner.run, config, missing)


def test_unknown_metric_when_the_task_is_built(files):
  config = _config(files)
  config.task.metrics = 'accuracy, bleu'
  assert _error(registry.build, config.task) == (
      "Task local: unknown metric 'bleu' (config.task.metrics): classification tasks are scored "
      "by ['accuracy', 'f1', 'macro_f1', 'matthews', 'pearson', 'spearman'].")
  config.task.metrics = 'matthews, accuracy'
  assert registry.build(config.task).metrics == ('matthews', 'accuracy')


def test_negative_example_caps(files):
  config = _config(files)
  config.task.max_train_examples = -1
  assert _error(registry.build, config.task) == (
      'config.task.max_train_examples must be 0 (all examples) or a positive cap, got -1.')


@pytest.mark.parametrize('num_classes', [1, 0, -3])
def test_stdlib_package_needs_two_classes(num_classes):
  from configs import finetune as finetune_config  # pylint: disable=import-outside-toplevel
  config = finetune_config.get_config('stdlib_package')
  config.task.num_classes = num_classes
  assert _error(registry.build, config.task) == (
      f'config.task.num_classes must be an integer >= 2 (packages to tell apart), got '
      f'{num_classes}.')


def _local(files, train_path, **settings):
  config = _config(files)
  config.task.train_file = train_path
  for key, value in settings.items():
    config.task[key] = value
  return config.task


def _train_file_error(files, name: str, text: str):
  """(path, the one-line error) of building the local task whose train file holds `text`."""
  path = files['root'] / name
  path.write_text(text, encoding='utf-8')
  return path, _error(registry.build, _local(files, str(path)))


def test_tsv_row_with_missing_columns(files):
  path, error = _train_file_error(files, 'train.tsv', 'text\tlabel\napple banana\t0\nriver ocean\n')
  assert error == (
      f"{path}:3: the row has no 'label' column (it has 1 of the header's 2); every row of "
      'config.task.train_file needs one tab-separated value per header column.')


def test_tsv_row_with_extra_columns(files):
  path, error = _train_file_error(files, 'train.tsv', 'text\tlabel\napple\t0\t\nriver\tocean\t1\n')
  assert error == (
      f"{path}:3: the row has more columns than the header's 2 (a tab inside a text?); fix that "
      'line of config.task.train_file.')


def test_jsonl_null_text_and_label(files):
  path, error = _train_file_error(files, 'null.jsonl',
                                  '{"text": "apple", "label": 0}\n\n{"text": null, "label": 1}\n')
  assert error == (
      f"{path}:3: field 'text' is null, not a text: fix the record or point "
      'config.task.text_field / text_pair_field at a text field.')
  path, error = _train_file_error(
      files, 'null.jsonl', '{"text": "apple", "label": 0}\n{"text": "river", "label": null}\n')
  assert error == (
      f"{path}:2: field 'label' is null, not a label: give every record a string or integer "
      'label.')


def test_jsonl_line_that_is_not_an_object(files):
  path, error = _train_file_error(files, 'strings.jsonl',
                                  '{"text": "apple", "label": 0}\n"river ocean"\n')
  assert error == (
      f'{path}:2: a JSON str, not an object; config.task.train_file must hold one JSON object a '
      'line.')


def test_missing_field_names_line_and_field(files):
  path, error = _train_file_error(
      files, 'nofield.jsonl', '{"text": "apple", "label": 0}\n{"sentence": "river", "label": 1}\n')
  assert error == (
      f"{path}:2: the record has no field 'text' (it has ['label', 'sentence']): set "
      'config.task.text_field / text_pair_field / label_field.')


def test_regression_label_must_be_a_number(files):
  path = files['root'] / 'scores.jsonl'
  path.write_text('{"text": "apple", "label": 0.5}\n{"text": "river", "label": "high"}\n',
                  encoding='utf-8')
  dev = helpers.write_jsonl(str(files['root'] / 'scores_dev.jsonl'),
                            [{'text': 'plum', 'label': 1.5}])
  task = _local(files, str(path), kind='regression', validation_file=dev)
  assert _error(registry.build, task) == (
      f"{path}:2: field 'label' is \"high\", not a finite number: config.task.kind=regression "
      'needs numeric labels (or set config.task.kind=classification).')
  path.write_text('{"text": "apple", "label": 0.5}\n{"text": "river", "label": "2.5"}\n',
                  encoding='utf-8')
  built = registry.build(task)
  assert [e['label'] for e in built.splits['train']] == [0.5, 2.5]


def _command(*args):
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'finetune.py'), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
  return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.slow
def test_command_config_errors_are_one_line(tmp_path):
  workdir = str(tmp_path / 'run')
  code, lines = _command('--config', 'configs/finetune.py:nosuch', '--workdir', workdir)
  assert code == 2 and len(lines) == 1, lines
  assert lines[0].startswith('finetune.py: error: configs/finetune.py:nosuch names no task: the '
                             "preset is the task, one of ['glue/cola', ")
  code, lines = _command('--config=configs/finetune.py:local', '--config.model.dtype=bfloat16',
                         '--workdir', workdir)
  assert (code, lines) == (2, [
      "finetune.py: error: --config.model.dtype names no setting: config.model takes only "
      "['dropout']; the rest of the model is the checkpoint's (its config.json)."])
  code, lines = _command('--config=configs/finetune.py:local', '--config.task.text_feld=x',
                         '--workdir', workdir)
  assert code == 2 and lines[0].startswith(
      "finetune.py: error: --config.task.text_feld is not a setting of task 'local' (did you "
      'mean config.task.text_field?)')
  code, lines = _command('--config=configs/finetune.py:local', '--config.doc_stride=0',
                         '--workdir', workdir)
  assert (code, lines) == (2, [
      'finetune.py: error: config.doc_stride must be a positive token count (QA: how far apart '
      'the windows over a long context start), got 0.'])


def test_preset_error_from_get_config():
  with pytest.raises(ValueError, match=r"configs/finetune.py:loca names no task \(did you mean "
                     r"'local'\?\)"):
    finetune_config.get_config('loca')
  assert json.loads(finetune_config.get_config('local').to_json())['task']['name'] == 'local'
