"""Deshuffling (T5's objective study): reconstruct a sequence from a random permutation of it.

As in T5, each example is one chunk of one document (format `document_chunks`: T5's
deshuffling task has no `reduce_concat_tokens`), of at most `raw_len` = (seq_len - 2) // 2
tokens. Its n tokens are shuffled uniformly (T5's `permute_noise_tokens` at noise density
1); the shuffled tokens and an EOS form a bidirectional prefix, and the original n tokens
and an EOS follow as the causal target (`prefix_lm.join`), which alone carries the loss,
averaged over the real target tokens (n + 1 per row; padding rows have none). The EOS is
appended after shuffling, as T5 appends it after its preprocessing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from data.formats.chunks import chunk_length
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


def with_eos(tokens: Array, n: Array, eos_id: int) -> Array:
  """[B, L + 1]: each row's first n[b] tokens, then EOS where n[b] > 0."""
  padded = jnp.pad(tokens, ((0, 0), (0, 1)))
  rows = jnp.arange(tokens.shape[0])
  end = jnp.where(n > 0, n, tokens.shape[1] + 1)
  return padded.at[rows, end].set(jnp.asarray(eos_id, tokens.dtype), mode='drop')


@dataclasses.dataclass(frozen=True)
class Deshuffle:
  """A shuffled bidirectional prefix, the original order as the causal target."""

  vocab: Vocab
  raw_len: int
  data_format: str = 'document_chunks'

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def prepare(self, rng: Array, batch: base.Batch, inputs: ModelInputs | None = None):
    inputs = base.base_inputs(batch) if inputs is None else inputs
    tokens = inputs.tokens[:, :self.raw_len]
    n = (inputs.segment_ids[:, :self.raw_len] > 0).sum(axis=1)
    shuffled, _ = jax.vmap(shuffle)(jax.random.split(rng, tokens.shape[0]), tokens, n)
    eos = self.vocab.eos_id
    length = n + (n > 0)
    joined, targets = join(with_eos(shuffled, n, eos), length, with_eos(tokens, n, eos), length,
                           length=inputs.tokens.shape[1], pad_id=self.vocab.pad_id,
                           num_predict=self.raw_len + 1)
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
  return Deshuffle(vocab=vocab, raw_len=chunk_length(seq_len))
