"""Next-sentence and sentence-order prediction: the loss, the contract, and BERT end to end."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.vocab import toy_vocab
from models.config import ModelConfig
from models.transformer import ModelOutputs, Transformer
from objectives import base, registry
from tests.helpers import pair_iterator

VOCAB = toy_vocab(64)


def _build(objective, seq_len=32):
  return registry.build(objective, lambda name: {}, vocab=VOCAB, seq_len=seq_len)


def test_loss_matches_numpy():
  objective = _build('nsp')
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 2)).astype(np.float32) * 2
  labels = np.array([0, 1, 1, 0, 1, 0], np.int32)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  expected = -log_probs[np.arange(6), labels].mean()
  correct = (logits.argmax(-1) == labels).sum()
  inputs = base.base_inputs({'tokens': np.zeros((6, 8), np.int32),
                             'positions': np.zeros((6, 8), np.int32),
                             'segment_ids': np.ones((6, 8), np.int32)})
  new_inputs, targets = objective.prepare(jax.random.key(0), {
      'tokens': inputs.tokens, 'positions': inputs.positions, 'segment_ids': inputs.segment_ids,
      'next_sentence_label': labels})
  assert new_inputs.compute_logits and new_inputs.predict_index is None
  loss, metrics = objective.loss(ModelOutputs(hidden=jnp.zeros((6, 8, 4)),
                                              sentence_logits=jnp.asarray(logits)), targets)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert base.metric_value(*metrics['nsp_loss']) == pytest.approx(expected, rel=1e-6)
  assert float(metrics['nsp_accuracy'][0]) == correct and float(metrics['nsp_accuracy'][1]) == 6


def test_contract_of_nsp_and_sop():
  assert _build('nsp').data_format == 'sentence_pairs'
  assert _build('sop').data_format == 'sentence_order_pairs'
  for name in ('nsp', 'sop'):
    assert _build(name).model_overrides() == {'num_sentence_classes': 2}
  combined = _build({'mlm': 1.0, 'nsp': 1.0})
  assert combined.data_format == 'sentence_pairs'
  with pytest.raises(ValueError, match='mixes data formats'):
    _build({'nsp': 1.0, 'sop': 1.0})
  with pytest.raises(ValueError, match='config.nsp takes no settings'):
    registry.build('nsp', lambda name: {'rate': 1}, vocab=VOCAB, seq_len=32)
  with pytest.raises(ValueError, match='seq_len'):
    _build('sop', seq_len=4)


def _documents(num_docs=40, seed=0):
  """Documents of 2-8 sentences of lowercase words a..z; the tokenizer maps letters to ids."""
  rng = np.random.default_rng(seed)
  letters = 'abcdefghijklmnopqrstuvwxyz'
  documents = []
  for _ in range(num_docs):
    sentences = [' '.join(''.join(rng.choice(list(letters), rng.integers(1, 4)))
                          for _ in range(rng.integers(3, 10))) + '.'
                 for _ in range(rng.integers(2, 9))]
    documents.append(' '.join(sentences))
  def tokenize(text):
    out = []
    for word in text.replace('.', '').split():
      out.extend(7 + 2 * (ord(c) - 97) if i == 0 else 8 + 2 * (ord(c) - 97)
                 for i, c in enumerate(word))
    return out
  return documents, tokenize


@pytest.mark.parametrize('objective_name, sentence_order', [('nsp', False), ('sop', True)])
@pytest.mark.slow
def test_bert_end_to_end_forward_loss_and_gradient(objective_name, sentence_order):
  seq_len = 32
  documents, tokenize = _documents()
  iterator = pair_iterator(documents, tokenize, VOCAB, seq_len=seq_len, local_batch_size=8,
                           seed=0, shuffle=True, repeat=True, sentence_order=sentence_order)
  batch = {key: jnp.asarray(value) for key, value in next(iterator).items()}
  objective = _build({'mlm': 1.0, objective_name: 1.0}, seq_len)
  overrides = objective.model_overrides()
  config = ModelConfig(vocab_size=VOCAB.size, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                       max_len=seq_len, num_token_types=2, norm='post', lm_transform=True,
                       **overrides)
  model = Transformer(config)
  inputs, targets = objective.prepare(jax.random.key(1), batch)
  assert inputs.predict_index.shape == (8, 5)  # ceil(32 * 0.15)
  params = nn.unbox(model.init(jax.random.key(2), inputs)['params'])

  @jax.jit
  def loss_fn(params, rng):
    inputs, targets = objective.prepare(rng, batch)
    outputs = model.apply({'params': params}, inputs)
    return objective.loss(outputs, targets)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, jax.random.key(1))
  outputs = model.apply({'params': params}, inputs)
  assert outputs.logits.shape == (8, 5, VOCAB.size) and outputs.sentence_logits.shape == (8, 2)
  mlm_loss = base.metric_value(*metrics['mlm_loss'])
  sentence_loss = base.metric_value(*metrics[f'{objective_name}_loss'])
  assert float(loss) == pytest.approx(mlm_loss + sentence_loss, rel=1e-5)
  assert abs(sentence_loss - np.log(2)) < 0.3  # an untrained classifier is near chance
  assert abs(mlm_loss - np.log(VOCAB.size)) < 1.0
  assert f'{objective_name}_accuracy' in metrics and 'mlm_accuracy' in metrics
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  pooler = grads['sentence_classifier']['kernel']
  assert float(jnp.abs(pooler).sum()) > 0
  assert float(jnp.abs(grads['lm_transform']['kernel']).sum()) > 0


@pytest.mark.slow
def test_pooler_head_fits_the_labels_of_real_pairs():
  """Labels reach the loss aligned with their pairs and gradients reach every layer: Adam
  fits the NSP labels of one batch of pairs from the pair iterator within 60 steps."""
  import optax  # pylint: disable=import-outside-toplevel

  seq_len = 32
  documents, tokenize = _documents()
  iterator = pair_iterator(documents, tokenize, VOCAB, seq_len=seq_len, local_batch_size=16,
                           seed=1, shuffle=True, repeat=True)
  batch = {key: jnp.asarray(value) for key, value in next(iterator).items()}
  labels = np.asarray(batch['next_sentence_label'])
  assert 0 < labels.sum() < len(labels)  # both classes are present
  objective = _build('nsp', seq_len)
  config = ModelConfig(vocab_size=VOCAB.size, num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64,
                       max_len=seq_len, num_token_types=2, norm='post',
                       **objective.model_overrides())
  model = Transformer(config)
  inputs, targets = objective.prepare(jax.random.key(0), batch)
  params = nn.unbox(model.init(jax.random.key(2), inputs)['params'])
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      return objective.loss(model.apply({'params': params}, inputs), targets)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics, grads

  opt_state = tx.init(params)
  params, opt_state, first_loss, _, grads = step(params, opt_state)
  assert float(jnp.abs(grads['layers']['attention']['query']['kernel']).sum()) > 0
  for _ in range(60):
    params, opt_state, loss, metrics, _ = step(params, opt_state)
  assert abs(float(first_loss) - np.log(2)) < 0.1
  assert float(loss) < 0.05
  assert base.metric_value(*metrics['nsp_accuracy']) == 1.0
