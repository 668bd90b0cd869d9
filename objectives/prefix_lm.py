"""Prefix LM (T5's objective study, UL2's S-denoiser): a bidirectional prefix, a causal rest.

Per document chunk of a packed window, a split point is drawn uniformly so that the prefix
holds 1..n-1 of its n tokens. Prefix tokens share attention order 0 (they see the whole
prefix of their document), continuation tokens get orders 1, 2, ... (each sees the prefix and
the continuation up to itself), so the shared model needs no change. The loss is next-token
cross-entropy on the continuation only: the last prefix token predicts the first continuation
token. Chunks of a single token have no continuation and no loss; attention never crosses a
document, as for every objective here.

This is UL2's S-denoiser (`configs/span_corruption.py:ul2_s`): UL2 draws the number of input
tokens uniformly in 1..n-1 (T5's `random_prefix_noise_mask`), once per packed example; here
it is drawn per document chunk, since attention never crosses documents, and there is no
[S2S] mode token.

`join` is the general tool for examples whose input and target differ in length (span
corruption, deshuffling): it lays an input and a target end to end as one decoder-only
sequence with a bidirectional input and a causal target, as UL2 does on a decoder-only model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from models.transformer import ModelInputs
from objectives import base
from objectives.registry import register

Array = jax.Array


def chunk_index(segment_ids: Array) -> Array:
  """Index of each token inside its run of equal segment ids [B, T] (0 at a chunk's start)."""
  length = segment_ids.shape[-1]
  index = jnp.arange(length, dtype=jnp.int32)
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  starts = jnp.where(segment_ids != previous, index, 0)
  return index - jax.lax.cummax(starts, axis=1)


def sample_prefix_lengths(rng: Array, segment_ids: Array) -> Array:
  """Per token, the prefix length of its document chunk: uniform in 1..n-1 (n if n < 2)."""
  batch, length = segment_ids.shape
  rows = jnp.arange(batch)[:, None]
  sizes = jnp.zeros((batch, length + 1), jnp.int32).at[rows, segment_ids].add(1)
  draw = jax.random.uniform(rng, (batch, length + 1))
  prefix = 1 + jnp.floor(draw * (sizes - 1)).astype(jnp.int32)
  prefix = jnp.where(sizes < 2, sizes, jnp.minimum(prefix, sizes - 1))
  return jnp.take_along_axis(prefix, segment_ids, axis=1)


def prefix_order(segment_ids: Array, prefix_lengths: Array) -> tuple[Array, Array]:
  """(attention order [B, T], is-continuation [B, T]) for per-token prefix lengths."""
  index = chunk_index(segment_ids)
  continuation = (index >= prefix_lengths) & (segment_ids > 0)
  return jnp.where(continuation, index - prefix_lengths + 1, 0).astype(jnp.int32), continuation


def join(prefix: Array, prefix_len: Array, target: Array, target_len: Array, *, length: int,
         pad_id: int, num_predict: int) -> tuple[ModelInputs, dict[str, Array]]:
  """One decoder-only example per row: `prefix[:prefix_len]` (bidirectional) then
  `target[:target_len]` (causal, seeing the whole prefix), padded to `length`.

  prefix [B, Lp], target [B, Lt] and their lengths [B] (prefix_len >= 1 where target_len > 0,
  prefix_len + target_len <= length). Returns the model inputs, whose logits are computed only
  at the `num_predict` >= max(target_len) positions that predict target tokens, and the
  next-token targets there with weight 1 for the target_len real ones.
  """
  index = jnp.arange(length, dtype=jnp.int32)[None, :]
  p_len, t_len = prefix_len[:, None], target_len[:, None]
  from_prefix = jnp.take_along_axis(prefix, jnp.clip(index, 0, prefix.shape[1] - 1), axis=1)
  in_target = index - p_len
  from_target = jnp.take_along_axis(target, jnp.clip(in_target, 0, target.shape[1] - 1), axis=1)
  is_prefix, is_target = index < p_len, (index >= p_len) & (index < p_len + t_len)
  tokens = jnp.where(is_prefix, from_prefix, jnp.where(is_target, from_target, pad_id))
  real = is_prefix | is_target
  inputs = ModelInputs(
      tokens=tokens.astype(jnp.int32), positions=jnp.where(real, index, 0),
      segment_ids=real.astype(jnp.int32), attn_order=jnp.where(is_target, in_target + 1, 0),
      predict_index=jnp.clip(p_len - 1 + jnp.arange(num_predict)[None, :], 0, length - 1))
  slot = jnp.arange(num_predict)[None, :]
  targets = jnp.take_along_axis(target, jnp.clip(slot, 0, target.shape[1] - 1), axis=1)
  weights = (slot < t_len).astype(jnp.float32)
  return inputs, {'targets': jnp.where(weights > 0, targets, 0), 'weights': weights}


def adopt(inputs: ModelInputs, joined: ModelInputs) -> ModelInputs:
  """`inputs` with the tokens, positions, segments, order and logit positions of `join`'s."""
  return inputs.replace(tokens=joined.tokens, positions=joined.positions,
                        segment_ids=joined.segment_ids, attn_order=joined.attn_order,
                        predict_index=joined.predict_index, causal=False)


@dataclasses.dataclass(frozen=True)
class PrefixLM:
  """A random bidirectional prefix per document, loss on the causal continuation."""

  data_format: str = 'packed'

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def prepare(self, rng: Array, batch: base.Batch, inputs: ModelInputs | None = None):
    inputs = base.base_inputs(batch) if inputs is None else inputs
    tokens, segment_ids = inputs.tokens, inputs.segment_ids
    order, continuation = prefix_order(segment_ids, sample_prefix_lengths(rng, segment_ids))
    next_continuation = jnp.pad(continuation[:, 1:], ((0, 0), (0, 1)))
    next_segment = jnp.pad(segment_ids[:, 1:], ((0, 0), (0, 1)))
    weights = next_continuation & (next_segment == segment_ids)
    targets = {'targets': jnp.pad(tokens[:, 1:], ((0, 0), (0, 1))),
               'weights': weights.astype(jnp.float32)}
    return inputs.replace(attn_order=order, causal=False, predict_index=None), targets

  def loss(self, outputs, targets):
    return base.token_cross_entropy(outputs.logits, targets['targets'], targets['weights'])


@register('prefix_lm')
def make(settings: Mapping[str, Any] | None, *, vocab, seq_len: int) -> PrefixLM:
  """Validates config.prefix_lm (no settings) and builds the objective."""
  del vocab
  if settings:
    raise ValueError(f'config.prefix_lm takes no settings, got {sorted(dict(settings))}.')
  if seq_len < 2:
    raise ValueError('config.seq_len must be at least 2 for prefix LM.')
  return PrefixLM()
