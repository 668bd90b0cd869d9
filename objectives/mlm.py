"""Masked language modeling (BERT), with whole-word (BERT wwm) and span (SpanBERT) masking.

Per sequence a budget of num_to_predict = min(max_predictions, max(1, round(n * mask_rate)))
tokens is chosen among the n candidate tokens: real (segment id > 0), not special and not a
whitespace-only piece. BERT's WordPiece has no whitespace tokens, so its rate is of exactly
these tokens; a SentencePiece line break or lone '▁' is never chosen, and the rate is of the
other real tokens (on the built-in corpus 16% of the real tokens are whitespace-only, so
15% of the candidates is 12.4% of the real tokens). The chosen tokens become [MASK]
(mask_token_rate), a random ordinary id (random_token_rate) or stay unchanged, and the
model predicts the originals at those positions only. That choice is drawn per token for
token and word units (BERT, BERT wwm) and once per span for spans (SpanBERT), whose random
case then replaces each token of the span by its own random id.

Units:
  token: single tokens, uniformly without replacement (BERT).
  word: whole words, in random order, each taken if it still fits in the budget (BERT wwm).
  span: SpanBERT's masking loop, in words: a length from a geometric(span_p) restricted to
    1..span_max and renormalised, anchored at a token drawn uniformly among those not yet
    chosen, covering its word and the following ones. A span that runs into or up to an
    earlier one is merged with it, as SpanBERT's merge_intervals does, so a span is each run
    of selected tokens (and may exceed span_max words, as SpanBERT's do). A span runs over
    the whitespace-only pieces between its words (a line break, a lone '▁'), which stay
    unmasked and unpredicted, as BERT's tokenizer has no such pieces to end a span at; it
    stops early at a special token or a document boundary, and the budget may end it inside a
    word (its first pieces are taken), as SpanBERT's does. The 80/10/10 choice is drawn once
    per merged span. With sbo=True, SpanBERT's span boundary
    objective is added: each target is also predicted from the hidden states of the tokens
    just outside its (merged) span and its offset in the span (counted in selected tokens;
    `SpanBoundaryHead` below, attached to the model through models/heads.py), and the two
    losses are summed.
A word is a word-start piece plus the non-start pieces after it; it never crosses a special
token, a whitespace-only piece or a document (segment) boundary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data.vocab import Vocab
from models import heads
from models.config import ModelConfig
from objectives import base
from objectives.registry import register
from objectives.sections import SECTIONS

Array = jax.Array

UNITS = ('token', 'word', 'span')
DEFAULTS = SECTIONS['mlm']  # config.mlm: objectives/sections.py


def span_length_probs(p: float, max_len: int) -> np.ndarray:
  """P(length = 1..max_len) for a geometric(p) length restricted to [1, max_len] (SpanBERT)."""
  lengths = np.arange(1, max_len + 1)
  probs = p * (1.0 - p) ** (lengths - 1)
  return probs / probs.sum()


def _previous_solid(gap: Array) -> Array:
  """[B, T] index of the nearest earlier position that is not a gap (-1 if none)."""
  index = jnp.broadcast_to(jnp.arange(gap.shape[-1]), gap.shape)
  last = jax.lax.cummax(jnp.where(gap, -1, index), axis=gap.ndim - 1)
  return jnp.pad(last[..., :-1], [(0, 0)] * (gap.ndim - 1) + [(1, 0)], constant_values=-1)


def span_starts(selected: Array, segment_ids: Array, gap: Array | None = None) -> Array:
  """[B, T] True at the first token of each run of selected tokens. A run never crosses a
  document boundary and runs over `gap` positions (whitespace-only pieces, never selected);
  with span masking each run is one span."""
  gap = jnp.zeros_like(selected) if gap is None else gap & ~selected
  previous = _previous_solid(gap)
  at = jnp.maximum(previous, 0)
  previous_selected = jnp.take_along_axis(selected, at, axis=1)
  same_segment = jnp.take_along_axis(segment_ids, at, axis=1) == segment_ids
  return selected & ~((previous >= 0) & previous_selected & same_segment)


def prediction_budget(candidates: Array, mask_rate: float, max_predictions: int) -> Array:
  """BERT's num_to_predict for one sequence: min(max_predictions, max(1, round(n * rate)))."""
  count = candidates.sum()
  wanted = jnp.maximum(1, jnp.round(count * mask_rate).astype(jnp.int32))
  return jnp.where(count > 0, jnp.minimum(wanted, max_predictions), 0).astype(jnp.int32)


