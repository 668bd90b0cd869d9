"""Attention masks built from per-token data: segments and an attention order.

Every pattern the objectives need is one rule: query i may see key j when both
belong to the same (non-padding) segment and `order[j] <= order[i]` (content
stream) or `order[j] < order[i]` (query stream). Bidirectional attention is a
constant order, causal attention is the token index, a prefix LM gives its
prefix one shared order, and permutation LM uses the rank in the sampled
factorisation order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_order(segment_ids: jax.Array) -> jax.Array:
  """The token index as attention order: left-to-right attention."""
  batch, length = segment_ids.shape
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def attention_mask(
    query_segments: jax.Array,
    key_segments: jax.Array,
    query_order: jax.Array | None = None,
    key_order: jax.Array | None = None,
    *,
    strict: bool = False,
) -> jax.Array:
  """Boolean mask [batch, 1, queries, keys]: True where the query may attend the key.

  Args:
    query_segments: [batch, queries] segment ids of the queries (0 = padding).
    key_segments: [batch, keys] segment ids of the keys (0 = padding).
    query_order: [batch, queries] attention order of the queries, or None for
      bidirectional attention.
    key_order: [batch, keys] attention order of the keys (with query_order).
    strict: a key is visible only when its order is strictly lower (query stream).
  """
  mask = (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)
  if query_order is not None:
    earlier = key_order[:, None, :] < query_order[:, :, None]
    if not strict:
      earlier |= key_order[:, None, :] == query_order[:, :, None]
    mask &= earlier
  elif strict:
    raise ValueError('A strict (query-stream) mask needs an attention order.')
  return mask[:, None, :, :]


def prepend_prompt(mask: jax.Array, query_segments: jax.Array, num_prompt: int, *,
                   prompt_queries: bool) -> jax.Array:
  """Extends a mask [batch, 1, Q, K] with `num_prompt` soft-prompt keys in front of the keys.

  Every non-padding query may attend every prompt key. With `prompt_queries`, the prompt
  positions are also prepended as queries: they attend only to one another (never to the
  input), so they stay independent of the text and causal models remain causal.
  """
  batch, _, queries, keys = mask.shape
  to_prompt = jnp.broadcast_to((query_segments > 0)[:, None, :, None],
                               (batch, 1, queries, num_prompt))
  mask = jnp.concatenate([to_prompt, mask], axis=-1)
  if prompt_queries:
    prompt_rows = jnp.concatenate([
        jnp.ones((batch, 1, num_prompt, num_prompt), bool),
        jnp.zeros((batch, 1, num_prompt, keys), bool)], axis=-1)
    mask = jnp.concatenate([prompt_rows, mask], axis=2)
  return mask
