"""Static description of the shared Transformer, built from `config.model`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

POSITION_KINDS = ('learned', 'sinusoidal', 'rotary')
NORM_KINDS = ('pre', 'post')
REMAT_POLICIES = ('none', 'full', 'dots')
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the Transformer; frozen so it can be a static jit argument."""

  vocab_size: int
  num_layers: int = 2
  embed_dim: int = 128
  num_heads: int = 4
  head_dim: int = 0  # 0: embed_dim // num_heads
  mlp_dim: int = 512
  max_len: int = 512  # longest sequence learned positions support
  position: str = 'learned'  # learned | sinusoidal | rotary
  norm: str = 'pre'  # pre (GPT-2 and later) | post (original Transformer, BERT)
  num_token_types: int = 0  # > 0 adds segment (token-type) embeddings (BERT)
  dropout: float = 0.0
  dtype: str = 'float32'  # compute dtype; parameters are always float32
  scan_layers: bool = True
  remat: str = 'none'  # none | full | dots
  attention_impl: str = 'auto'  # auto: cuDNN fused attention on GPU, XLA elsewhere
  tie_embeddings: bool = True
  lm_transform: bool = False  # BERT's dense + gelu + norm before the vocabulary projection
  num_sentence_classes: int = 0  # > 0 adds a pooler (dense + tanh on position 0) and classifier
  two_stream: bool = False  # permutation LM: adds the query stream's learned start vector
  sbo_max_offset: int = 0  # > 0 runs SpanBERT's span-boundary head (objectives/mlm.py); set by MLM
  layer_norm_eps: float = 1e-6
  init_std: float = 0.02

  def __post_init__(self):
    checks = [
        (self.position in POSITION_KINDS, f'config.model.position must be one of {POSITION_KINDS}'),
        (self.norm in NORM_KINDS, f'config.model.norm must be one of {NORM_KINDS}'),
        (self.remat in REMAT_POLICIES, f'config.model.remat must be one of {REMAT_POLICIES}'),
        (self.attention_impl in ATTENTION_IMPLS,
         f'config.model.attention_impl must be one of {ATTENTION_IMPLS}'),
        (self.dtype in DTYPES, f'config.model.dtype must be one of {tuple(DTYPES)}'),
        (self.vocab_size > 0, 'config.model.vocab_size must be positive'),
        (self.num_layers > 0, 'config.model.num_layers must be positive'),
        (self.head_dim > 0 or self.embed_dim % self.num_heads == 0,
         'config.model.embed_dim must divide by config.model.num_heads (or set config.model.head_dim)'),
        (self.position != 'rotary' or self.resolved_head_dim % 2 == 0,
         'rotary positions need an even head dimension: change config.model.head_dim'),
        (0.0 <= self.dropout < 1.0, 'config.model.dropout must be in [0, 1)'),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(message)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @classmethod
  def from_config(cls, model_config: Mapping[str, Any], **overrides: Any) -> 'ModelConfig':
    """Builds from a ConfigDict or dict, rejecting keys the model does not know."""
    values = dict(model_config)
    values.update(overrides)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'Unknown model setting config.model.{unknown[0]}: known settings are '
                       f'{sorted(known)}.')
    return cls(**values)

  def param_count(self, include_embeddings: bool = True) -> int:
    """Number of parameters, for FLOP counts and reports (exact for this architecture)."""
    d, h, n, f = self.embed_dim, self.resolved_head_dim, self.num_heads, self.mlp_dim
    attention = 4 * d * n * h + 3 * n * h + d
    mlp = 2 * d * f + f + d
    norms = 2 * 2 * d
    total = self.num_layers * (attention + mlp + norms)
    total += 2 * d  # final or embedding norm
    if include_embeddings:
      total += self.vocab_size * d
      if self.position == 'learned':
        total += self.max_len * d
      if self.num_token_types:
        total += self.num_token_types * d
    if not self.tie_embeddings:
      total += self.vocab_size * d
    total += self.vocab_size  # output bias
    if self.lm_transform:
      total += d * d + d + 2 * d
    if self.num_sentence_classes:
      total += d * d + d + d * self.num_sentence_classes + self.num_sentence_classes
    if self.two_stream:
      total += d
    return total

  def train_flops_per_sequence(self, seq_len: int, num_logits: int, num_queries: int = 0) -> float:
    """Forward + backward matmul FLOPs for one sequence (3x the forward pass).

    Counts the layer matmuls for the seq_len content tokens plus `num_queries` query-stream
    tokens (permutation LM), full attention scores and weighted sums, and the vocabulary
    projection at `num_logits` positions (plus the pooler/transform where present). With a
    query stream the last layer computes only the content keys and values
    (models/transformer.py Block), so its content queries, attention, output projection and
    MLP are not counted.
    """
    d, f, n, h = self.embed_dim, self.mlp_dim, self.num_heads, self.resolved_head_dim
    tokens = seq_len + num_queries
    per_token_layer = 2 * (3 * d * n * h) + 2 * (n * h * d) + 2 * (2 * d * f)
    if num_queries:
      per_token_layer_queries = 2 * (d * n * h) + 2 * (n * h * d) + 2 * (2 * d * f)
      layers = seq_len * per_token_layer + num_queries * per_token_layer_queries
    else:
      layers = tokens * per_token_layer
    attention = 2 * 2 * tokens * seq_len * n * h
    forward = self.num_layers * (layers + attention)
    if num_queries:  # the last layer's dead content stream
      forward -= seq_len * (per_token_layer_queries + 2 * 2 * seq_len * n * h)
    forward += 2 * num_logits * d * self.vocab_size
    if self.lm_transform:
      forward += 2 * num_logits * d * d
    if self.num_sentence_classes:
      forward += 2 * d * d + 2 * d * self.num_sentence_classes
    return 3.0 * forward
