"""The shared Flax Transformer every objective trains.

The objective decides what the model computes through `ModelInputs`: the
attention pattern (segments plus an attention order), which positions get
vocabulary logits, and whether a permutation-LM query stream runs beside the
content stream. The model itself knows nothing about objectives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from models import attention as attention_lib
from models import heads, masks
from models.config import ModelConfig

Array = jax.Array


@struct.dataclass
class ModelInputs:
  """What one forward pass needs; every array is [batch, length] unless noted.

  tokens, positions, segment_ids (0 = padding): the packed input windows.
  lengths: [batch] set only when every row is one segment of `lengths` tokens followed by
    padding (segment_ids == 1 there, 0 after): bidirectional and causal attention then use
    the lengths instead of a dense mask (see models/attention.py). Leave it None otherwise.
  token_types: BERT's sentence A/B ids, used when the model has token types.
  attn_order: query i sees key j (same segment) iff attn_order[j] <= attn_order[i];
    None means bidirectional, unless `causal` is set (left-to-right).
  predict_index: [batch, P] positions that get vocabulary logits (None = all, unless
    compute_logits is False, e.g. for a sentence-level loss alone).
  query_index: [batch, P] positions whose query stream runs (permutation LM); the
    logits then come from the query stream at these positions.
  span_boundaries: [batch, P, 3] (left, right, offset) per predict_index slot: SpanBERT's
    span-boundary head (built when config.sbo_max_offset > 0) predicts that slot's token
    from the hidden states at left and right and the offset; logits in `sbo_logits`.
  labels: [batch, length] with `label_chunk` > 0: instead of logits, the model returns each
    position's -log p(label) and whether the label is the argmax (`token_nll`,
    `token_correct`), computed `label_chunk` positions at a time and recomputed in the
    backward pass, so the [batch, length, vocab] float32 logits never exist at once.
    Full-sequence logits only (no predict_index or query_index).
  prompt_embeddings: [batch, P, embed] soft-prompt vectors (prompt tuning) prepended to the
    embedded tokens. Every non-padding token may attend to them, they attend only to one
    another, they get no logits and no position term (rotary treats them as position 0),
    and the real tokens keep their positions; `hidden`, `predict_index` and `query_index`
    all refer to the real tokens only. None (the default) leaves the model unchanged.
  """

  tokens: Array
  positions: Array
  segment_ids: Array
  token_types: Array | None = None
  lengths: Array | None = None
  attn_order: Array | None = None
  predict_index: Array | None = None
  query_index: Array | None = None
  span_boundaries: Array | None = None
  prompt_embeddings: Array | None = None
  labels: Array | None = None
  causal: bool = struct.field(pytree_node=False, default=False)
  label_chunk: int = struct.field(pytree_node=False, default=0)
  compute_logits: bool = struct.field(pytree_node=False, default=True)


@struct.dataclass
class KVCache:
  """Every layer's keys and values for incremental decoding.

  key, value: [layers, batch, slots, heads, head_dim] in the compute dtype, rotary already
  applied; segment_ids: [batch, slots] (0 = not written yet, or padding); index: the next
  slot to write (a scalar shared by the batch). A forward pass with a cache writes its
  tokens at slots index..index+length-1 and attends causally over every written slot.
  """

  key: Array
  value: Array
  segment_ids: Array
  index: Array

  @classmethod
  def create(cls, config: ModelConfig, batch: int, slots: int) -> 'KVCache':
    """An empty cache of `slots` positions per row."""
    shape = (config.num_layers, batch, slots, config.num_heads, config.resolved_head_dim)
    zeros = jnp.zeros(shape, config.compute_dtype)
    return cls(key=zeros, value=zeros, segment_ids=jnp.zeros((batch, slots), jnp.int32),
               index=jnp.zeros((), jnp.int32))


@struct.dataclass
class ModelOutputs:
  """hidden: [batch, length, embed] final content states; logits: [batch, P, vocab]
  (or [batch, length, vocab]) in float32; sentence_logits: [batch, classes]; cache: the
  updated KVCache when the call was given one; token_nll / token_correct: [batch, length]
  scores of `inputs.labels` (then logits is None). With a query stream, `hidden` is the
  content stream entering the last layer (nothing reads its last update)."""

  hidden: Array
  logits: Array | None = None
  sentence_logits: Array | None = None
  cache: KVCache | None = None
  sbo_logits: Array | None = None  # [batch, P, vocab] from span_boundaries
  token_nll: Array | None = None
  token_correct: Array | None = None


def _dense_init(config: ModelConfig):
  return nn.initializers.normal(stddev=config.init_std)


def sinusoidal_embedding(positions: Array, dim: int) -> Array:
  """The original Transformer's sin/cos position encoding, [..., dim]."""
  half = dim // 2
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / dim))
  angles = positions[..., None].astype(jnp.float32) * inv_freq
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
  return emb


