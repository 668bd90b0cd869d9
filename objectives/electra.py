"""ELECTRA replaced-token detection: a small MLM generator corrupts, the model discriminates.

Per sequence, mask_rate of the candidate tokens are chosen as in BERT (objectives/mlm.py;
ELECTRA puts [MASK] at 85% of them and leaves 15% unchanged, no random ids). Candidates are
the real tokens that are neither special nor whitespace-only pieces: ELECTRA's WordPiece text
has no whitespace tokens, so this is its rate on the same words, while a SentencePiece line
break or lone '▁' is never chosen (on the built-in corpus 15% of the candidates is 12.4% of
the real tokens). The generator, an MLM
of `generator_fraction` of the shared model's width, heads and MLP (same depth), predicts
them; a replacement is sampled at each from its softmax (no gradient flows through the
sample). The shared model, the discriminator, reads the sequence with the samples in place
and a per-token head says whether each real token differs from the original; a sample equal
to the original counts as original. Loss = generator MLM loss + discriminator_weight * mean
binary cross-entropy over the real tokens (lambda = 50 in the paper).

Embeddings are shared as in ELECTRA: the generator reads the discriminator's token embedding
table (through a projection to its width) and scores its predictions against the same table.
As in the paper (and its released code's `embeddings_project`), the whole input embedding is
shared: the discriminator's token, position and type embeddings, summed and normalised at its
width, are projected to the generator's, whose Transformer adds no embedding of its own. The
generator and the discriminator head
are this objective's own parameters (training/state.py): trained by the same optimizer,
checkpointed with the model, and left out of the model that is evaluated and fine-tuned,
which is the discriminator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from data.vocab import Vocab
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer
from objectives import base, mlm
from objectives.registry import register
from objectives.sections import SECTIONS

Array = jax.Array

DEFAULTS = SECTIONS['electra']  # config.electra: objectives/sections.py
MASK_TOKEN_RATE = 0.85  # ELECTRA's pretrain_helpers.mask: the other 15% stay unchanged


def _init(config: ModelConfig):
  return nn.initializers.normal(stddev=config.init_std)


def _dense(features: int, config: ModelConfig, axes: tuple[str | None, str | None],
           name: str) -> nn.Dense:
  return nn.Dense(features, dtype=config.compute_dtype, param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(_init(config), axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
                  name=name)


class Generator(nn.Module):
  """An MLM Transformer of its own width that reads the discriminator's input embedding
  (projected to its width) and scores against the discriminator's token table."""

  config: ModelConfig  # the generator's
  embed_dim: int  # the shared table's (the discriminator's) width

  @nn.compact
  def __call__(self, table: Array, embedded: Array, inputs: ModelInputs, index: Array, *,
               train: bool) -> Array:
    """Vocabulary logits [B, P] at positions `index` [B, P] of `inputs`, in float32, from the
    discriminator's embedding `embedded` [B, T, embed_dim] of those inputs."""
    cfg = self.config
    x = _dense(cfg.embed_dim, cfg, (None, 'embed'), 'embed_project')(
        embedded.astype(cfg.compute_dtype))
    inputs = inputs.replace(predict_index=None, query_index=None, compute_logits=False)
    hidden = Transformer(cfg, name='transformer')(inputs, train=train, input_embeddings=x).hidden
    hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
    hidden = nn.gelu(_dense(self.embed_dim, cfg, ('embed', None), 'head')(hidden))
    hidden = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                          param_dtype=jnp.float32, name='head_norm')(hidden)
    bias = self.param('output_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                  ('vocab',)),
                      (table.shape[0],), jnp.float32)
    # Accumulated and returned in float32: a bf16 product would round every logit to 8 bits.
    logits = jnp.dot(hidden, table.astype(cfg.compute_dtype).T,
                     preferred_element_type=jnp.float32)
    return logits + bias


class DiscriminatorHead(nn.Module):
  """ELECTRA's per-token head: dense + gelu + a scalar score (> 0: replaced)."""

  config: ModelConfig  # the discriminator's

  @nn.compact
  def __call__(self, hidden: Array) -> Array:
    cfg = self.config
    hidden = nn.gelu(_dense(cfg.embed_dim, cfg, ('embed', None), 'dense')(hidden))
    return _dense(1, cfg, (None, None), 'score')(hidden)[..., 0].astype(jnp.float32)


