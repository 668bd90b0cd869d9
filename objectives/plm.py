"""Permutation language modeling (XLNet) with partial prediction and span targets.

Per sequence, `num_predict` targets (0: round(seq_len / k)) are chosen among the real
tokens (segment id > 0, not special) in contiguous spans, and a factorisation order is
sampled in which every non-target comes before every target. A row with R real
(non-padding) tokens of seq_len gets round(num_predict * R / seq_len) targets (at least one),
so a mostly padded row (an exact evaluation's last batch) has the same fraction predicted as a
full one, about 1/k:
  - non-targets all share rank 0, so they see each other bidirectionally (XLNet's data
    pipeline gives them the lowest rank, -1, for the same effect) and never see a target;
  - targets get ranks 1..n in a uniformly random order; target i's query stream sees the
    context and the targets ranked before it, its content stream also sees itself.

Spans follow XLNet's `_sample_mask`: span lengths n in 1..max_span with P(n) ~ 1/n, each
span placed at a random offset inside a context cell proportional to its length, with at
least one non-target after it when the cell has room, so spans never touch. Here the cells
tile the sequence's real tokens exactly (cell length ~ n * real_tokens / num_predict, i.e.
~ n * k) and the last span is cut so the spans hold exactly num_predict tokens; XLNet uses
cells of n * (1 + alpha / beta) tokens and tops the count up with random single tokens.
Lengths count pieces, not whole words, and a span may run over a special token (e.g. the
eos/bos pair between packed documents), which is skipped. A sequence with fewer candidates
than its number of targets predicts all of them; spare target slots point at non-real
positions with weight 0. A document whose every token is a target (possible only without bos/eos,
which packed windows always have at document edges) gives its first target in the order
back to the context, so every weighted target sees at least one token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from data.vocab import Vocab
from models.transformer import ModelInputs, ModelOutputs
from objectives import base
from objectives.registry import register
from objectives.sections import SECTIONS

Array = jax.Array

DEFAULTS = SECTIONS['plm']  # config.plm: objectives/sections.py


def span_length_probs(max_span: int) -> np.ndarray:
  """P(length = 1..max_span) proportional to 1 / length, as XLNet's span sampler."""
  probs = 1.0 / np.arange(1, max_span + 1)
  return probs / probs.sum()


