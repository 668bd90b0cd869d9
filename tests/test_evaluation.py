"""Held-out evaluation: one exact deterministic pass, integer counts, bits per byte by hand."""

from __future__ import annotations

import math
import os
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import compare
from data import tokenizer as tokenizer_lib
from data import pipeline
from models.config import ModelConfig
from models.transformer import Transformer
from training import evaluation, mesh as mesh_lib

from tests.helpers import TEST_CACHE_ENV

WORDS = ('alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi '
         'rho sigma tau upsilon phi chi psi omega').split()


def _documents(count: int, seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(count):
    sentences = [' '.join(rng.choice(WORDS, size=rng.integers(4, 9))).capitalize() + '.'
                 for _ in range(rng.integers(2, 6))]
    docs.append(' '.join(sentences))
  return docs


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tok')
  config = compare.get_config('mlm:tiny')
  config.data.vocab_size = 400
  previous = os.environ.get(TEST_CACHE_ENV)
  os.environ[TEST_CACHE_ENV] = str(folder / 'cache')
  try:
    return tokenizer_lib.load_or_train(config.data, str(folder), _documents(200, 0))
  finally:
    if previous is None:
      del os.environ[TEST_CACHE_ENV]
    else:
      os.environ[TEST_CACHE_ENV] = previous


def _experiment(arm: str, tokenizer, batch_size: int = 8, devices=None):
  config = compare.get_config(f'{arm}:tiny')
  config.seq_len = 32
  config.batch_size = batch_size
  config.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, max_len=32)
  objective = evaluation.eval_objective(config, tokenizer.vocab)
  values = dict(config.model)
  values['vocab_size'] = tokenizer.size
  model_config = ModelConfig.from_config(values, **objective.model_overrides())
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.logical_rules(config.mesh)
  return types.SimpleNamespace(
      config=config, tokenizer=tokenizer, objective=objective, model_config=model_config,
      mesh=mesh, rules=rules, local_batch_size=batch_size,
      data_format=compare.ARMS[arm].data_format if arm in compare.ARMS
      else objective.data_format)


def _params(exp):
  model = Transformer(exp.model_config)
  example = pipeline.example_batch(exp.data_format, 2, exp.config.seq_len)
  key = jax.random.key(3)
  inputs, _ = exp.objective.prepare(key, example)
  return nn.unbox(model.init({'params': key, 'dropout': key}, inputs)['params'])


def test_token_bytes_spell_the_text(tokenizer):
  sizes = evaluation.token_bytes(tokenizer)
  text = 'Gamma délta → omega.'
  ids = tokenizer.encode(text)
  # SentencePiece's dummy prefix adds one leading space; everything else is the text's bytes.
  assert int(sizes[ids].sum()) == len((' ' + text).encode('utf-8'))
  assert sizes[tokenizer.vocab.bos_id] == 0 and sizes[tokenizer.vocab.pad_id] == 0


def test_bits_per_byte_match_a_hand_computation():
  objective = types.SimpleNamespace(parts=(('clm', 1.0, None),))
  examples = {'key': np.arange(2), 'clm.nll': np.array([3.0, 5.0]),
              'clm.count': np.array([2, 3]), 'clm.correct': np.array([1, 0]),
              'clm.bytes': np.array([7, 9])}
  values = evaluation.summarize(objective, examples)
  assert values['clm_predictions'] == 5 and values['clm_bytes'] == 16
  assert values['clm_loss'] == pytest.approx(8.0 / 5)
  assert values['clm_perplexity'] == pytest.approx(math.exp(8.0 / 5))
  assert values['clm_bits_per_byte'] == pytest.approx(8.0 / math.log(2) / 16)
  assert values['clm_accuracy'] == pytest.approx(1 / 5)


@pytest.mark.parametrize('arm', ['clm', 'mlm_nsp'])
@pytest.mark.slow
def test_exact_pass_covers_every_example_once_and_repeats(arm, tokenizer, tmp_path):
  exp = _experiment(arm, tokenizer)
  documents = _documents(9, 1)
  params = _params(exp)
  metrics, examples = evaluation.evaluate_examples(exp, params, documents=documents)
  again, examples_again = evaluation.evaluate_examples(exp, params, documents=documents)
  assert metrics == again  # same checkpoint, same numbers, bit for bit
  for key in examples:
    np.testing.assert_array_equal(examples[key], examples_again[key])
  batches = list(evaluation.exact_batches(exp, 'validation', documents))
  real = np.concatenate([b['segment_ids'].any(axis=1) for b in batches])
  assert metrics['examples'] == int(real.sum()) == len(examples['key'])
  assert real[:real.sum()].all()  # only the last batch carries padding rows
  if arm == 'clm':
    # Every document's tokens appear exactly once, in order: the pass is the whole split.
    tokens = np.concatenate([b['tokens'][b['segment_ids'] > 0] for b in batches])
    expected = np.concatenate([[tokenizer.vocab.bos_id, *tokenizer.encode(d),
                                tokenizer.vocab.eos_id] for d in documents])
    np.testing.assert_array_equal(tokens, expected)
    # CLM predicts every next token inside a document chunk: integer count by hand.
    segments = np.concatenate([b['segment_ids'] for b in batches])
    same = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
    assert metrics['clm_predictions'] == int(same.sum())
    assert metrics['clm_bits_per_byte'] == pytest.approx(
        float(np.sum(examples['clm.nll'], dtype=np.float64)) / math.log(2)
        / float(np.sum(examples['clm.bytes'])))
  else:
    assert metrics['nsp_predictions'] == metrics['examples']
    assert 0.0 <= metrics['nsp_accuracy'] <= 1.0
    assert isinstance(metrics['mlm_predictions'], int) and metrics['mlm_predictions'] > 0
  path = tmp_path / evaluation.EXAMPLES_FILE
  evaluation.save_examples(str(path), examples, metrics)
  loaded, loaded_metrics = evaluation.load_examples(str(path))
  assert loaded_metrics == pytest.approx(metrics)
  np.testing.assert_array_equal(loaded['key'], examples['key'])