def select_tokens(rng: Array, candidates: Array, budget: Array, max_predictions: int) -> Array:
  """`budget` candidate positions of one sequence [T], uniformly without replacement."""
  length = candidates.shape[0]
  score = jnp.where(candidates, jax.random.uniform(rng, (length,)), -1.0)
  _, top = jax.lax.top_k(score, max_predictions)
  take = jnp.arange(max_predictions) < budget
  return jnp.zeros(length, jnp.bool_).at[jnp.where(take, top, length)].set(True, mode='drop')


def word_ids(tokens: Array, candidates: Array, segment_ids: Array, word_start: Array,
             gap: Array | None = None) -> tuple[Array, Array]:
  """Word index of each candidate token of one sequence (T where not a candidate) and,
  per word, whether it continues the previous word's run: only `gap` positions
  (whitespace-only pieces), no special token or document boundary, between them."""
  length = tokens.shape[0]
  previous_candidate = jnp.pad(candidates[:-1], (1, 0))
  previous_segment = jnp.pad(segment_ids[:-1], (1, 0), constant_values=-1)
  continues_run = previous_candidate & (previous_segment == segment_ids)
  starts = candidates & (word_start[tokens] | ~continues_run)
  ids = jnp.where(candidates, jnp.cumsum(starts) - 1, length)
  gap = jnp.zeros_like(candidates) if gap is None else gap & ~candidates
  previous = _previous_solid(gap[None])[0]
  at = jnp.maximum(previous, 0)
  bridged = (previous >= 0) & candidates[at] & (segment_ids[at] == segment_ids)
  linked = jnp.zeros(length, jnp.bool_).at[jnp.where(starts, ids, length)].set(
      bridged, mode='drop')
  return ids, linked


def select_words(rng: Array, ids: Array, linked: Array, budget: Array, max_predictions: int,
                 span_probs: np.ndarray | None) -> Array:
  """Chooses words (span_probs None) or SpanBERT spans of words until the token budget is spent.

  Words: each step takes a uniformly random free word that fits in the remaining budget
  (BERT wwm's shuffled order with skipping). Spans, as SpanBERT's masking loop: each step
  samples a length in words and an anchor token uniformly among the free words' tokens, and
  covers the anchor's word and the following words of its run up to that length. Words
  chosen before count toward the length at no cost, so a span may run into or up to an
  earlier one and the two are one span (SpanBERT merges overlapping and adjacent spans); the
  budget may end a span inside a word, whose first pieces are then taken, as in SpanBERT.
  Returns the number of tokens taken of each word [T]: all of them, none, or the first few.
  """
  length = ids.shape[0]
  sizes = jnp.zeros(length, jnp.int32).at[ids].add(1, mode='drop')
  valid = sizes > 0
  index = jnp.arange(length)
  spans = span_probs is not None
  log_probs = jnp.log(jnp.asarray(span_probs if spans else [1.0], jnp.float32))

  def step(key, state):
    taken, used = state
    length_key, anchor_key = jax.random.split(key)
    remaining = budget - used
    free = valid & (taken == 0)
    if spans:  # an anchor token, uniformly: a word of k pieces is k times as likely
      eligible = free & (remaining > 0)
      weights = jnp.where(eligible, jnp.log(jnp.maximum(sizes, 1).astype(jnp.float32)), -jnp.inf)
      anchor = jax.random.categorical(anchor_key, weights)
    else:
      eligible = free & (sizes <= remaining)
      anchor = jnp.argmax(jnp.where(eligible, jax.random.uniform(anchor_key, (length,)), -1.0))
    words = jax.random.categorical(length_key, log_probs) + 1
    offset = index - anchor
    window = (offset >= 0) & (offset < words) & eligible[anchor]
    new = window & (jnp.cumsum(window & ~((offset == 0) | linked)) == 0) & (taken == 0)
    before = jnp.cumsum(jnp.where(new, sizes, 0)) - sizes  # the span's new tokens before each
    take = jnp.where(new, jnp.clip(remaining - before, 0, sizes), 0)
    return taken + take, used + take.sum()

  keys = jax.random.split(rng, max_predictions)
  taken, _ = jax.lax.fori_loop(
      0, max_predictions, lambda i, state: step(keys[i], state),
      (jnp.zeros(length, jnp.int32), jnp.zeros((), jnp.int32)))
  return taken


