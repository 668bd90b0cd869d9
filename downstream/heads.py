"""Task heads on the shared Transformer's final hidden states, and their losses.

  - classification (single texts and pairs) and regression: a dense layer on a pooled state;
  - extractive QA: start and end logits per token, restricted to the context tokens.

Pooling: 'first' (the [CLS] token; bidirectional models), 'last' (the last non-padding
token, the only one a causal model lets see the whole input) or 'mean' over real tokens.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
POOLINGS = ('first', 'last', 'mean')
HEAD_KINDS = ('classification', 'regression', 'qa')


def default_pooling(causal: bool) -> str:
  """The last real token for causal models, the first ([CLS]) for bidirectional ones."""
  return 'last' if causal else 'first'


def pool(hidden: Array, segment_ids: Array, mode: str) -> Array:
  """[batch, embed] summary of [batch, length, embed] states over the non-padding tokens."""
  real = segment_ids > 0
  if mode == 'first':
    return hidden[:, 0]
  if mode == 'last':
    last = jnp.maximum(real.sum(axis=1) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  if mode == 'mean':
    weights = real.astype(hidden.dtype)[..., None]
    return (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
  raise ValueError(f'config.pooling must be one of {POOLINGS}, got {mode!r}.')


class PooledHead(nn.Module):
  """Dropout and a dense layer on the pooled state: class logits, or one regression value."""

  num_outputs: int
  pooling: str
  dropout: float = 0.0

  @nn.compact
  def __call__(self, hidden: Array, batch: dict[str, Array], train: bool) -> Array:
    pooled = pool(hidden.astype(jnp.float32), batch['segment_ids'], self.pooling)
    pooled = nn.Dropout(self.dropout)(pooled, deterministic=not train)
    return nn.Dense(self.num_outputs, kernel_init=nn.initializers.normal(0.02),
                    name='output')(pooled)


class SpanHead(nn.Module):
  """Start and end logits [batch, length] per token; -1e9 outside the context, except at
  position 0 ([CLS] or bos), the target of a window that does not hold the answer (BERT's
  run_squad). Decoding reads context tokens only."""

  dropout: float = 0.0

  @nn.compact
  def __call__(self, hidden: Array, batch: dict[str, Array], train: bool) -> Array:
    hidden = nn.Dropout(self.dropout)(hidden.astype(jnp.float32), deterministic=not train)
    logits = nn.Dense(2, kernel_init=nn.initializers.normal(0.02), name='span')(hidden)
    first = jnp.arange(logits.shape[1]) == 0
    outside = (batch['context_mask'] == 0) & ~first
    return jnp.where(outside[..., None], -1e9, logits)  # [batch, length, 2]


def make_head(kind: str, num_labels: int, pooling: str, dropout: float) -> nn.Module:
  if kind == 'qa':
    return SpanHead(dropout)
  if kind in ('classification', 'regression'):
    if pooling not in POOLINGS:
      raise ValueError(f'config.pooling must be one of {POOLINGS} or "", got {pooling!r}.')
    return PooledHead(1 if kind == 'regression' else num_labels, pooling, dropout)
  raise ValueError(f'Unknown head kind {kind!r}: choose from {HEAD_KINDS}.')


def loss(kind: str, outputs: Array, batch: dict[str, Any]) -> Array:
  """Mean cross-entropy (classification), squared error (regression) or the mean of the start
  and end cross-entropies (QA)."""
  if kind == 'classification':
    return optax.softmax_cross_entropy_with_integer_labels(outputs, batch['label']).mean()
  if kind == 'regression':
    return jnp.mean((outputs[:, 0] - batch['label']) ** 2)
  start = optax.softmax_cross_entropy_with_integer_labels(outputs[..., 0], batch['start'])
  end = optax.softmax_cross_entropy_with_integer_labels(outputs[..., 1], batch['end'])
  return ((start + end) / 2).mean()


def predictions(kind: str, outputs: Array) -> Array:
  """What evaluation keeps per example: the class, the value, or the [length, 2] span logits."""
  if kind == 'classification':
    return jnp.argmax(outputs, axis=-1)
  if kind == 'regression':
    return outputs[:, 0]
  return outputs
