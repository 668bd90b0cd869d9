"""Deshuffling (T5's objective study): reconstruct a sequence from a random permutation of it.

The first `seq_len // 2` tokens of a packed window (the n real ones) are shuffled uniformly;
the shuffled tokens form a bidirectional prefix and the original n tokens follow as the causal
target (`prefix_lm.join`), which alone carries the loss. Like T5, the window's documents are
shuffled as one stream (their eos/bos separators included); the second half of the window is
not used, since input and target together take twice the tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from data.vocab import Vocab
from models.transformer import ModelInputs
from objectives import base
from objectives.prefix_lm import adopt, join
from objectives.registry import register

Array = jax.Array


def shuffle(rng: Array, tokens: Array, n: Array) -> tuple[Array, Array]:
  """(shuffled [L], permutation [L]) of one row: shuffled[i] = tokens[perm[i]] for i < n, a
  uniformly random order of the first n tokens; positions >= n keep their place."""
  length = tokens.shape[0]
  index = jnp.arange(length)
  key = jnp.where(index < n, jax.random.uniform(rng, (length,)), 2.0 + index)
  perm = jnp.argsort(key)
  return tokens[perm], perm


@dataclasses.dataclass(frozen=True)
class Deshuffle:
  """A shuffled bidirectional prefix, the original order as the causal target."""

  vocab: Vocab
  raw_len: int
  data_format: str = 'packed'

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def prepare(self, rng: Array, batch: base.Batch, inputs: ModelInputs | None = None):
    inputs = base.base_inputs(batch) if inputs is None else inputs
    tokens = inputs.tokens[:, :self.raw_len]
    n = (inputs.segment_ids[:, :self.raw_len] > 0).sum(axis=1)
    shuffled, _ = jax.vmap(shuffle)(jax.random.split(rng, tokens.shape[0]), tokens, n)
    joined, targets = join(shuffled, n, tokens, n, length=inputs.tokens.shape[1],
                           pad_id=self.vocab.pad_id, num_predict=self.raw_len)
    return adopt(inputs, joined), targets

  def loss(self, outputs, targets):
    return base.token_cross_entropy(outputs.logits, targets['targets'], targets['weights'])


@register('deshuffle')
def make(settings: Mapping[str, Any] | None, *, vocab: Vocab, seq_len: int) -> Deshuffle:
  """Validates config.deshuffle (no settings) and builds the objective."""
  if settings:
    raise ValueError(f'config.deshuffle takes no settings, got {sorted(dict(settings))}.')
  if seq_len < 4:
    raise ValueError(f'config.seq_len must be at least 4 for deshuffling, got {seq_len}.')
  return Deshuffle(vocab=vocab, raw_len=seq_len // 2)
