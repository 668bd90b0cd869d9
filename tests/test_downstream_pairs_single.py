"""Single texts on a model with sentence A/B (token type) embeddings: the encoding types every
single-text token A (0) and a pair's second text B (1), and the model reads them so that
with the A embedding at zero it computes exactly what the model without token types does.
So a pair arm's single-text fine-tuning differs from a window arm's only by the learned A
vector added to every token (docs/downstream.md, "Sentence A/B embeddings on single texts")."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from downstream import encoding
from downstream.model import DownstreamModel
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer

CLS, SEP, PAD = 1, 2, 0
LAYOUT = encoding.Layout(causal=False, start_id=CLS, sep_id=SEP, end_id=SEP, pad_id=PAD)


class _Ids:
  """A tokenizer whose texts are space-separated ids."""

  def encode_batch(self, texts):
    return [[int(w) for w in text.split()] for text in texts]


def _single_and_pair():
  single = encoding.encode_texts(_Ids(), [{'text': '5 6 7', 'label': 1}], 8, LAYOUT)
  pair = encoding.encode_texts(_Ids(), [{'text': '5 6', 'text_pair': '7 8 9', 'label': 0}], 10,
                               LAYOUT)
  return single, pair


def test_single_texts_are_type_a_and_pairs_a_then_b():
  single, pair = _single_and_pair()
  np.testing.assert_array_equal(single['tokens'][0], [CLS, 5, 6, 7, SEP, PAD, PAD, PAD])
  np.testing.assert_array_equal(single['token_types'][0], [0] * 8)
  np.testing.assert_array_equal(single['segment_ids'][0], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(single['positions'][0], [0, 1, 2, 3, 4, 0, 0, 0])
  # [CLS] 5 6 [SEP] are A (4 tokens), 7 8 9 [SEP] are B (4 tokens), then 2 padding.
  np.testing.assert_array_equal(pair['tokens'][0], [CLS, 5, 6, SEP, 7, 8, 9, SEP, PAD, PAD])
  np.testing.assert_array_equal(pair['token_types'][0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(pair['segment_ids'][0], [1] * 8 + [0, 0])


def _model(num_token_types: int) -> DownstreamModel:
  config = ModelConfig(vocab_size=16, num_layers=1, embed_dim=16, num_heads=2, mlp_dim=32,
                       max_len=16, position='rotary', norm='pre',
                       num_token_types=num_token_types)
  return DownstreamModel(config, 'classification', 2, causal=False, pooling='first',
                         head_dropout=0.0)


def _init(model: DownstreamModel, batch) -> dict:
  inputs = model.inputs({k: jnp.asarray(v) for k, v in batch.items()})
  init = jax.jit(lambda key: Transformer(model.model_config).init(key, inputs)['params'])
  return nn.unbox(init(jax.random.key(0)))


def test_type_a_at_zero_gives_the_model_without_types():
  single, pair = _single_and_pair()
  plain, typed = _model(0), _model(2)
  backbone = _init(typed, single)
  table = backbone['token_type_embed']['embedding']
  assert float(jnp.abs(table[0]).min()) > 0  # A starts nonzero, as BERT's (std init_std)
  zeroed = dict(backbone, token_type_embed={'embedding': table.at[0].set(0.0)})
  without = {k: v for k, v in backbone.items() if k != 'token_type_embed'}
  head = jax.jit(typed.init_head)(jax.random.key(1), single)
  all_a = dict(pair, token_types=np.zeros_like(pair['token_types']))

  @jax.jit
  def outputs(single, pair, all_a):
    run = lambda model, backbone, batch: model.apply({'backbone': backbone, 'head': head}, batch)
    return (run(typed, zeroed, single), run(plain, without, single), run(typed, backbone, single),
            run(typed, backbone, pair), run(typed, backbone, all_a))

  got, want, with_a, as_pair, as_single = map(np.asarray, outputs(single, pair, all_a))
  np.testing.assert_array_equal(got, want)
  # With its A vector the typed model's single-text logits differ, and a pair's B tokens are
  # read: typing them all A instead changes the pooled [CLS] output.
  assert not np.allclose(with_a, want)
  assert np.abs(as_pair - as_single).max() > 1e-6
  assert dataclasses.replace(typed.model_config, num_token_types=0) == plain.model_config
