"""Who may attend to whom, in the cheapest form the attention kernel accepts.

A dense boolean mask [B, 1, Q, K] can say anything, but cuDNN's fused attention receives it
as a dense bias (read from memory and differentiated every layer) and cannot skip masked
tiles. Rows that are one segment followed by padding need only their lengths, and causal
attention over such rows needs only `is_causal`: then no mask exists at all. The dense mask
stays where the order is arbitrary (permutation LM, prefix LM) or a row packs several
documents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


@struct.dataclass
class AttentionPattern:
  """One query stream's visibility: a dense `mask` [B, 1, Q, K] (True = may attend), or
  `query_lengths`/`key_lengths` [B] (a row is its first `length` tokens, then padding) with
  `causal` for left-to-right attention. Exactly one of mask and lengths is set."""

  mask: Array | None = None
  query_lengths: Array | None = None
  key_lengths: Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)

  def dense(self, queries: int, keys: int) -> Array:
    """The same pattern as a dense mask [B, 1, Q, K] (for tests and the reference path)."""
    if self.mask is not None:
      return self.mask
    q = jnp.arange(queries)[None, :, None] < self.query_lengths[:, None, None]
    k = jnp.arange(keys)[None, None, :] < self.key_lengths[:, None, None]
    mask = q & k
    if self.causal:
      mask &= jnp.arange(keys)[None, None, :] <= jnp.arange(queries)[None, :, None]
    return mask[:, None]


def from_lengths(lengths: Array, *, causal: bool) -> AttentionPattern:
  """Rows of one segment of `lengths` tokens followed by padding: no dense mask. An
  all-padding row (length 0, e.g. filling an evaluation's last batch) attends to its first
  key, so no kernel ever sees a row with no key; nothing reads that row's outputs."""
  lengths = jnp.maximum(lengths.astype(jnp.int32), 1)
  return AttentionPattern(query_lengths=lengths, key_lengths=lengths, causal=causal)


def _pad_axis(x: Array, axis: int, value=0) -> Array:
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, 1)
  return jnp.pad(x, widths, constant_values=value)


def attend(query: Array, key: Array, value: Array, pattern: AttentionPattern,
           implementation: str) -> Array:
  """Dot-product attention of query [B, Q, H, D] over key/value [B, K, H, D] under `pattern`.

  cuDNN rejects an odd query or key length with a mask or lengths in training (XLNet's
  85 targets at seq 512 is one); one spare row or column is added there and cut off
  again: a spare query sees every real key, a spare key is seen by nobody.
  """
  queries, keys = query.shape[1], key.shape[1]
  pad_q = implementation == 'cudnn' and queries % 2 == 1
  pad_k = implementation == 'cudnn' and keys % 2 == 1
  mask, q_lengths, k_lengths = pattern.mask, pattern.query_lengths, pattern.key_lengths
  if pad_k:
    key, value = _pad_axis(key, 1), _pad_axis(value, 1)
    if mask is not None:
      mask = _pad_axis(mask, 3, False)
  if pad_q:
    query = _pad_axis(query, 1)
    if mask is not None:
      mask = _pad_axis(mask, 2, True)
      if pad_k:  # the spare query must not see the spare key either
        mask = mask.at[:, :, -1, -1].set(False)
  out = jax.nn.dot_product_attention(
      query, key, value, mask=mask, is_causal=pattern.causal, query_seq_lengths=q_lengths,
      key_value_seq_lengths=k_lengths, implementation=implementation)
  return out[:, :queries] if pad_q else out
