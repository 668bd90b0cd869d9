"""Causal language modeling (GPT): predict every next token within its document.

`loss_chunk` > 0 scores the next tokens that many positions at a time inside the model
(ModelInputs.labels), so the float32 logits [batch, seq_len, vocab] never exist at once and
are recomputed chunk by chunk in the backward pass; the loss is the same.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from objectives import base
from objectives.registry import register
from objectives.sections import SECTIONS

DEFAULTS = SECTIONS['clm']  # config.clm: objectives/sections.py


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """Left-to-right attention; targets are the next token, never across a document boundary."""

  data_format: str = 'packed'
  loss_chunk: int = 0

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def prepare(self, rng: jax.Array, batch: base.Batch, inputs):
    del rng  # deterministic
    targets = next_token_targets(batch['tokens'], batch['segment_ids'])
    inputs = inputs.replace(causal=True)
    if self.loss_chunk:
      inputs = inputs.replace(labels=targets['targets'], label_chunk=self.loss_chunk)
    return inputs, targets

  def loss(self, outputs, targets):
    return base.token_loss(outputs, targets)


def next_token_targets(tokens: jax.Array, segment_ids: jax.Array) -> dict[str, jax.Array]:
  """targets[b, i] = tokens[b, i + 1], weighted 1 only when i + 1 is in i's (non-padding) document."""
  targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  next_segment = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
  weights = (next_segment == segment_ids) & (segment_ids > 0)
  return {'targets': targets, 'weights': weights.astype(jnp.float32)}


@register('clm', defaults=DEFAULTS)
def make(settings: Mapping[str, Any] | None, *, vocab, seq_len: int) -> CausalLM:
  del vocab
  settings = base.with_defaults('clm', settings, DEFAULTS)
  chunk = settings['loss_chunk']
  if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
    raise ValueError(f'config.clm.loss_chunk must be an integer >= 0 (0: whole sequence at '
                     f'once), got {chunk!r}.')
  if seq_len < 2:
    raise ValueError('config.seq_len must be at least 2 for causal LM.')
  return CausalLM(loss_chunk=min(chunk, seq_len))
