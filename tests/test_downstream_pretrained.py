"""Fine-tuning from pretraining workdirs: a head on a separable toy task reaches >= 0.95 dev
accuracy from each objective's model; results.json is written; a checkpoint that does not
fit the task's tokenizer or model is a one-line error naming both, before compiling.

The clm run is a real workdir (config.json, tokenizer.model and a freshly initialised state
saved through the trainer's Checkpointer) loaded by tools/finetune.py's library entry; mlm,
bert (mlm + nsp: token types, post-LN, pooler) and plm use freshly initialised parameters of
their runs' exact models, which skips an orbax round trip each.
"""

import json
import os

import jax
import numpy as np
import pytest

from configs import finetune as finetune_config
from downstream import finetune, heads, pretrained, runner, strategies
from downstream.model import DownstreamModel
from downstream.tasks import registry
from tests import downstream_helpers as helpers


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('downstream')
  tokenizer = helpers.train_tokenizer(str(root / 'tok.model'))
  train = helpers.write_jsonl(str(root / 'train.jsonl'), helpers.toy_examples(64, 1))
  dev = helpers.write_jsonl(str(root / 'dev.jsonl'), helpers.toy_examples(32, 2))
  return {'root': root, 'tokenizer': tokenizer, 'train': train, 'dev': dev}


def _config(files, **overrides):
  config = finetune_config.get_config('local')
  config.task.train_file, config.task.validation_file = files['train'], files['dev']
  config.learning_rates, config.epochs, config.seeds = (3e-3,), (4,), (0,)
  config.batch_size = 16
  config.model.dropout = 0.0
  config.head_dropout = 0.0
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.mark.parametrize('objective', ['clm'])
def test_finetune_from_workdir_writes_results(files, objective):
  workdir = helpers.make_workdir(str(files['root'] / objective), objective, files['tokenizer'])
  [path] = runner.run(_config(files), workdir, log=lambda line: None)
  assert path == os.path.join(workdir, 'downstream', 'local', 'full', 'results.json')
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  assert record['dev']['accuracy']['mean'] >= 0.95
  assert record['pretraining']['step'] == 5
  assert record['pretraining']['causal'] == (objective == 'clm')
  assert record['pretraining']['flops'] == 5 * record['pretraining']['flops_per_step'] > 0
  assert record['settings']['pooling'] == ('last' if objective == 'clm' else 'first')
  assert record['trained_params'] == record['total_params']  # full fine-tuning
  if objective == 'clm':
    from data import tokenizer as tokenizer_lib
    # The same checkpoint with another tokenizer, or another width: one line naming both.
    other = helpers.train_tokenizer(str(files['root'] / 'other.model'), vocab_size=300)
    size = tokenizer_lib.Tokenizer(files['tokenizer']).size
    assert tokenizer_lib.Tokenizer(other).size != size
    with pytest.raises(ValueError) as error:
      runner.run(_config(files, tokenizer=other), workdir, log=lambda line: None)
    message = str(error.value)
    assert '\n' not in message and f'{size}-entry vocabulary' in message and other in message
    assert workdir in message
    config = _config(files)
    with config.model.unlocked():
      config.model.mlp_dim = 96
    with pytest.raises(ValueError) as error:
      runner.run(config, workdir, log=lambda line: None)
    message = str(error.value)
    assert '\n' not in message and '(1, 64)' in message and '(1, 96)' in message
    assert workdir in message


@pytest.mark.parametrize('objective', ['mlm', 'bert', 'plm'])
def test_head_learns_toy_task_from_objective_models(files, objective):
  from data import tokenizer as tokenizer_lib
  from training import experiment

  workdir = str(files['root'] / f'init_{objective}')
  os.makedirs(workdir, exist_ok=True)
  config = helpers.tiny_config(objective)
  config.data.tokenizer = files['tokenizer']
  exp = experiment.build(config, workdir, data=False)
  params = jax.jit(lambda key: __import__('flax').linen.unbox(exp.init_params_fn()(key)))(
      jax.random.key(0))
  causal = pretrained.is_causal(exp.objective.prepare, exp.example_batch())
  assert not causal
  tokenizer = tokenizer_lib.Tokenizer(files['tokenizer'])
  task = registry.build({'name': 'local', 'train_file': files['train'],
                         'validation_file': files['dev']})
  encoded = finetune.encode_task(task, tokenizer, 24, causal)
  model = DownstreamModel(exp.model_config, 'classification', 2, causal,
                          heads.default_pooling(causal), 0.0)
  result = finetune.train_and_evaluate(
      model, strategies.Strategy('full'), params, task, encoded,
      finetune.TrainSettings(learning_rate=3e-3, epochs=4, batch_size=16),
      ordinary_ids=tokenizer.vocab.ordinary_ids)
  assert result.scores['validation']['accuracy'] >= 0.95


def test_bad_settings_fail_before_loading(files):
  with pytest.raises(ValueError, match='config.strategy'):
    runner.run(_config(files, strategy='adapters'), str(files['root'] / 'missing'))
  with pytest.raises(ValueError, match='does not exist'):
    runner.run(_config(files), str(files['root'] / 'missing'))
  with pytest.raises(ValueError, match='config.pooling'):
    runner.run(_config(files, pooling='max'), str(files['root'] / 'missing'))
