"""The pretrained Transformer plus a task head, with a strategy's prompt vectors or adapters.

The backbone runs exactly as in pretraining (causal for causal objectives, bidirectional
otherwise, no vocabulary logits). Soft prompts go through the model's own
`ModelInputs.prompt_embeddings` where the model has it (prepended, visible to every token, no
position term, the text keeping its positions); with a model without that field they are
prepended to the embedded tokens at positions 0..P-1, the text after them, in the text's
segment, so every text token sees them (causal models included).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from downstream import heads, strategies
from models.config import ModelConfig
from models.transformer import ModelInputs, ModelOutputs, Transformer

Array = jax.Array
# Whether the model takes soft prompts itself; otherwise they occupy learned positions.
NATIVE_PROMPTS = 'prompt_embeddings' in ModelInputs.__dataclass_fields__


@dataclasses.dataclass(frozen=True)
class DownstreamModel:
  """Static description of backbone + head; hashable, so jit can close over it."""

  model_config: ModelConfig
  kind: str  # classification | regression | qa
  num_labels: int
  causal: bool
  pooling: str
  head_dropout: float = 0.1
  lora_scale: float = 0.0

  @property
  def backbone(self) -> Transformer:
    return Transformer(self.model_config)

  @property
  def head(self):
    return heads.make_head(self.kind, self.num_labels, self.pooling, self.head_dropout)

  def inputs(self, batch: dict[str, Array], logits: bool = False) -> ModelInputs:
    return ModelInputs(
        tokens=batch['tokens'], positions=batch['positions'], segment_ids=batch['segment_ids'],
        token_types=batch.get('token_types') if self.model_config.num_token_types else None,
        causal=self.causal, compute_logits=logits)

  def hidden(self, params: dict[str, Any], batch: dict[str, Array], *, train: bool,
             rng: Array) -> Array:
    """Final hidden states [batch, length, embed] of the text tokens."""
    return self.outputs(params, batch, train=train, rng=rng).hidden

  def outputs(self, params: dict[str, Any], batch: dict[str, Array], *, train: bool, rng: Array,
              logits: bool = False) -> ModelOutputs:
    """The backbone's outputs at the text tokens (vocabulary logits only if `logits`)."""
    backbone = params['backbone']
    if 'lora' in params:
      if not self.lora_scale:
        raise ValueError('LoRA adapters with DownstreamModel.lora_scale=0 would leave the model '
                         'unchanged: build the model with the strategy\'s lora_scale.')
      backbone = strategies.merge_lora(backbone, params['lora'], self.lora_scale)
    inputs = self.inputs(batch, logits)
    rngs = {'dropout': rng}
    if 'prompt' not in params:
      return self.backbone.apply({'params': backbone}, inputs, train=train, rngs=rngs)
    prompt = params['prompt']
    count, length = prompt.shape[0], inputs.tokens.shape[1]
    size = inputs.tokens.shape[0]
    if NATIVE_PROMPTS:
      prompted = inputs.replace(prompt_embeddings=jnp.broadcast_to(prompt, (size,) + prompt.shape))
      return self.backbone.apply({'params': backbone}, prompted, train=train, rngs=rngs)
    table = backbone['token_embed']['embedding']
    embedded = jnp.concatenate(
        [jnp.broadcast_to(prompt, (size,) + prompt.shape), table[inputs.tokens]], axis=1)
    first_segment = inputs.segment_ids[:, :1]
    pad = lambda x, fill: jnp.concatenate([jnp.broadcast_to(fill, (size, count)), x], axis=1)
    prefixed = inputs.replace(
        tokens=pad(inputs.tokens, 0),
        positions=pad(inputs.positions + count, jnp.arange(count)[None]),
        segment_ids=pad(inputs.segment_ids, first_segment),
        token_types=None if inputs.token_types is None else pad(inputs.token_types, 0))
    outputs = self.backbone.apply({'params': backbone}, prefixed, train=train, rngs=rngs,
                                  token_embeddings=embedded)
    return ModelOutputs(hidden=outputs.hidden[:, count:count + length],
                        logits=None if outputs.logits is None else outputs.logits[:, count:])

  def apply(self, params: dict[str, Any], batch: dict[str, Array], *, train: bool = False,
            rng: Array | None = None) -> Array:
    """The head's outputs: class logits, a regression value, or [batch, length, 2] span logits."""
    rng = jax.random.key(0) if rng is None else rng
    hidden_rng, head_rng = jax.random.split(rng)
    hidden = self.hidden(params, batch, train=train, rng=hidden_rng)
    return self.head.apply({'params': params['head']}, hidden, batch, train,
                           rngs={'dropout': head_rng})

  def init_head(self, rng: Array, batch: dict[str, Array]) -> Any:
    """Fresh head parameters for batches shaped like `batch`."""
    shape = batch['tokens'].shape + (self.model_config.embed_dim,)
    return self.head.init({'params': rng, 'dropout': rng}, jnp.zeros(shape, jnp.float32),
                          batch, False)['params']