def span_boundaries(selected: Array, segment_ids: Array, index: Array, weights: Array,
                    gap: Array | None = None) -> Array:
  """[B, P, 3] (s - 1, e + 1, offset) for the target at each slot, i = index, inside its
  span s..e (a run of selected tokens over `gap` positions; clipped to the sequence), the
  offset counting the span's selected tokens before i; zeros at empty slots."""
  length = selected.shape[1]
  gap = jnp.zeros_like(selected) if gap is None else gap
  position = jnp.broadcast_to(jnp.arange(length), selected.shape)
  ends = span_starts(selected[:, ::-1], segment_ids[:, ::-1], gap[:, ::-1])[:, ::-1]
  first = jax.lax.cummax(jnp.where(span_starts(selected, segment_ids, gap), position, 0), axis=1)
  last = jax.lax.cummin(jnp.where(ends, position, length - 1), axis=1, reverse=True)
  start = jnp.take_along_axis(first, index, axis=1)
  end = jnp.take_along_axis(last, index, axis=1)
  count = jnp.cumsum(selected, axis=1)  # selected tokens up to and including each position
  offset = jnp.take_along_axis(count, index, axis=1) - jnp.take_along_axis(count, start, axis=1)
  bounds = jnp.stack([jnp.maximum(start - 1, 0), jnp.minimum(end + 1, length - 1), offset],
                     axis=-1)
  return jnp.where(weights[..., None] > 0, bounds, 0).astype(jnp.int32)


def prediction_slots(selected: Array, max_predictions: int) -> tuple[Array, Array]:
  """predict_index [B, P] listing the selected positions in order (padding -> 0) and weights."""
  batch, length = selected.shape
  slot = jnp.where(selected, jnp.cumsum(selected, axis=-1) - 1, max_predictions)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, length))
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  index = jnp.zeros((batch, max_predictions), jnp.int32).at[rows, slot].set(positions, mode='drop')
  weights = jnp.arange(max_predictions)[None, :] < selected.sum(axis=-1, keepdims=True)
  return index, weights.astype(jnp.float32)


class SpanBoundaryHead(nn.Module):
  """SpanBERT's span boundary objective head (Joshi et al. 2020, 3.2): [B, T, D] final hidden
  states and [B, P, 3] (left, right, offset) -> [B, P, D] states. For a target at offset i - s
  in a masked span s..e it reads the boundary states x_{s-1}, x_{e+1} and a learned embedding
  p_{i-s}:  h = LayerNorm(GeLU(W1 [x_{s-1}; x_{e+1}; p_{i-s}])),  y = LayerNorm(GeLU(W2 h)).
  The model's own output layer turns y into vocabulary logits."""

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


def span_boundary_head(cfg: ModelConfig, hidden: Array, boundaries: Array) -> Array:
  """The head as the model runs it, inside its own scope, so its parameters sit at
  `params/span_boundary` as in every checkpoint."""
  return SpanBoundaryHead(cfg, name='span_boundary')(hidden, boundaries)


heads.attach(heads.SPAN_BOUNDARY, span_boundary_head)