def apply_rotary(x: Array, positions: Array) -> Array:
  """Rotary position embedding (RoFormer) on [batch, length, heads, head_dim]."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions[:, :, None, None].astype(jnp.float32) * inv_freq
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def _attention_implementation(config: ModelConfig) -> str | None:
  if config.attention_impl != 'auto':
    return config.attention_impl
  if jax.default_backend() == 'gpu' and config.dtype in ('bfloat16', 'float16'):
    return 'cudnn'
  return 'xla'


class Projection(nn.Module):
  """x @ kernel + bias over named axes, with logical axis names on both parameters."""

  features: tuple[int, ...]
  contract: int  # number of trailing input axes to contract
  kernel_axes: tuple[str | None, ...]
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    in_shape = x.shape[x.ndim - self.contract:]
    kernel = self.param('kernel', nn.with_logical_partitioning(_dense_init(cfg), self.kernel_axes),
                        in_shape + self.features, jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(
        nn.initializers.zeros, self.kernel_axes[self.contract:]), self.features, jnp.float32)
    dims = (tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract)))
    y = jax.lax.dot_general(x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype),
                            (dims, ((), ())))
    return y + bias.astype(cfg.compute_dtype)


class Attention(nn.Module):
  """Multi-head attention whose keys/values are computed once and shared by all query streams."""

  config: ModelConfig

  @nn.compact
  def __call__(self, queries, kv_input, kv_positions, cache=None):
    """queries: list of (x [B, Q, D], positions [B, Q], AttentionPattern over the K keys).

    Returns (a list of outputs, new entries). With cache = (key, value, index), the queries
    attend over all S slots of key/value [B, S, heads, head_dim] with the new keys and values
    written at slot `index`; the new entries (key, value) [B, Q, heads, head_dim] are returned
    for the caller to store (else None), so a layer never hands back its whole cache.
    """
    cfg = self.config
    heads = (cfg.num_heads, cfg.resolved_head_dim)
    in_axes = ('embed', 'heads', 'kv')
    query_proj = Projection(heads, 1, in_axes, cfg, name='query')
    key = Projection(heads, 1, in_axes, cfg, name='key')(kv_input)
    value = Projection(heads, 1, in_axes, cfg, name='value')(kv_input)
    out_proj = Projection((cfg.embed_dim,), 2, ('heads', 'kv', 'embed'), cfg, name='out')
    if cfg.position == 'rotary':
      key = apply_rotary(key, kv_positions)
    new_cache = None
    if cache is not None:
      cache_key, cache_value, index = cache
      new_cache = (key.astype(cache_key.dtype), value.astype(cache_value.dtype))
      start = (0, index, 0, 0)
      key = jax.lax.dynamic_update_slice(cache_key, new_cache[0], start)
      value = jax.lax.dynamic_update_slice(cache_value, new_cache[1], start)
    key = nn.with_logical_constraint(key, ('batch', 'length', 'heads', 'kv'))
    value = nn.with_logical_constraint(value, ('batch', 'length', 'heads', 'kv'))
    implementation = _attention_implementation(cfg)
    outputs = []
    for x, positions, pattern in queries:
      query = query_proj(x)
      if cfg.position == 'rotary':
        query = apply_rotary(query, positions)
      query = nn.with_logical_constraint(query, ('batch', 'length', 'heads', 'kv'))
      attended = attention_lib.attend(query, key, value, pattern, implementation)
      outputs.append(out_proj(attended))
    return outputs, new_cache


class Mlp(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic):
    cfg = self.config
    hidden = nn.Dense(
        cfg.mlp_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_dense_init(cfg), ('embed', 'mlp')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)), name='wi')(x)
    hidden = nn.gelu(hidden)
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = nn.Dropout(cfg.dropout)(hidden, deterministic=deterministic)
    return nn.Dense(
        cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_dense_init(cfg), ('mlp', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), name='wo')(hidden)


def _layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)), name=name)


class Block(nn.Module):
  """One Transformer layer; the query stream (if any) shares every weight with the content stream.

  `last` marks the final layer of a two-stream model: when a query stream runs, nothing reads
  the content stream after it (the logits come from the query stream), so only the content
  keys and values are computed there and the content stream passes through unchanged.
  """

  config: ModelConfig
  deterministic: bool
  last: bool = False

  @nn.compact
  def __call__(self, carry, positions, content_pattern, query_positions, query_pattern,
               layer_cache=None, cache_index=None):
    """Returns (new carry, this layer's new (key, value) cache entries or None)."""
    cfg = self.config
    content, query = carry
    attention = Attention(cfg, name='attention')
    mlp = Mlp(cfg, name='mlp')
    attention_norm = _layer_norm(cfg, 'attention_norm')
    mlp_norm = _layer_norm(cfg, 'mlp_norm')
    dropout = nn.Dropout(cfg.dropout)
    streams = [content] if query is None else [content, query]

    if cfg.norm == 'pre':
      kv_input = attention_norm(content)
      normed = [kv_input] + [attention_norm(s) for s in streams[1:]]
    else:
      kv_input = content
      normed = streams
    stream_positions = [positions, query_positions]
    stream_patterns = [content_pattern, query_pattern]
    cache = None if layer_cache is None else (*layer_cache, cache_index)
    queries = [(x, stream_positions[i], stream_patterns[i]) for i, x in enumerate(normed)]
    content_dead = self.last and query is not None
    if content_dead:
      streams, queries = streams[1:], queries[1:]
    attended, new_cache = attention(queries, kv_input, positions, cache)

    new_streams = []
    for stream, update in zip(streams, attended):
      update = dropout(update, deterministic=self.deterministic)
      if cfg.norm == 'pre':
        stream = stream + update
        stream = stream + dropout(mlp(mlp_norm(stream), self.deterministic),
                                  deterministic=self.deterministic)
      else:
        stream = attention_norm(stream + update)
        stream = mlp_norm(stream + dropout(mlp(stream, self.deterministic),
                                           deterministic=self.deterministic))
      new_streams.append(nn.with_logical_constraint(stream, ('batch', 'length', 'embed')))
    if query is None:
      return (new_streams[0], None), new_cache
    if content_dead:
      return (content, new_streams[0]), new_cache
    return (new_streams[0], new_streams[1]), new_cache


def _gather(x: Array, index: Array) -> Array:
  """x[b, index[b, p]] for x [B, T, ...] and index [B, P]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


class _Streams(NamedTuple):
  """What enters the first layer: the content stream `x` [B, T, D] (soft prompts first) at
  `positions`, the query stream (or None) at `query_positions`, each one's AttentionPattern
  over the keys, the number of prompt vectors, and with a cache its keys' segment ids."""

  x: Array
  positions: Array
  content_pattern: attention_lib.AttentionPattern
  query: Array | None
  query_positions: Array | None
  query_pattern: attention_lib.AttentionPattern | None
  num_prompt: int
  key_segments: Array | None


def _write_cache(cache: KVCache, layer_caches: Any, key_segments: Array, length: int) -> KVCache:
  """The cache with every layer's `length` new (key, value) entries written at cache.index in
  one in-place update."""
  start = (0, 0, cache.index, 0, 0)
  return KVCache(key=jax.lax.dynamic_update_slice(cache.key, layer_caches[0], start),
                 value=jax.lax.dynamic_update_slice(cache.value, layer_caches[1], start),
                 segment_ids=key_segments, index=cache.index + length)


class Transformer(nn.Module):
  """Token/position/type embeddings, a stack of blocks, the tied LM head, and the output heads
  objectives attach (models/heads.py).

  `__call__` reads top to bottom in four parts, each a method: `_embed` (the input vectors),
  `_attention` (who sees whom: the content pattern, soft prompts, XLNet's query stream),
  `_layers` (the blocks, scanned or unrolled, with the key/value cache) and `_outputs`
  (logits, chunked label scores, the span-boundary and sentence heads).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, inputs: ModelInputs, *, train: bool = False,
               token_embeddings: Array | None = None, cache: KVCache | None = None,
               input_embeddings: Array | None = None,
               embeddings_only: bool = False) -> ModelOutputs:
    """Runs the model; `token_embeddings` [B, T, D] replaces the token lookup (for tests of leaks).

    `input_embeddings` [B, T, D] replace the whole input embedding (token, position and type
    embeddings and their norm); `embeddings_only` returns that embedding as `hidden` and runs
    nothing else. ELECTRA's generator reads the discriminator's embedding so, as in the paper.

    With a `cache` (causal inputs only), the tokens are the next `length` slots of the rows in
    the cache: they attend to every earlier written slot of their segment, and the outputs
    carry the updated cache (see KVCache and models/decode.py).
    """
    cfg = self.config
    embed, position_embed = self._embedding_tables()
    if input_embeddings is not None:
      x = input_embeddings.astype(cfg.compute_dtype)
    else:
      x = self._embed(inputs, embed, position_embed, token_embeddings)
      if embeddings_only:
        return ModelOutputs(hidden=x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=not train)
    stream = self._attention(inputs, x, cache, position_embed)
    hidden, query, layer_caches = self._layers(stream, cache, train)
    new_cache = None
    if cache is not None:
      new_cache = _write_cache(cache, layer_caches, stream.key_segments,
                               inputs.segment_ids.shape[1])
    if stream.num_prompt:
      hidden = hidden[:, stream.num_prompt:]
    if cfg.norm == 'pre':
      final_norm = _layer_norm(cfg, 'final_norm')
      hidden = final_norm(hidden)
      if query is not None:
        query = final_norm(query)
    return self._outputs(inputs, hidden, query, embed, new_cache)

  # --- embed

  def _embedding_tables(self) -> tuple[nn.Embed, nn.Embed | None]:
    """The token table (also the tied output projection) and the learned position table."""
    cfg = self.config
    embed = nn.Embed(
        cfg.vocab_size, cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(_dense_init(cfg), ('vocab', 'embed')),
        name='token_embed')
    position_embed = None
    if cfg.position == 'learned':
      position_embed = nn.Embed(
          cfg.max_len, cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
          embedding_init=nn.with_logical_partitioning(_dense_init(cfg), (None, 'embed')),
          name='position_embed')
    return embed, position_embed

  def _embed(self, inputs: ModelInputs, embed: nn.Embed, position_embed: nn.Embed | None,
             token_embeddings: Array | None) -> Array:
    """Token + position + token-type embeddings, normed for a post-LN model: [B, T, D]."""
    cfg = self.config
    x = (embed(inputs.tokens) if token_embeddings is None
         else token_embeddings.astype(cfg.compute_dtype))
    position_term = self._position_term(inputs.positions, position_embed)
    if position_term is not None:
      x = x + position_term
    if cfg.num_token_types:
      # Inputs without token types (packed windows, a switched objective) are all type 0,
      # as BERT types a single segment.
      token_types = inputs.token_types
      if token_types is None:
        token_types = jnp.zeros_like(inputs.tokens)
      x = x + nn.Embed(
          cfg.num_token_types, cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
          embedding_init=nn.with_logical_partitioning(_dense_init(cfg), (None, 'embed')),
          name='token_type_embed')(token_types)
    if cfg.norm == 'post':
      x = _layer_norm(cfg, 'embed_norm')(x)
    return x

  # --- attention pattern

  def _attention(self, inputs: ModelInputs, x: Array, cache: KVCache | None,
                 position_embed: nn.Embed | None) -> '_Streams':
    """The streams entering the first layer and what each may attend to.

    The content pattern comes from the lengths (one segment per row), a dense mask over
    segments and the attention order, or the cache's written slots; soft prompts are
    prepended to the content; a permutation LM adds the query stream (`_query_stream`).
    """
    cfg = self.config
    segments = inputs.segment_ids
    positions = inputs.positions
    order = inputs.attn_order
    if inputs.causal:
      order = masks.causal_order(segments)
    key_segments = None
    if cache is None and inputs.lengths is not None and inputs.attn_order is None and (
        inputs.prompt_embeddings is None):
      content_pattern = attention_lib.from_lengths(inputs.lengths, causal=inputs.causal)
    elif cache is None:
      content_pattern = attention_lib.AttentionPattern(
          mask=masks.attention_mask(segments, segments, order, order))
    else:
      self._check_cache_inputs(inputs)
      key_segments = jax.lax.dynamic_update_slice(
          cache.segment_ids, segments.astype(cache.segment_ids.dtype), (0, cache.index))
      content_pattern = attention_lib.AttentionPattern(mask=masks.attention_mask(
          segments, key_segments, cache.index + order, masks.causal_order(key_segments)))
    num_prompt = 0
    if inputs.prompt_embeddings is not None:
      num_prompt = self._check_prompt(inputs.prompt_embeddings, x.shape)
      x = jnp.concatenate([inputs.prompt_embeddings.astype(cfg.compute_dtype), x], axis=1)
      positions = jnp.concatenate(
          [jnp.zeros((positions.shape[0], num_prompt), positions.dtype), positions], axis=1)
      content_pattern = attention_lib.AttentionPattern(mask=masks.prepend_prompt(
          content_pattern.mask, segments, num_prompt, prompt_queries=True))
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    query, query_positions, query_pattern = self._query_stream(inputs, order, position_embed,
                                                               num_prompt)
    return _Streams(x, positions, content_pattern, query, query_positions, query_pattern,
                    num_prompt, key_segments)

  def _query_stream(self, inputs: ModelInputs, order: Array | None,
                    position_embed: nn.Embed | None, num_prompt: int):
    """XLNet's query stream at `inputs.query_index`: a learned start vector plus the position,
    seeing strictly earlier tokens of the order (None, None, None without a query_index)."""
    cfg = self.config
    if inputs.query_index is None:
      return None, None, None
    if not cfg.two_stream or order is None:
      raise ValueError('A query stream needs config.model.two_stream=True and an attention order.')
    segments = inputs.segment_ids
    query_positions = _gather(inputs.positions, inputs.query_index)
    start = self.param('query_start', nn.with_logical_partitioning(_dense_init(cfg), ('embed',)),
                       (cfg.embed_dim,), jnp.float32)
    query = jnp.broadcast_to(start.astype(cfg.compute_dtype),
                             query_positions.shape + (cfg.embed_dim,))
    query_term = self._position_term(query_positions, position_embed)
    if query_term is not None:
      query = query + query_term
    query_segments = _gather(segments, inputs.query_index)
    query_mask = masks.attention_mask(
        query_segments, segments, _gather(order, inputs.query_index), order, strict=True)
    if num_prompt:
      query_mask = masks.prepend_prompt(query_mask, query_segments, num_prompt,
                                        prompt_queries=False)
    return query, query_positions, attention_lib.AttentionPattern(mask=query_mask)

  # --- layers

  def _layers(self, stream: '_Streams', cache: KVCache | None,
              train: bool) -> tuple[Array, Array | None, Any]:
    """The blocks, scanned (parameters `layers`, plus `last_layer` for a two-stream model) or
    unrolled (`layers_{i}`); returns (content, query stream or None, every layer's new
    (key, value) cache entries stacked, or None without a cache)."""
    cfg = self.config
    deterministic = not train
    block = Block
    if cfg.remat != 'none':
      policy = None if cfg.remat == 'full' else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
      block = nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers)
    carry = (stream.x, stream.query)
    layer_args = (stream.positions, stream.content_pattern, stream.query_positions,
                  stream.query_pattern)

    def layer_args_at(layers):
      """The block's arguments for `layers` (an index, or a slice for the scan): with a cache,
      their slice of the stacked keys and values."""
      if cache is None:
        return layer_args
      return layer_args + ((cache.key[layers], cache.value[layers]), cache.index)

    if cfg.scan_layers:
      # A two-stream model's last layer runs apart from the scan, so that its dead content
      # stream can be left out (see Block); its parameters are then `last_layer`.
      scanned = cfg.num_layers - 1 if cfg.two_stream and cfg.num_layers > 1 else cfg.num_layers
      # With a cache, each layer reads its own slice of the stacked keys and values.
      cache_axes = () if cache is None else (0, nn.broadcast)
      stack = nn.scan(
          block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast,) * 4 + cache_axes, length=scanned,
          metadata_params={nn.PARTITION_NAME: 'layers'})
      carry, layer_caches = stack(cfg, deterministic, name='layers')(
          carry, *layer_args_at(slice(0, scanned)))
      if scanned < cfg.num_layers:
        carry, last_cache = block(cfg, deterministic, last=True, name='last_layer')(
            carry, *layer_args_at(scanned))
        if cache is not None:
          layer_caches = jax.tree.map(lambda x, y: jnp.concatenate([x, y[None]]),
                                      layer_caches, last_cache)
    else:
      per_layer = []
      for i in range(cfg.num_layers):
        last = cfg.two_stream and i == cfg.num_layers - 1
        carry, layer_cache = block(cfg, deterministic, last=last, name=f'layers_{i}')(
            carry, *layer_args_at(i))
        per_layer.append(layer_cache)
      layer_caches = None if cache is None else jax.tree.map(lambda *x: jnp.stack(x), *per_layer)
    hidden, query = carry
    return hidden, query, layer_caches

  # --- outputs

  def _outputs(self, inputs: ModelInputs, hidden: Array, query: Array | None, embed: nn.Embed,
               new_cache: KVCache | None) -> ModelOutputs:
    """What the inputs ask for: per-label scores (chunked), the query stream's logits, logits
    at predict_index (with the span-boundary head's beside them, through the one shared
    output layer; the head objectives/mlm.py attaches for config.sbo_max_offset > 0), or at
    every position; plus the sentence head attached for config.num_sentence_classes > 0
    (models/heads.py)."""
    cfg = self.config
    logits = sbo_logits = token_nll = token_correct = None
    if inputs.labels is not None:
      if inputs.predict_index is not None or query is not None or inputs.label_chunk < 1:
        raise ValueError('ModelInputs.labels scores every position: it needs label_chunk >= 1 '
                         'and neither predict_index nor query_index.')
      token_nll, token_correct = self._label_scores(hidden, inputs.labels, embed,
                                                    inputs.label_chunk)
    elif query is not None:
      logits = self._logits(query, embed)
    elif inputs.predict_index is not None:
      gathered = _gather(hidden, inputs.predict_index)
      if cfg.sbo_max_offset and inputs.span_boundaries is not None:  # one shared output layer
        boundary = heads.get(heads.SPAN_BOUNDARY)(cfg, hidden, inputs.span_boundaries)
        gathered = jnp.concatenate([gathered, boundary.astype(gathered.dtype)], axis=1)
      logits = self._logits(gathered, embed)
      if gathered.shape[1] > inputs.predict_index.shape[1]:
        logits, sbo_logits = jnp.split(logits, 2, axis=1)
    elif inputs.compute_logits:
      logits = self._logits(hidden, embed)

    sentence_logits = None
    if cfg.num_sentence_classes:
      sentence_logits = heads.get(heads.SENTENCE)(cfg, hidden)
    return ModelOutputs(hidden=hidden, logits=logits, sentence_logits=sentence_logits,
                        cache=new_cache, sbo_logits=sbo_logits, token_nll=token_nll,
                        token_correct=token_correct)

  def _check_cache_inputs(self, inputs: ModelInputs) -> None:
    """Decoding with a cache is causal and runs the content stream of real tokens only."""
    if not inputs.causal:
      raise ValueError('A key/value cache needs causal inputs: set ModelInputs.causal=True.')
    if inputs.query_index is not None or inputs.prompt_embeddings is not None:
      raise ValueError('A key/value cache supports neither query_index (permutation LM) nor '
                       'prompt_embeddings: pass them without a cache.')

  def _check_prompt(self, prompt: Array, embedded_shape: tuple[int, ...]) -> int:
    """The number of prompt vectors, after checking their shape against the embedded tokens."""
    if prompt.ndim != 3 or prompt.shape[0] != embedded_shape[0] or prompt.shape[2] != embedded_shape[2]:
      raise ValueError(f'ModelInputs.prompt_embeddings must be [batch={embedded_shape[0]}, P, '
                       f'embed={embedded_shape[2]}], got {tuple(prompt.shape)}.')
    return prompt.shape[1]

  def _position_term(self, positions: Array, position_embed: nn.Embed | None) -> Array | None:
    cfg = self.config
    if cfg.position == 'learned':
      return position_embed(positions)
    if cfg.position == 'sinusoidal':
      return sinusoidal_embedding(positions, cfg.embed_dim).astype(cfg.compute_dtype)
    return None  # rotary acts inside attention

  def _lm_transform(self, hidden: Array) -> Array:
    """BERT's dense + gelu + norm before the vocabulary projection (identity without it)."""
    cfg = self.config
    if not cfg.lm_transform:
      return hidden
    hidden = nn.gelu(nn.Dense(
        cfg.embed_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_dense_init(cfg), ('embed', None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
        name='lm_transform')(hidden))
    return _layer_norm(cfg, 'lm_transform_norm')(hidden)

  def _output_embedding(self, embed: nn.Embed) -> tuple[Array, Array]:
    """The vocabulary projection [vocab, embed] (tied or not) and its float32 bias [vocab]."""
    cfg = self.config
    if cfg.tie_embeddings:
      table = embed.embedding
    else:
      table = self.param('lm_head', nn.with_logical_partitioning(_dense_init(cfg), ('embed', 'vocab')),
                         (cfg.embed_dim, cfg.vocab_size), jnp.float32).T
    bias = self.param('lm_bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                      (cfg.vocab_size,), jnp.float32)
    return table.astype(cfg.compute_dtype), bias

  def _logits(self, hidden: Array, embed: nn.Embed) -> Array:
    table, bias = self._output_embedding(embed)
    hidden = self._lm_transform(hidden).astype(self.config.compute_dtype)
    # Accumulated and returned in float32: a bf16 product would round every logit to 8 bits.
    logits = jnp.dot(hidden, table.T, preferred_element_type=jnp.float32) + bias
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))

  def _label_scores(self, hidden: Array, labels: Array, embed: nn.Embed,
                    chunk: int) -> tuple[Array, Array]:
    """(-log p(label), label == argmax) per position, `chunk` positions of every row at a
    time; each chunk's logits are recomputed in the backward pass instead of kept."""
    table, bias = self._output_embedding(embed)
    hidden = self._lm_transform(hidden).astype(self.config.compute_dtype)
    batch, length, width = hidden.shape
    pad = -length % chunk
    if pad:
      hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
      labels = jnp.pad(labels, ((0, 0), (0, pad)))
    pieces = (length + pad) // chunk
    hidden = hidden.reshape(batch, pieces, chunk, width).swapaxes(0, 1)
    labels = labels.reshape(batch, pieces, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def score(piece):
      h, y = piece
      logits = jnp.dot(h, table.T, preferred_element_type=jnp.float32) + bias
      label_logit = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
      nll = jax.nn.logsumexp(logits, axis=-1) - label_logit
      return nll, jnp.argmax(logits, axis=-1) == y

    nll, correct = jax.lax.map(score, (hidden, labels))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(batch, length + pad)[:, :length]
    return unchunk(nll), unchunk(correct)
