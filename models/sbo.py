"""SpanBERT's span boundary objective (SBO) head, built only when config.model.sbo_max_offset > 0.

For a target token at offset i - s inside a masked span s..e (counted in the span's predicted
tokens: whitespace-only pieces the span runs over are not counted, as BERT's tokenizer has
none), the head reads the final hidden states of the span's boundary tokens x_{s-1}, x_{e+1}
and a learned embedding of the offset:
  h = LayerNorm(GeLU(W1 [x_{s-1}; x_{e+1}; p_{i-s}])),  y = LayerNorm(GeLU(W2 h)),
and the model's output layer turns y into vocabulary logits (SpanBERT, Joshi et al. 2020, 3.2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.config import ModelConfig

Array = jax.Array


class SpanBoundaryHead(nn.Module):
  """[B, T, D] hidden states and [B, P, 3] (left, right, offset) -> [B, P, D] SBO states."""

  config: ModelConfig

  @nn.compact
  def __call__(self, hidden: Array, boundaries: Array) -> Array:
    cfg = self.config
    init = nn.initializers.normal(stddev=cfg.init_std)

    def dense(name: str, x: Array) -> Array:
      return nn.Dense(cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                      kernel_init=nn.with_logical_partitioning(init, (None, 'embed')),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      name=name)(x)

    def norm(name: str, x: Array) -> Array:
      return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=jnp.float32,
                          scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                          name=name)(x)

    offsets = nn.Embed(cfg.sbo_max_offset, cfg.embed_dim, dtype=cfg.compute_dtype,
                       param_dtype=jnp.float32,
                       embedding_init=nn.with_logical_partitioning(init, (None, 'embed')),
                       name='offset_embed')
    left = jnp.take_along_axis(hidden, boundaries[..., 0:1], axis=1)
    right = jnp.take_along_axis(hidden, boundaries[..., 1:2], axis=1)
    position = offsets(jnp.clip(boundaries[..., 2], 0, cfg.sbo_max_offset - 1))
    states = jnp.concatenate([left, right, position.astype(left.dtype)], axis=-1)
    states = norm('norm_1', nn.gelu(dense('dense_1', states)))
    return norm('norm_2', nn.gelu(dense('dense_2', states)))
