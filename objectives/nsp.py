"""Sentence-pair classification from the pooled [CLS] state: BERT's next-sentence
prediction ('nsp') and ALBERT's sentence-order prediction ('sop').

The head is this objective's own (`sentence_head`: BERT's pooler, dense + tanh on the first
position, then a classifier), attached to the model through models/heads.py; its parameters
sit at `params/pooler` and `params/sentence_classifier`, as in every checkpoint.

Both read `next_sentence_label` from the host batch (data/formats/pairs.py): for nsp 1 means B
is a random sentence, for sop 1 means A and B were swapped. prepare() leaves the model inputs
untouched, including compute_logits: switching token logits off could starve an objective
prepared earlier that relies on the default, so NSP alone pays for an unused vocabulary
projection rather than risk that.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from data.vocab import Vocab
from models import heads
from models.config import ModelConfig
from objectives import base
from objectives.registry import register

LABEL_KEY = 'next_sentence_label'
MIN_SEQ_LEN = 5  # [CLS] a [SEP] b [SEP]


def sentence_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, base.Metrics]:
  """Mean cross-entropy of [B, C] logits against [B] labels, with loss/accuracy metrics."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  count = jnp.asarray(labels.shape[0], jnp.float32)
  total = losses.sum()
  correct = (jnp.argmax(logits, axis=-1) == labels).sum().astype(jnp.float32)
  return total / count, {'loss': (total, count), 'accuracy': (correct, count)}


def sentence_head(cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
  """BERT's pooler (dense + tanh on the first position's final state) and the classifier:
  [B, T, D] -> [B, num_sentence_classes] float32 logits. Called inside the model's scope."""
  init = nn.with_logical_partitioning(nn.initializers.normal(stddev=cfg.init_std),
                                      ('embed', None))
  pooled = nn.tanh(nn.Dense(
      cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32, kernel_init=init,
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
      name='pooler')(hidden[:, 0]))
  return nn.Dense(
      cfg.num_sentence_classes, dtype=jnp.float32, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=cfg.init_std),
                                               (None, None)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
      name='sentence_classifier')(pooled)


heads.attach(heads.SENTENCE, sentence_head)


@dataclasses.dataclass(frozen=True)
class SentencePrediction:
  """Two-way classification of a sentence pair by the model's pooler head."""

  data_format: str

  def model_overrides(self) -> dict[str, Any]:
    return {'num_sentence_classes': 2}

  def prepare(self, rng: jax.Array, batch: base.Batch, inputs):
    del rng  # deterministic
    return inputs, {'labels': jnp.asarray(batch[LABEL_KEY], jnp.int32)}

  def loss(self, outputs, targets):
    if outputs.sentence_logits is None:
      raise ValueError('Sentence prediction needs config.model.num_sentence_classes=2 '
                       '(the pooler head); the model produced no sentence_logits.')
    return sentence_cross_entropy(outputs.sentence_logits, targets['labels'])


def _make(name: str, data_format: str, settings: Mapping[str, Any] | None, vocab: Vocab,
          seq_len: int) -> SentencePrediction:
  if settings:
    raise ValueError(f'config.{name} takes no settings, got {sorted(dict(settings))}.')
  if vocab.cls_id < 0 or vocab.sep_id < 0:
    raise ValueError(f'config.objective includes {name}, which needs [CLS] and [SEP] tokens, '
                     'but the vocabulary lacks one (cls_id or sep_id < 0).')
  if seq_len < MIN_SEQ_LEN:
    raise ValueError(f'config.seq_len must be at least {MIN_SEQ_LEN} for {name} '
                     f'([CLS] A [SEP] B [SEP]), got {seq_len}.')
  return SentencePrediction(data_format=data_format)


@register('nsp')
def make_nsp(settings, *, vocab: Vocab, seq_len: int) -> SentencePrediction:
  """Next-sentence prediction on (A, B) pairs whose B is the continuation or a random one."""
  return _make('nsp', 'sentence_pairs', settings, vocab, seq_len)


@register('sop')
def make_sop(settings, *, vocab: Vocab, seq_len: int) -> SentencePrediction:
  """Sentence-order prediction on consecutive (A, B) pairs, swapped half of the time."""
  return _make('sop', 'sentence_order_pairs', settings, vocab, seq_len)