@dataclasses.dataclass(frozen=True)
class MaskedLM:
  """BERT's masked LM on whatever examples its partners read; see the module docstring."""

  vocab: Vocab
  mask_rate: float
  max_predictions: int
  mask_token_rate: float
  random_token_rate: float
  unit: str
  span_p: float
  span_max: int
  sbo: bool = False
  data_format: str = 'any'

  def model_overrides(self) -> dict[str, Any]:
    # A span holds at most max_predictions tokens: one offset embedding per position in it.
    return {'sbo_max_offset': self.max_predictions} if self.sbo else {}

  @property
  def replacement_ids(self) -> np.ndarray:
    """Ids a random replacement draws from: ordinary pieces that are not only whitespace."""
    ordinary = self.vocab.ordinary_ids
    return ordinary[~self.vocab.is_whitespace[ordinary]]

  def gap(self, tokens: Array, segment_ids: Array) -> Array:
    """[B, T] whitespace-only pieces of the documents: a span runs over them unmasked."""
    return (segment_ids > 0) & jnp.asarray(self.vocab.is_whitespace)[tokens]

  def select(self, rng: Array, tokens: Array, segment_ids: Array) -> Array:
    """The positions [B, T] to predict, at most max_predictions per sequence."""
    is_special = jnp.asarray(self.vocab.is_special)
    is_whitespace = jnp.asarray(self.vocab.is_whitespace)
    word_start = jnp.asarray(self.vocab.word_start)
    span_probs = span_length_probs(self.span_p, self.span_max) if self.unit == 'span' else None

    def one(key, tokens, segment_ids):
      candidates = base.prediction_candidates(tokens, segment_ids, is_special, is_whitespace)
      budget = prediction_budget(candidates, self.mask_rate, self.max_predictions)
      if self.unit == 'token':
        return select_tokens(key, candidates, budget, self.max_predictions)
      ids, linked = word_ids(tokens, candidates, segment_ids, word_start,
                             self.gap(tokens, segment_ids))
      taken = select_words(key, ids, linked, budget, self.max_predictions, span_probs)
      position = jnp.arange(ids.shape[0])
      first = jnp.full(ids.shape, ids.shape[0]).at[ids].min(position, mode='drop')
      word = jnp.minimum(ids, ids.shape[0] - 1)
      return candidates & (position - first[word] < taken[word])  # a word's first pieces

    keys = jax.random.split(rng, tokens.shape[0])
    return jax.vmap(one)(keys, tokens, segment_ids)

  def corrupt(self, rng: Array, tokens: Array, selected: Array,
              segment_ids: Array | None = None) -> Array:
    """Replaces selected tokens by [MASK], a random ordinary id or themselves (80/10/10),
    drawn per token, or per span (each run of selected tokens over whitespace-only pieces)
    for unit='span'."""
    choice_key, id_key = jax.random.split(rng)
    draw = jax.random.uniform(choice_key, tokens.shape)
    if self.unit == 'span':
      segments = jnp.ones_like(tokens) if segment_ids is None else segment_ids
      index = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
      starts = span_starts(selected, segments, self.gap(tokens, segments))
      first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
      draw = jnp.take_along_axis(draw, first, axis=1)  # every token of a span: its first's draw
    ordinary = jnp.asarray(self.replacement_ids)
    random_ids = ordinary[jax.random.randint(id_key, tokens.shape, 0, ordinary.shape[0])]
    masked = selected & (draw < self.mask_token_rate)
    randomised = selected & ~masked & (draw < self.mask_token_rate + self.random_token_rate)
    corrupted = jnp.where(masked, self.vocab.mask_id, tokens)
    return jnp.where(randomised, random_ids, corrupted).astype(tokens.dtype)

  def prepare(self, rng: Array, batch: base.Batch, inputs):
    del batch  # the inputs carry the tokens, possibly edited by objectives before this one
    select_key, corrupt_key = jax.random.split(rng)
    tokens = inputs.tokens
    selected = self.select(select_key, tokens, inputs.segment_ids)
    index, weights = prediction_slots(selected, self.max_predictions)
    targets = jnp.where(weights > 0, jnp.take_along_axis(tokens, index, axis=1), 0)
    boundaries = (span_boundaries(selected, inputs.segment_ids, index, weights,
                                  self.gap(tokens, inputs.segment_ids)) if self.sbo else None)
    inputs = inputs.replace(tokens=self.corrupt(corrupt_key, tokens, selected,
                                                inputs.segment_ids),
                            attn_order=None, causal=False, predict_index=index,
                            span_boundaries=boundaries)
    return inputs, {'targets': targets, 'weights': weights}

  def loss(self, outputs, targets):
    loss, metrics = base.token_cross_entropy(outputs.logits, targets['targets'],
                                             targets['weights'])
    if not self.sbo:
      return loss, metrics
    if outputs.sbo_logits is None:
      raise ValueError('config.mlm.sbo needs the span-boundary head (config.model.sbo_max_offset '
                       '> 0); the model produced no sbo_logits.')
    sbo_loss, sbo_metrics = base.token_cross_entropy(outputs.sbo_logits, targets['targets'],
                                                     targets['weights'])
    (total, count), (sbo_total, _) = metrics['loss'], sbo_metrics['loss']
    metrics.update(token_loss=metrics['loss'], loss=(total + sbo_total, count),
                   sbo_loss=sbo_metrics['loss'], sbo_accuracy=sbo_metrics['accuracy'])
    return loss + sbo_loss, metrics