def test_masks_do_not_depend_on_the_run_seed(tokenizer):
  exp = _experiment('mlm', tokenizer)
  params = _params(exp)
  documents = _documents(6, 2)
  first = evaluation.evaluate_examples(exp, params, documents=documents)[0]
  exp.config.seed = 17
  second = evaluation.evaluate_examples(exp, params, documents=documents)[0]
  assert first == second


@pytest.mark.parametrize('arm', ['mlm', 'plm'])
@pytest.mark.slow
def test_numbers_do_not_depend_on_the_batch_size_or_devices(arm, tokenizer):
  """Masks and permutations are drawn per example, so an example scores the same in a batch
  of 8 on 8 devices, a batch of 16 on 8 devices and a batch of 8 on one device."""
  documents = _documents(9, 1)
  params = _params(_experiment(arm, tokenizer))
  results = [evaluation.evaluate_examples(_experiment(arm, tokenizer, size, devices), params,
                                          documents=documents)
             for size, devices in ((8, None), (16, None), (8, jax.devices()[:1]))]
  (metrics, examples), others = results[0], results[1:]
  assert metrics['examples'] == 11 and metrics[f'{arm}_predictions'] > 0
  for other_metrics, other_examples in others:
    for key in ('key', f'{arm}.count', f'{arm}.bytes', f'{arm}.correct'):
      np.testing.assert_array_equal(other_examples[key], examples[key])
    np.testing.assert_allclose(other_examples[f'{arm}.nll'], examples[f'{arm}.nll'], rtol=1e-5)
    for key in (f'{arm}_predictions', f'{arm}_bytes', 'examples'):
      assert other_metrics[key] == metrics[key]
    assert other_metrics[f'{arm}_bits_per_byte'] == pytest.approx(
        metrics[f'{arm}_bits_per_byte'], rel=1e-6)


@pytest.mark.slow
def test_span_corruption_bits_per_byte_from_the_logits_by_hand(tokenizer):
  """Sentinel ids lie past the tokenizer's: they spell 0 bytes (not the last piece's), and
  their loss still counts. Hand computation from the model's logits."""
  from training.state import split_and_bind  # pylint: disable=import-outside-toplevel

  exp = _experiment('span_corruption', tokenizer)
  documents = _documents(9, 1)
  params = _params(exp)
  metrics, examples = evaluation.evaluate_examples(exp, params, documents=documents)
  sp = tokenizer._sp  # pylint: disable=protected-access

  def spelled(index):  # UTF-8 bytes of a piece, '▁' a space; specials and sentinels nothing
    if index >= sp.GetPieceSize() or tokenizer.vocab.is_special[index] or sp.IsControl(index):
      return 0
    return 1 if sp.IsByte(index) else len(sp.IdToPiece(index).replace('\u2581', ' ').encode())

  model = Transformer(exp.model_config)
  total, count, size, sentinels = 0.0, 0, 0, 0
  for batch in evaluation.exact_batches(exp, 'validation', documents):
    _, bound = split_and_bind(exp.objective, params, exp.model_config, train=False)
    keys = evaluation.row_key(batch['tokens'])
    with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
      inputs, targets = evaluation.per_row(bound.prepare, keyed=True)(
          jax.vmap(evaluation.row_rng)(keys), batch)
      logits = np.asarray(model.apply({'params': params}, inputs, train=False).logits,
                          np.float64)
    labels = np.asarray(targets[0]['targets'])
    weight = (np.asarray(targets[0]['weights']) > 0) & batch['segment_ids'].any(axis=1)[:, None]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    total += float(-np.take_along_axis(log_probs, labels[..., None], -1)[..., 0][weight].sum())
    count += int(weight.sum())
    size += sum(spelled(int(i)) for i in labels[weight])
    sentinels += int((labels[weight] >= tokenizer.size).sum())
  assert sentinels > 0 and count > sentinels
  assert metrics['span_corruption_predictions'] == count
  assert metrics['span_corruption_bytes'] == size
  assert metrics['span_corruption_loss'] == pytest.approx(total / count, rel=1e-5)
  assert metrics['span_corruption_perplexity'] == pytest.approx(math.exp(total / count), rel=1e-5)
  assert metrics['span_corruption_bits_per_byte'] == pytest.approx(
      total / math.log(2) / size, rel=1e-5)
  assert int(examples['span_corruption.bytes'].sum()) == size


def test_examples_saved_again_replace_the_earlier_ones(tmp_path):
  """Evaluating a run again (after it trained further) overwrites its per-example file."""
  path = str(tmp_path / 'validation_examples.npz')
  evaluation.save_examples(path, {'key': np.array([1, 2])}, {'loss': 2.0})
  evaluation.save_examples(path, {'key': np.array([3])}, {'loss': 1.5})
  examples, metrics = evaluation.load_examples(path)
  assert examples['key'].tolist() == [3] and metrics == {'loss': 1.5}
  assert sorted(os.listdir(tmp_path)) == ['validation_examples.npz']
