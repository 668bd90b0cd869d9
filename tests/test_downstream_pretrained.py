"""Fine-tuning from pretraining workdirs: a head on a separable toy task reaches >= 0.95 dev
accuracy from each objective's checkpoint; results.json is written; a checkpoint that does not
fit the task's tokenizer or model is a one-line error naming both, before compiling.

Every workdir is a real pretraining run: a few steps of train.py's `run` on a small corpus of
the toy words, once per objective for the module, restored through `pretrained.load`.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import finetune as finetune_config
from downstream import finetune, heads, pretrained, runner, strategies
from downstream.model import DownstreamModel
from downstream.tasks import registry
from tests import helpers as test_helpers
from tests import downstream_helpers as helpers


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('downstream')
  train = helpers.write_jsonl(str(root / 'train.jsonl'), helpers.toy_examples(64, 1))
  dev = helpers.write_jsonl(str(root / 'dev.jsonl'), helpers.toy_examples(32, 2))
  corpus = helpers.pretraining_corpus(str(root / 'corpus.jsonl'))
  return {'root': root, 'train': train, 'dev': dev, 'corpus': corpus}


@pytest.fixture(scope='module')
def workdir_of(files, shared_cache):
  """objective -> its pretraining workdir, trained on first use and shared by the module."""
  workdirs = {}

  def get(objective: str) -> str:
    if objective not in workdirs:
      workdirs[objective] = helpers.pretrain(str(files['root'] / objective), objective,
                                             files['corpus'])
    return workdirs[objective]

  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(test_helpers.TEST_CACHE_ENV, shared_cache)  # the corpus build and the tokenizer
    yield get


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
@pytest.mark.slow
def test_finetune_from_workdir_writes_results(files, workdir_of, objective):
  workdir = workdir_of(objective)
  [path] = runner.run(_config(files), workdir, log=lambda line: None)
  assert path == os.path.join(workdir, 'downstream', 'local', 'full', 'results.json')
  with open(path, encoding='utf-8') as f:
    record = json.load(f)
  assert record['dev']['accuracy']['mean'] >= 0.95
  steps = helpers.PRETRAIN_STEPS
  assert record['pretraining']['step'] == steps
  assert record['pretraining']['causal'] == (objective == 'clm')
  assert record['pretraining']['flops'] == steps * record['pretraining']['flops_per_step'] > 0
  assert record['settings']['pooling'] == ('last' if objective == 'clm' else 'first')
  assert record['trained_params'] == record['total_params']  # full fine-tuning
  if objective == 'clm':
    from data import tokenizer as tokenizer_lib
    # The same checkpoint with another tokenizer, or another width: one line naming both.
    other = helpers.train_tokenizer(str(files['root'] / 'other.model'), vocab_size=300)
    size = tokenizer_lib.Tokenizer(os.path.join(workdir, 'tokenizer.model')).size
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


@pytest.mark.slow
def test_span_corruption_checkpoint_with_its_sentinel_rows_fine_tunes(files, workdir_of):
  """Span corruption's embedding has a row per sentinel past the tokenizer's pieces: the run's
  own tokenizer fits it, and a tokenizer of the same size that splits text otherwise is refused
  in one line (its ids would mean other pieces)."""
  from data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  workdir = workdir_of('span_corruption')
  pre = pretrained.load(workdir)
  rows = pre.params['token_embed']['embedding'].shape[0]
  assert rows > pre.tokenizer.size == pre.model_config.vocab_size - (rows - pre.tokenizer.size)
  [path] = runner.run(_config(files, epochs=(1,)), workdir, log=lambda line: None)
  with open(path, encoding='utf-8') as f:
    assert json.load(f)['pretraining']['objective'] == 'span_corruption'
  size = pre.tokenizer.size
  other = helpers.train_tokenizer(str(files['root'] / 'same_size.model'), vocab_size=size)
  assert tokenizer_lib.Tokenizer(other).size == size
  with pytest.raises(ValueError, match=r'^config.tokenizer=.*same_size.model has as many pieces '
                     r'as the tokenizer of .* but tokenizes text otherwise'):
    pretrained.load(workdir, tokenizer_path=other)


def _changed(params, reference) -> list[str]:
  """Names of the parameters of `params` that differ from `reference`'s."""
  flat, other = (traverse_util.flatten_dict(jax.device_get(tree)) for tree in (params, reference))
  assert flat.keys() == other.keys()
  return sorted('/'.join(key) for key in flat if not np.array_equal(flat[key], other[key]))


@pytest.mark.parametrize('objective', ['clm', 'mlm', 'bert', 'plm'])
@pytest.mark.slow
def test_head_learns_toy_task_from_objective_models(files, workdir_of, objective):
  workdir = workdir_of(objective)
  pre = pretrained.load(workdir)
  steps = helpers.PRETRAIN_STEPS
  assert pre.step == steps
  assert pre.causal == (objective == 'clm')
  # The parameters are the last checkpoint's, and pretraining moved them since the one before.
  assert not _changed(pre.params, helpers.checkpoint_params(workdir, steps))
  changed = _changed(pre.params, helpers.checkpoint_params(workdir, steps // 2))
  assert 'token_embed/embedding' in changed and any('layers' in name for name in changed), changed

  task = registry.build({'name': 'local', 'train_file': files['train'],
                         'validation_file': files['dev']})
  encoded = finetune.encode_task(task, pre.tokenizer, 24, pre.causal)
  model = DownstreamModel(pre.model_config, 'classification', 2, pre.causal,
                          heads.default_pooling(pre.causal), 0.0)
  result = finetune.train_and_evaluate(
      model, strategies.Strategy('full'), pre.params, task, encoded,
      finetune.TrainSettings(learning_rate=3e-3, epochs=4, batch_size=16),
      ordinary_ids=pre.tokenizer.vocab.ordinary_ids)
  assert result.scores['validation']['accuracy'] >= 0.95, result.scores


def test_bad_settings_fail_before_loading(files):
  with pytest.raises(ValueError, match='config.strategy'):
    runner.run(_config(files, strategy='adapters'), str(files['root'] / 'missing'))
  with pytest.raises(ValueError, match='does not exist'):
    runner.run(_config(files), str(files['root'] / 'missing'))
  with pytest.raises(ValueError, match='config.pooling'):
    runner.run(_config(files, pooling='max'), str(files['root'] / 'missing'))