@register('mlm', defaults=DEFAULTS)
def make(settings: Mapping[str, Any] | None, *, vocab: Vocab, seq_len: int) -> MaskedLM:
  """Validates config.mlm and builds the objective."""
  values = base.with_defaults('mlm', settings, DEFAULTS)
  rate = float(values['mask_rate'])
  if not 0.0 < rate < 1.0:
    raise ValueError(f'config.mlm.mask_rate must be in (0, 1), got {rate}.')
  max_predictions = int(values['max_predictions'])
  if max_predictions < 0 or max_predictions > seq_len:
    raise ValueError(f'config.mlm.max_predictions must be in [0, seq_len={seq_len}] '
                     f'(0 = auto), got {max_predictions}.')
  if max_predictions == 0:
    max_predictions = max(1, math.ceil(seq_len * rate - 1e-9))
  mask_token_rate = float(values['mask_token_rate'])
  random_token_rate = float(values['random_token_rate'])
  if min(mask_token_rate, random_token_rate) < 0 or mask_token_rate + random_token_rate > 1.0:
    raise ValueError('config.mlm.mask_token_rate and config.mlm.random_token_rate must be '
                     f'non-negative and sum to at most 1, got {mask_token_rate} + '
                     f'{random_token_rate}.')
  if vocab.mask_id < 0:
    raise ValueError('config.objective includes mlm but the vocabulary has no mask token '
                     '(mask_id < 0): use a tokenizer with a [MASK] piece.')
  if random_token_rate > 0 and not (~vocab.is_special & ~vocab.is_whitespace).any():
    raise ValueError('config.mlm.random_token_rate > 0 needs ordinary (non-special) ids in '
                     'the vocabulary.')
  unit = values['unit']
  if unit not in UNITS:
    raise ValueError(f'config.mlm.unit must be one of {UNITS}, got {unit!r}.')
  span_p = float(values['span_p'])
  if not 0.0 < span_p <= 1.0:
    raise ValueError(f'config.mlm.span_p must be in (0, 1], got {span_p}.')
  span_max = int(values['span_max'])
  if span_max < 1:
    raise ValueError(f'config.mlm.span_max must be at least 1, got {span_max}.')
  sbo = values['sbo']
  if not isinstance(sbo, bool):
    raise ValueError(f'config.mlm.sbo must be True or False, got {sbo!r}.')
  if sbo and unit != 'span':
    raise ValueError(f'config.mlm.sbo (the span boundary objective) needs config.mlm.unit=span, '
                     f'got {unit!r}.')
  return MaskedLM(vocab=vocab, mask_rate=rate, max_predictions=max_predictions,
                  mask_token_rate=mask_token_rate, random_token_rate=random_token_rate,
                  unit=unit, span_p=span_p, span_max=span_max, sbo=sbo)


# Held-out evaluation (training/evaluation.py) scores every MLM run at BERT's 15% token masking
# (80/10/10), whatever it trained with, so runs compare: these settings override config.mlm there.
make.eval_settings = dict(mask_rate=0.15, unit='token', max_predictions=0, mask_token_rate=0.8,
                          random_token_rate=0.1)