def scaled_num_predict(num_predict: int, real_tokens: Array, seq_len: int) -> Array:
  """round(num_predict * real_tokens / seq_len), at least 1: the targets of a row with
  `real_tokens` non-padding tokens (num_predict itself for a full row)."""
  scaled = (num_predict * real_tokens + seq_len // 2) // seq_len
  return jnp.clip(scaled, 1, num_predict).astype(jnp.int32)


def sample_span_mask(rng: Array, num_slots: int, available: Array, num_predict: int,
                     max_span: int, goal: Array | None = None) -> Array:
  """Bool [num_slots]: exactly min(goal, available) of the first `available` slots (goal
  defaults to num_predict, which bounds it), in contiguous spans of 1..max_span that never
  touch when the cells have room."""
  length_rng, offset_rng = jax.random.split(rng)
  goal = jnp.minimum(num_predict if goal is None else jnp.minimum(goal, num_predict), available)
  logits = jnp.log(jnp.asarray(span_length_probs(max_span), jnp.float32))
  lengths = jax.random.categorical(length_rng, logits, shape=(num_predict,)) + 1
  before = jnp.cumsum(lengths) - lengths
  lengths = jnp.clip(goal - before, 0, lengths)  # cut the spans to exactly `goal` slots
  before = jnp.cumsum(lengths) - lengths
  safe_goal = jnp.maximum(goal, 1)
  cell_start = before * available // safe_goal
  cell_end = (before + lengths) * available // safe_goal
  room = cell_end - cell_start - lengths  # >= 0 because available >= goal
  # Leave at least one free slot after the span when the cell allows it (XLNet's r_ctx >= 1).
  offset = jnp.floor(jax.random.uniform(offset_rng, (num_predict,))
                     * jnp.maximum(room, 1)).astype(jnp.int32)
  start = cell_start + offset
  edges = jnp.zeros(num_slots + 1, jnp.int32)
  edges = edges.at[start].add(1).at[start + lengths].add(-1)
  return jnp.cumsum(edges)[:num_slots] > 0


def sample_targets(rng: Array, candidates: Array, num_predict: int, max_span: int,
                   goal: Array | None = None) -> tuple[Array, Array]:
  """Target positions [num_predict] of one sequence (targets first, in position order) and
  their weights: 1 for the min(goal, #candidates) real targets (goal defaults to
  num_predict), 0 for spare slots."""
  length = candidates.shape[0]
  # Candidate positions in order first: spans are drawn over the candidates only.
  candidate_positions = jnp.argsort(~candidates, stable=True)
  in_span = sample_span_mask(rng, length, candidates.sum(), num_predict, max_span, goal)
  is_target = jnp.zeros(length, jnp.bool_).at[candidate_positions].set(in_span)
  # Targets first, then spare slots on padding or special positions (never a real token).
  order = jnp.where(is_target, 0, jnp.where(candidates, 2, 1))
  index = jnp.argsort(order, stable=True)[:num_predict].astype(jnp.int32)
  return index, is_target[index].astype(jnp.float32)


def factorisation_ranks(rng: Array, index: Array, weights: Array, length: int) -> Array:
  """Rank of each position [length] in a sampled factorisation order: 0 for the context,
  1..n for the n weighted targets in a uniformly random order."""
  weighted = weights > 0
  keys = jnp.where(weighted, jax.random.uniform(rng, weights.shape), -1.0)  # spares sort first
  spares = weights.shape[0] - weighted.sum()
  slot_rank = jnp.argsort(jnp.argsort(keys)) + 1 - spares
  slot_rank = jnp.where(weighted, slot_rank, 0).astype(jnp.int32)
  return jnp.zeros(length, jnp.int32).at[index].set(slot_rank)


def demote_contextless(ranks: Array, segment_ids: Array, index: Array,
                       weights: Array) -> tuple[Array, Array]:
  """Moves to the context (rank 0, weight 0) each target that would see no key at all.

  Only the first target in the order of a document made entirely of targets has none; an
  empty attention row would fall back to attending everything, other documents included.
  """
  target_segments = segment_ids[index]
  visible = ((segment_ids[None, :] == target_segments[:, None]) & (segment_ids[None, :] > 0)
             & (ranks[None, :] < ranks[index][:, None]))
  weights = jnp.where(visible.any(axis=-1), weights, 0.0)
  return ranks.at[index].set(jnp.where(weights > 0, ranks[index], 0)), weights


def sample_sequence(rng: Array, tokens: Array, segment_ids: Array, is_special: Array, *,
                    num_predict: int, max_span: int) -> tuple[Array, Array, Array]:
  """(ranks [T], target index [P], target weights [P]) for one sequence."""
  span_rng, order_rng = jax.random.split(rng)
  candidates = base.prediction_candidates(tokens, segment_ids, is_special)
  goal = scaled_num_predict(num_predict, (segment_ids > 0).sum(), tokens.shape[0])
  index, weights = sample_targets(span_rng, candidates, num_predict, max_span, goal)
  ranks = factorisation_ranks(order_rng, index, weights, tokens.shape[0])
  ranks, weights = demote_contextless(ranks, segment_ids, index, weights)
  return ranks, index, weights


@dataclasses.dataclass(frozen=True)
class PermutationLM:
  """XLNet's objective: predict span targets last in a random factorisation order."""

  vocab: Vocab
  num_predict: int
  max_span: int
  data_format: str = 'packed'

  def model_overrides(self) -> dict[str, Any]:
    return {'two_stream': True}

  def prepare(self, rng: Array, batch: base.Batch,
              inputs: ModelInputs) -> tuple[ModelInputs, dict[str, Array]]:
    """Samples targets and a factorisation order per sequence; turns on the query stream."""
    tokens, segment_ids = batch['tokens'], batch['segment_ids']
    rngs = jax.random.split(rng, tokens.shape[0])
    is_special = jnp.asarray(self.vocab.is_special)
    ranks, index, weights = jax.vmap(
        lambda r, t, s: sample_sequence(r, t, s, is_special, num_predict=self.num_predict,
                                        max_span=self.max_span))(rngs, tokens, segment_ids)
    targets = {'targets': jnp.take_along_axis(tokens, index, axis=1), 'weights': weights}
    return inputs.replace(attn_order=ranks, query_index=index, causal=False), targets

  def loss(self, outputs: ModelOutputs, targets: dict[str, Array]) -> tuple[Array, base.Metrics]:
    """Cross-entropy of the query stream's logits at the weighted targets."""
    return base.token_cross_entropy(outputs.logits, targets['targets'], targets['weights'])


def resolve_num_predict(settings: Mapping[str, Any], seq_len: int) -> int:
  """The number of targets per sequence the settings ask for, validated."""
  k, num_predict = settings['k'], settings['num_predict']
  if num_predict < 0:
    raise ValueError(f'config.plm.num_predict must be >= 0 (0: seq_len / k), got {num_predict}.')
  if num_predict == 0:
    if k <= 1:
      raise ValueError(f'config.plm.k must be > 1 (predict 1/k of the tokens), got {k}.')
    num_predict = int(round(seq_len / k))
    name = f'k={k}'
  else:
    name = f'num_predict={num_predict}'
  if num_predict < 1:
    raise ValueError(f'config.plm.{name} leaves no targets at seq_len {seq_len}.')
  if num_predict >= seq_len:
    raise ValueError(f'config.plm.{name} leaves no context at seq_len {seq_len}.')
  return num_predict


@register('plm', defaults=DEFAULTS)
def make(settings: Mapping[str, Any] | None, *, vocab: Vocab, seq_len: int) -> PermutationLM:
  """Validates config.plm against seq_len and builds the objective."""
  settings = base.with_defaults('plm', settings, DEFAULTS)
  for key, kinds, kind in (('k', (int, float), 'a number'), ('num_predict', int, 'an integer'),
                           ('max_span', int, 'an integer')):
    if not isinstance(settings[key], kinds) or isinstance(settings[key], bool):
      raise ValueError(f'config.plm.{key} must be {kind}, got {settings[key]!r}.')
  num_predict = resolve_num_predict(settings, seq_len)
  max_span = int(settings['max_span'])
  if not 1 <= max_span <= min(num_predict, seq_len):
    raise ValueError(f'config.plm.max_span={max_span} must be in [1, {num_predict}] (the '
                     f'targets per sequence at seq_len {seq_len}).')
  return PermutationLM(vocab=vocab, num_predict=num_predict, max_span=max_span)
