"""Causal language modeling (GPT): predict every next token within its document."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from objectives import base
from objectives.registry import register


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """Left-to-right attention; targets are the next token, never across a document boundary."""

  data_format: str = 'packed'

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def prepare(self, rng: jax.Array, batch: base.Batch, inputs):
    del rng  # deterministic
    return inputs.replace(causal=True), next_token_targets(batch['tokens'], batch['segment_ids'])

  def loss(self, outputs, targets):
    return base.token_cross_entropy(outputs.logits, targets['targets'], targets['weights'])


def next_token_targets(tokens: jax.Array, segment_ids: jax.Array) -> dict[str, jax.Array]:
  """targets[b, i] = tokens[b, i + 1], weighted 1 only when i + 1 is in i's (non-padding) document."""
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  next_segment = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  weights = (next_segment == segment_ids) & (segment_ids > 0)
  return {'targets': targets, 'weights': weights.astype(jnp.float32)}


@register('clm')
def make(settings, *, vocab, seq_len: int) -> CausalLM:
  del vocab
  if settings:
    raise ValueError(f'config.clm takes no settings, got {sorted(settings)}.')
  if seq_len < 2:
    raise ValueError('config.seq_len must be at least 2 for causal LM.')
  return CausalLM()