def generator_config(model_config: ModelConfig, fraction: float) -> ModelConfig:
  """The discriminator's config with width, heads and MLP scaled by `fraction` (as ELECTRA)."""
  width = max(1, int(round(model_config.embed_dim * fraction)))
  heads = max(1, int(model_config.num_heads * fraction))
  while width % heads:
    heads -= 1
  try:
    return dataclasses.replace(
        model_config, embed_dim=width, num_heads=heads, head_dim=0,
        mlp_dim=max(1, int(round(model_config.mlp_dim * fraction))), num_sentence_classes=0,
        two_stream=False, lm_transform=False)
  except ValueError as error:
    raise ValueError(f'config.electra.generator_fraction={fraction} gives a generator the model '
                     f'rejects ({error}): choose another fraction.') from error


def replaced_labels(original: Array, corrupted: Array, segment_ids: Array) -> Array:
  """1.0 where a real token differs from the original, else 0.0 (equal samples are original)."""
  return ((corrupted != original) & (segment_ids > 0)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Electra:
  """Replaced-token detection; see the module docstring. Bound copies carry the parameters."""

  vocab: Vocab
  masker: mlm.MaskedLM
  generator_fraction: float
  generator_weight: float
  discriminator_weight: float
  temperature: float
  data_format: str = 'packed'
  params: Any = dataclasses.field(default=None, compare=False)
  model_params: Any = dataclasses.field(default=None, compare=False)
  model_config: ModelConfig | None = dataclasses.field(default=None, compare=False)
  train: bool = False

  def model_overrides(self) -> dict[str, Any]:
    return {}

  # --- the parameters this objective owns (training/state.py) ---

  def init_params(self, rng: Array, model_config: ModelConfig) -> dict[str, Any]:
    gen_config = generator_config(model_config, self.generator_fraction)
    generator_rng, head_rng = jax.random.split(rng)
    zeros = jnp.zeros((1, 2), jnp.int32)
    dummy = ModelInputs(tokens=zeros, positions=zeros, segment_ids=zeros + 1, token_types=zeros)
    table = jnp.zeros((model_config.vocab_size, model_config.embed_dim), jnp.float32)
    embedded = jnp.zeros((1, 2, model_config.embed_dim), jnp.float32)
    generator = Generator(gen_config, model_config.embed_dim).init(
        {'params': generator_rng, 'dropout': generator_rng}, table, embedded, dummy,
        zeros[:, :1], train=False)['params']
    head = DiscriminatorHead(model_config).init(
        head_rng, jnp.zeros((1, 2, model_config.embed_dim), jnp.float32))['params']
    return {'generator': generator, 'discriminator_head': head}

  def bind(self, params: Any, *, model_params: Any, model_config: ModelConfig,
           train: bool) -> 'Electra':
    return dataclasses.replace(self, params=params, model_params=model_params,
                               model_config=model_config, train=train)

  def extra_train_flops(self, model_config: ModelConfig, seq_len: int) -> float:
    """Generator forward + backward and the discriminator head, per sequence."""
    gen = generator_config(model_config, self.generator_fraction)
    d, g, v = model_config.embed_dim, gen.embed_dim, model_config.vocab_size
    predictions = self.masker.max_predictions
    generator = gen.train_flops_per_sequence(seq_len, 0)
    generator += 3.0 * (2 * seq_len * d * g + predictions * (2 * g * d + 2 * d * v))
    head = 3.0 * seq_len * (2 * d * d + 2 * d)
    return generator + head

  # --- the objective contract ---

  def prepare(self, rng: Array, batch: base.Batch, inputs: ModelInputs | None = None):
    """Masks, runs the generator, samples replacements; the model then sees the samples.

    Unbound (no parameters: model init and FLOP counting) it returns the discriminator's
    inputs on the original tokens and no targets; loss() then refuses to run.
    """
    inputs = base.base_inputs(batch) if inputs is None else inputs
    discriminator = dict(attn_order=None, causal=False, predict_index=None, query_index=None,
                         compute_logits=False)
    if self.params is None:
      return inputs.replace(**discriminator), None
    tokens, segment_ids = inputs.tokens, inputs.segment_ids
    select_key, corrupt_key, sample_key, dropout_key = jax.random.split(rng, 4)
    selected = self.masker.select(select_key, tokens, segment_ids)
    index, weights = mlm.prediction_slots(selected, self.masker.max_predictions)
    originals = jnp.where(weights > 0, jnp.take_along_axis(tokens, index, axis=1), 0)
    masked = inputs.replace(tokens=self.masker.corrupt(corrupt_key, tokens, selected),
                            **discriminator)
    table = self.model_params['token_embed']['embedding']
    # The discriminator's whole input embedding (token, position and type tables, and its
    # norm), shared with the generator as in ELECTRA; gradients reach it from both losses.
    embedded = Transformer(self.model_config).apply(
        {'params': self.model_params}, masked, embeddings_only=True).hidden
    gen_config = generator_config(self.model_config, self.generator_fraction)
    logits = Generator(gen_config, self.model_config.embed_dim).apply(
        {'params': self.params['generator']}, table, embedded, masked, index, train=self.train,
        rngs={'dropout': dropout_key})
    generator_loss, generator_metrics = base.token_cross_entropy(logits, originals, weights)
    sampled = jax.random.categorical(sample_key, jax.lax.stop_gradient(logits) / self.temperature)
    rows = jnp.arange(tokens.shape[0])[:, None]
    slots = jnp.where(weights > 0, index, tokens.shape[1])  # spare slots write nothing
    corrupted = tokens.at[rows, slots].set(sampled.astype(tokens.dtype), mode='drop')
    targets = {'labels': replaced_labels(tokens, corrupted, segment_ids),
               'weights': (segment_ids > 0).astype(jnp.float32),
               'generator_loss': generator_loss, 'generator_metrics': generator_metrics}
    return inputs.replace(tokens=corrupted, **discriminator), targets

  def loss(self, outputs, targets) -> tuple[Array, base.Metrics]:
    if self.params is None or targets is None:
      raise ValueError('ELECTRA needs its generator parameters: build the train state with '
                       'state.sharded_init(..., objective=..., model_config=...).')
    scores = DiscriminatorHead(self.model_config).apply(
        {'params': self.params['discriminator_head']}, outputs.hidden)
    labels, weights = targets['labels'], targets['weights']
    losses = optax.sigmoid_binary_cross_entropy(scores, labels)
    count = weights.sum()
    total = (losses * weights).sum()
    discriminator_loss = total / jnp.maximum(count, 1.0)
    loss = (self.generator_weight * targets['generator_loss']
            + self.discriminator_weight * discriminator_loss)
    correct = (((scores > 0) == (labels > 0)) * weights).sum()
    replaced = (labels * weights).sum()
    generator = targets['generator_metrics']
    one = jnp.ones((), jnp.float32)
    return loss, {'loss': (loss, one), 'generator_loss': generator['loss'],
                  'generator_accuracy': generator['accuracy'],
                  'discriminator_loss': (total, count), 'discriminator_accuracy': (correct, count),
                  'replaced': (replaced, count)}


@register('electra', defaults=DEFAULTS)
def make(settings: Mapping[str, Any] | None, *, vocab: Vocab, seq_len: int) -> Electra:
  """Validates config.electra and builds the objective."""
  values = base.with_defaults('electra', settings, DEFAULTS)
  rate = float(values['mask_rate'])
  if not 0.0 < rate < 1.0:
    raise ValueError(f'config.electra.mask_rate must be in (0, 1), got {rate}.')
  max_predictions = int(values['max_predictions'])
  if not 0 <= max_predictions <= seq_len:
    raise ValueError(f'config.electra.max_predictions must be in [0, seq_len={seq_len}] '
                     f'(0 = auto), got {max_predictions}.')
  fraction = float(values['generator_fraction'])
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'config.electra.generator_fraction must be in (0, 1], got {fraction}.')
  for key in ('generator_weight', 'discriminator_weight'):
    if float(values[key]) < 0:
      raise ValueError(f'config.electra.{key} must be >= 0, got {values[key]}.')
  if float(values['temperature']) <= 0:
    raise ValueError(f'config.electra.temperature must be > 0, got {values["temperature"]}.')
  if vocab.mask_id < 0:
    raise ValueError('config.objective includes electra but the vocabulary has no mask token '
                     '(mask_id < 0): use a tokenizer with a [MASK] piece.')
  masker = mlm.make(dict(mask_rate=rate, max_predictions=max_predictions,
                         mask_token_rate=MASK_TOKEN_RATE, random_token_rate=0.0, unit='token'),
                    vocab=vocab, seq_len=seq_len)
  return Electra(vocab=vocab, masker=masker, generator_fraction=fraction,
                 generator_weight=float(values['generator_weight']),
                 discriminator_weight=float(values['discriminator_weight']),
                 temperature=float(values['temperature']))
