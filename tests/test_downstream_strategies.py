"""Which parameters each fine-tuning strategy changes, on a tiny freshly initialised model;
QA windows from real SentencePiece offsets decode back to the gold answers; prompting and
instruction-tuning pieces on hand examples."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from downstream import encoding, finetune, prompting, strategies
from downstream.model import DownstreamModel
from downstream.tasks import base
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer
from tests import downstream_helpers as helpers


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  from data import tokenizer as tokenizer_lib
  path = helpers.train_tokenizer(str(tmp_path_factory.mktemp('tok') / 'tok.model'))
  return tokenizer_lib.Tokenizer(path)


@pytest.fixture(scope='module')
def setup(tokenizer):
  task = base.Task('toy', 'classification', {'train': helpers.toy_examples(32, 1),
                                             'validation': helpers.toy_examples(16, 2)},
                   label_names=('a', 'b'))
  config = ModelConfig(vocab_size=tokenizer.size, num_layers=1, embed_dim=32, num_heads=2,
                       mlp_dim=64, max_len=32)
  encoded = finetune.encode_task(task, tokenizer, 16, causal=True)
  rows = {k: jnp.asarray(v[:2]) for k, v in encoded['train'].arrays.items()}
  inputs = ModelInputs(tokens=rows['tokens'], positions=rows['positions'],
                       segment_ids=rows['segment_ids'], causal=True)
  backbone = nn.unbox(Transformer(config).init(jax.random.key(0), inputs)['params'])
  return task, config, encoded, backbone


def _changed(before, after):
  flat_before = traverse_util.flatten_dict(before, sep='/')
  flat_after = traverse_util.flatten_dict(after, sep='/')
  return {name for name in flat_before
          if not np.array_equal(np.asarray(flat_before[name]), np.asarray(flat_after[name]))}


@pytest.mark.parametrize('name', strategies.NAMES)
@pytest.mark.slow
def test_strategy_changes_only_its_parameters(setup, tokenizer, name):
  task, config, encoded, backbone = setup
  strategy = strategies.Strategy(name, lora_rank=2, prompt_length=3)
  model = DownstreamModel(config, 'classification', 2, True, 'last', 0.0, strategy.lora_scale)
  settings = finetune.TrainSettings(learning_rate=1e-2, epochs=1, batch_size=8, max_steps=3,
                                    warmup_fraction=0.0)
  result = finetune.train_and_evaluate(model, strategy, backbone, task, encoded, settings,
                                       ordinary_ids=tokenizer.vocab.ordinary_ids,
                                       eval_splits=(), keep_params=True)
  after = result.params
  # Frozen backbone leaves are bit-identical; the ones a strategy trains all moved.
  changed = _changed(backbone, after['backbone'])
  every = set(traverse_util.flatten_dict(backbone, sep='/'))
  if name == 'full':
    assert changed == every - {'lm_bias'}  # the unused LM output bias: no gradient, no decay
  elif name == 'ffn_only':
    assert changed and all('/mlp/' in n for n in changed)
    assert {n for n in every if '/mlp/' in n} == changed
  else:
    assert changed == set()
  assert not np.array_equal(np.asarray(after['head']['output']['kernel']),
                            np.zeros_like(after['head']['output']['kernel']))
  extra = {'prompt_tuning': 'prompt', 'lora': 'lora'}.get(name)
  assert set(after) == {'backbone', 'head'} | ({extra} if extra else set())
  labels = strategy.labels(after)
  trained_leaves = [p for p, l in zip(jax.tree.leaves(after), jax.tree.leaves(labels))
                    if l == strategies.TRAINED]
  assert result.trained_params == sum(p.size for p in trained_leaves)
  head_size = 32 * 2 + 2
  if name == 'linear_probe':
    assert result.trained_params == head_size
  if name == 'prompt_tuning':
    assert result.trained_params == head_size + 3 * 32
    assert not np.array_equal(np.asarray(after['prompt']),
                              np.asarray(strategy.add_params(
                                  jax.random.split(jax.random.key(0), 3)[1],
                                  {'backbone': backbone}, tokenizer.vocab.ordinary_ids)['prompt']))
  if name == 'lora':
    # query/key/value: 32 -> 2x16, in 32 out 32; out: in 32 out 32; a [1,32,2], b [1,2,32]
    assert result.trained_params == head_size + 4 * (32 * 2 + 2 * 32)
    bs = [v for k, v in traverse_util.flatten_dict(after['lora'], sep='/').items()
          if k.endswith('/b')]
    assert len(bs) == 4 and all(np.abs(np.asarray(b)).max() > 0 for b in bs)


def test_lora_merge_is_w_plus_scaled_ab(setup):
  _, _, _, backbone = setup
  lora = strategies.init_lora(jax.random.key(1), backbone, rank=2)
  lora = jax.tree.map(lambda x: x + 0.5, lora)  # nonzero B
  merged = strategies.merge_lora(backbone, lora, scale=3.0)
  kernel = np.asarray(backbone['layers']['attention']['query']['kernel'])  # [1, 32, 2, 16]
  a = np.asarray(lora['layers']['attention']['query']['a'])  # [1, 32, 2]
  b = np.asarray(lora['layers']['attention']['query']['b'])  # [1, 2, 32]
  expected = kernel + (a @ b * 3.0).reshape(kernel.shape)
  np.testing.assert_allclose(np.asarray(merged['layers']['attention']['query']['kernel']),
                             expected, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(merged['layers']['mlp']['wi']['kernel']),
                                np.asarray(backbone['layers']['mlp']['wi']['kernel']))


def test_qa_windows_with_real_offsets_decode_gold_answers(tokenizer):
  context = ' '.join(helpers.WORDS[0] + helpers.WORDS[1]) + ' the lazy dog'
  answer = 'canyon island'
  example = {'question': 'where', 'context': context,
             'answers': [{'text': answer, 'start': context.index(answer)}]}
  layout = encoding.layout_for(tokenizer.vocab, causal=False)
  windows = encoding.encode_qa(tokenizer, [example], 16, layout, doc_stride=4,
                               max_query_tokens=4)
  assert len(windows.example_index) > 2  # the context needs several windows
  inside = [w for w in range(len(windows.example_index)) if windows.arrays['start'][w] > 0]
  assert inside
  start = np.full((len(inside), 16), -1.0)
  end = np.full((len(inside), 16), -1.0)
  for row, w in enumerate(inside):
    start[row, windows.arrays['start'][w]] = 5.0
    end[row, windows.arrays['end'][w]] = 5.0
  subset = encoding.QaWindows({k: v[inside] for k, v in windows.arrays.items()},
                              windows.example_index[inside], [windows.offsets[w] for w in inside])
  assert encoding.decode_spans(start, end, subset, [context]) == [answer]


def test_prompt_rows_weight_only_the_label_word(tokenizer):
  arrays = prompting.encode_choices(tokenizer, ['apple plum\nLabel:'], [' fruit', ' place'], 16)
  context = tokenizer.encode('apple plum\nLabel:')
  for row, word in enumerate(['fruit', 'place']):
    ids = tokenizer.encode(word)
    n = 1 + len(context) + len(ids)
    np.testing.assert_array_equal(arrays['tokens'][row, :n],
                                  [tokenizer.vocab.bos_id, *context, *ids])
    weights = arrays['weights'][row]
    assert weights.sum() == len(ids)
    np.testing.assert_array_equal(arrays['targets'][row][weights > 0], ids)


def test_instruction_targets_are_the_response_only(tokenizer):
  arrays = encoding.encode_instructions(tokenizer, [{'prompt': 'apple plum', 'response': 'river'}],
                                        16, tokenizer.vocab)
  prompt, response = tokenizer.encode('apple plum'), tokenizer.encode('river')
  weights = arrays['weights'][0]
  np.testing.assert_array_equal(arrays['targets'][0][weights > 0],
                                [*response, tokenizer.vocab.eos_id])
  assert weights[:len(prompt)].sum() == 0  # no prompt token is a target


@pytest.mark.slow
def test_instruction_tuning_follows_the_recipe(setup, tokenizer):
  """Instruction tuning takes fine-tuning's recipe: max_steps caps the steps, and a warmup over
  the whole (one-step) run leaves the first update at learning rate 0."""
  from downstream import instruct  # pylint: disable=import-outside-toplevel
  _, config, _, backbone = setup
  pairs = [{'prompt': f'apple plum {i}', 'response': 'river'} for i in range(8)]
  strategy = strategies.Strategy('full')
  model = DownstreamModel(config, 'classification', 2, True, 'last', 0.0, strategy.lora_scale)

  def run(**recipe):
    settings = finetune.TrainSettings(learning_rate=1e-2, epochs=3, batch_size=4, **recipe)
    return instruct.train_and_evaluate(model, strategy, backbone, tokenizer, pairs, pairs,
                                       settings, seq_len=16, keep_params=True)

  assert run(warmup_fraction=0.0).steps == 6  # 8 pairs / batch 4 x 3 epochs
  capped = run(max_steps=1, warmup_fraction=0.0)
  assert capped.steps == 1 and _changed(backbone, capped.params['backbone'])
  warm = run(max_steps=1, warmup_fraction=1.0)
  assert warm.steps == 1 and not _changed(backbone, warm.params['backbone'])


def test_lora_trains_adapters_with_the_strategys_scale(setup, tokenizer):
  """A model built without a LoRA scale (the library example's DownstreamModel(...)) trains
  with the strategy's alpha / r: the same parameters as a model built with it, every B moved."""
  task, config, encoded, backbone = setup
  strategy = strategies.Strategy('lora', lora_rank=2, lora_alpha=4.0)
  settings = finetune.TrainSettings(learning_rate=1e-2, epochs=1, batch_size=8, max_steps=2,
                                    warmup_fraction=0.0)
  runs = []
  for scale in (0.0, strategy.lora_scale):
    model = DownstreamModel(config, 'classification', 2, True, 'last', 0.0, scale)
    runs.append(finetune.train_and_evaluate(model, strategy, backbone, task, encoded, settings,
                                            ordinary_ids=tokenizer.vocab.ordinary_ids,
                                            eval_splits=('validation',), keep_params=True))
  assert strategy.lora_scale == 2.0
  for left, right in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
    np.testing.assert_array_equal(np.asarray(left), np.asarray(right))
  assert runs[0].scores == runs[1].scores
  bs = [v for k, v in traverse_util.flatten_dict(runs[0].params['lora'], sep='/').items()
        if k.endswith('/b')]
  assert len(bs) == 4 and all(np.abs(np.asarray(b)).max() > 0 for b in bs)
  # Adapters under a zero scale would be ignored: the model refuses them.
  unscaled = DownstreamModel(config, 'classification', 2, True, 'last', 0.0, 0.0)
  batch = {k: jnp.asarray(v[:2]) for k, v in encoded['train'].arrays.items()}
  with pytest.raises(ValueError, match='lora_scale'):
    unscaled.apply(runs[0].params, batch)


def test_selection_skips_diverged_points_and_reports_the_selected_test(setup, monkeypatch):
  """The grid point with the best mean dev score is selected even when an earlier point
  diverged (NaN), and the reported test scores are that point's."""
  task, config, encoded, backbone = setup
  encoded = dict(encoded, test=encoded['validation'])
  dev = {1e-3: [math.nan, math.nan], 1e-2: [0.5, 0.7], 1e-1: [0.6, 0.4]}
  test = {1e-3: [0.9, 0.9], 1e-2: [0.25, 0.75], 1e-1: [0.8, 0.8]}

  def fake_run(model, strategy, backbone, task, encoded, settings, **kwargs):
    del model, strategy, backbone, task, encoded, kwargs
    lr, seed = settings.learning_rate, settings.seed
    return finetune.RunResult(scores={'validation': {'accuracy': dev[lr][seed]},
                                      'test': {'accuracy': test[lr][seed]}},
                              trained_params=1, total_params=2, steps=3, examples_per_sec=0.0)

  monkeypatch.setattr(finetune, 'train_and_evaluate', fake_run)
  model = DownstreamModel(config, 'classification', 2, True, 'last', 0.0)
  found = finetune.grid_search(model, strategies.Strategy('linear_probe'), backbone, task, encoded,
                               learning_rates=(1e-3, 1e-2, 1e-1), epochs=(1,), seeds=(0, 1),
                               base=finetune.TrainSettings(0.0, 1), ordinary_ids=np.arange(3),
                               log=lambda line: None)
  assert found['selected'] == {'learning_rate': 1e-2, 'epochs': 1}  # dev 0.6 > 0.5 > NaN
  assert found['dev']['accuracy'] == {'mean': pytest.approx(0.6), 'std': pytest.approx(0.1),
                                      'values': [0.5, 0.7]}
  assert found['test']['accuracy'] == {'mean': 0.5, 'std': 0.25, 'values': [0.25, 0.75]}


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.slow
def test_logits_do_not_depend_on_padding_with_a_soft_prompt(tokenizer, causal):
  """A row scored alone (tight seq_len) and in a batch padded to 24 gives the same logits for
  every pooling with soft prompts in front; 'last' reads the end token and 'first' the start."""
  config = ModelConfig(vocab_size=tokenizer.size, num_layers=1, embed_dim=32, num_heads=2,
                       mlp_dim=64, max_len=32)
  layout = encoding.layout_for(tokenizer.vocab, causal)
  examples = [{'text': 'apple banana', 'label': 0},
              {'text': ' '.join(helpers.WORDS[1]), 'label': 1}]
  alone = encoding.encode_texts(tokenizer, examples[:1], 6, layout)
  batch = encoding.encode_texts(tokenizer, examples, 24, layout)
  length = int(alone['segment_ids'][0].sum())
  assert alone['tokens'][0, length - 1] == layout.end_id and batch['segment_ids'][0].sum() == length
  inputs = ModelInputs(tokens=jnp.asarray(alone['tokens']), positions=jnp.asarray(alone['positions']),
                       segment_ids=jnp.asarray(alone['segment_ids']), causal=causal)
  backbone = nn.unbox(Transformer(config).init(jax.random.key(0), inputs)['params'])
  strategy = strategies.Strategy('prompt_tuning', prompt_length=3)
  for pooling in ('first', 'last', 'mean'):
    model = DownstreamModel(config, 'classification', 2, causal, pooling, 0.0)
    params = strategy.add_params(jax.random.key(2), {
        'backbone': backbone, 'head': model.init_head(jax.random.key(1), alone)},
                                 tokenizer.vocab.ordinary_ids)
    np.testing.assert_allclose(np.asarray(model.apply(params, alone))[0],
                               np.asarray(model.apply(params, batch))[0], atol=1e-5)
    hidden = np.asarray(model.hidden(params, batch, train=False, rng=jax.random.key(0)))
    kernel = np.asarray(params['head']['output']['kernel'])
    bias = np.asarray(params['head']['output']['bias'])
    pooled = {'first': hidden[0, 0], 'last': hidden[0, length - 1],
              'mean': hidden[0, :length].mean(axis=0)}[pooling]
    np.testing.assert_allclose(np.asarray(model.apply(params, batch))[0], pooled @ kernel + bias,
                               atol=1e-5)
  # The prompt starts as rows of the embedding table, of ordinary (non-special) pieces.
  table = np.asarray(backbone['token_embed']['embedding'])
  prompt = np.asarray(params['prompt'])
  assert prompt.shape == (3, 32)
  rows = [int(np.flatnonzero((table == vector).all(axis=1))[0]) for vector in prompt]
  assert set(rows) <= set(tokenizer.vocab.ordinary_ids.tolist())


@pytest.mark.slow
def test_linear_probe_trains_on_the_backbone_without_dropout(setup, tokenizer):
  """The probe's head trains on the frozen backbone's evaluation-time features: with
  config.model.dropout 0.5 it ends bit-identical to the head trained with dropout 0 (head
  dropout still applies), while full fine-tuning keeps the backbone's dropout."""
  task, config, encoded, backbone = setup
  settings = finetune.TrainSettings(learning_rate=1e-2, epochs=1, batch_size=8, max_steps=3,
                                    warmup_fraction=0.0)

  def head(name, dropout):
    model = DownstreamModel(dataclasses.replace(config, dropout=dropout), 'classification', 2,
                            True, 'last', 0.3)
    result = finetune.train_and_evaluate(model, strategies.Strategy(name), backbone, task,
                                         encoded, settings,
                                         ordinary_ids=tokenizer.vocab.ordinary_ids,
                                         eval_splits=(), keep_params=True)
    return np.asarray(result.params['head']['output']['kernel'])

  np.testing.assert_array_equal(head('linear_probe', 0.5), head('linear_probe', 0.0))
  assert not np.array_equal(head('full', 0.5), head('full', 0.0))
  no_head_dropout = DownstreamModel(config, 'classification', 2, True, 'last', 0.0)
  probe = finetune.train_and_evaluate(no_head_dropout, strategies.Strategy('linear_probe'),
                                      backbone, task, encoded, settings,
                                      ordinary_ids=tokenizer.vocab.ordinary_ids, eval_splits=(),
                                      keep_params=True)
  assert not np.array_equal(np.asarray(probe.params['head']['output']['kernel']),
                            head('linear_probe', 0.0))
