"""T5 span corruption on the shared decoder-only model (UL2's R and X denoisers; S is `sequential`).

From the first `raw_len` tokens of a packed window (the n real ones), about
`noise_density * n` tokens in about `noise_density * n / mean_span_length` spans are drawn
with T5's `random_spans_noise_mask`: the noise and non-noise lengths are each a uniformly
random composition into that many positive parts, interleaved starting with non-noise. The
input replaces each span by a sentinel (the k-th span by sentinel k); the target lists each
sentinel followed by its span, then EOS (T5 appends EOS to its targets; it marks where the
last span ends). As in UL2's decoder-only setting the two are joined into one sequence
(`prefix_lm.join`): the input is a bidirectional prefix, the target is generated causally and
carries the whole loss. The joined sequence holds n + 2 * spans + 1 tokens, so `raw_len` is
the largest length whose result always fits in `seq_len`; the window's later tokens are not
used.

With `sequential=True` the noise is one span at the end (UL2's S-denoiser, a prefix LM with
one sentinel). Sentinels get ids of their own after the tokenizer's (`vocab.size + k`); the
objective enlarges the model's vocabulary to hold them. Like T5, the window's documents are
corrupted as one stream (the eos/bos between them are ordinary tokens to it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from data.vocab import Vocab
from models.transformer import ModelInputs
from objectives import base
from objectives.prefix_lm import adopt, join
from objectives.registry import register

Array = jax.Array

DEFAULTS = dict(
    noise_density=0.15,  # fraction of the real tokens corrupted (T5, UL2 R: 0.15; X: 0.5)
    mean_span_length=3.0,  # mean noise span length (T5, UL2 R: 3; X: 32 or 64)
    sequential=False,  # one span at the end (UL2's S-denoiser)
)


def span_counts(n: Any, noise_density: float, mean_span_length: float, sequential: bool):
  """(noise tokens, spans) for n real tokens as T5 counts them; works on ints and arrays."""
  rounded = (jnp.round if isinstance(n, jax.Array) else round)
  clip = jnp.clip if isinstance(n, jax.Array) else (lambda x, lo, hi: max(lo, min(hi, x)))
  noise = clip(rounded(n * noise_density), 1, n - 1)
  spans = 1 if sequential else clip(rounded(noise / mean_span_length), 1, noise)
  return noise, (spans if not isinstance(n, jax.Array) else jnp.asarray(spans, jnp.int32))


def random_segmentation(rng: Array, num_items: Array, num_segments: Array, size: int) -> Array:
  """Lengths [size] of a uniformly random composition of num_items into num_segments positive
  parts (zeros after them), like T5's `_random_segmentation` with dynamic counts."""
  index = jnp.arange(size)
  cuttable = (index >= 1) & (index < num_items)
  key = jnp.where(cuttable, jax.random.uniform(rng, (size,)), 2.0)
  rank = jnp.argsort(jnp.argsort(key))
  first = cuttable & (rank < num_segments - 1)
  segment = jnp.cumsum(first)
  return jnp.zeros(size, jnp.int32).at[jnp.where(index < num_items, segment, size)].add(
      1, mode='drop')


def noise_mask(rng: Array, n: Array, size: int, noise_density: float, mean_span_length: float,
               sequential: bool) -> Array:
  """Bool [size]: the noise tokens among the first n positions (n >= 2)."""
  noise, spans = span_counts(n, noise_density, mean_span_length, sequential)
  index = jnp.arange(size)
  if sequential:
    return (index >= n - noise) & (index < n)
  noise_key, keep_key = jax.random.split(rng)
  noise_lengths = random_segmentation(noise_key, noise, spans, size)
  keep_lengths = random_segmentation(keep_key, n - noise, spans, size)
  interleaved = jnp.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)
  starts = jnp.cumsum(interleaved)[:-1]
  indicator = jnp.zeros(size, jnp.int32).at[starts].add(1, mode='drop')
  return (jnp.cumsum(indicator) % 2 == 1) & (index < n)


def corrupt(tokens: Array, noise: Array, n: Array, sentinel_base: int, pad_id: int,
            eos_id: int):
  """(input [L + 1], input length, target [L + 1], target length) of one row [L] from its
  noise mask; a target with spans ends with `eos_id`."""
  tokens, noise = jnp.pad(tokens, (0, 1), constant_values=pad_id), jnp.pad(noise, (0, 1))
  length = tokens.shape[0]
  index = jnp.arange(length)
  real = index < n
  previous = jnp.pad(noise[:-1], (1, 0))
  span_start = noise & ~previous
  span = jnp.cumsum(span_start) - 1
  sentinel = sentinel_base + span
  keep = real & (~noise | span_start)
  input_dest = jnp.where(keep, jnp.cumsum(keep) - 1, length)
  inputs = jnp.full(length, pad_id, tokens.dtype).at[input_dest].set(
      jnp.where(span_start, sentinel, tokens).astype(tokens.dtype), mode='drop')
  noise_before = jnp.cumsum(noise) - noise
  target_dest = jnp.where(noise & real, noise_before + span + 1, length)
  sentinel_dest = jnp.where(span_start & real, noise_before + span, length)
  targets = jnp.full(length, pad_id, tokens.dtype).at[target_dest].set(tokens, mode='drop')
  targets = targets.at[sentinel_dest].set(sentinel.astype(tokens.dtype), mode='drop')
  spans_len = (noise & real).sum() + (span_start & real).sum()
  end = jnp.where(spans_len > 0, spans_len, length)
  targets = targets.at[end].set(jnp.asarray(eos_id, tokens.dtype), mode='drop')
  return inputs, keep.sum(), targets, spans_len + (spans_len > 0)


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
  """Sentinel-marked spans in a bidirectional prefix, the spans generated causally after it."""

  vocab: Vocab
  noise_density: float
  mean_span_length: float
  sequential: bool
  seq_len: int
  raw_len: int  # window tokens used (n + 2 * spans + 1 <= seq_len for every n <= raw_len)
  max_target_len: int
  num_sentinels: int
  data_format: str = 'packed'

  def model_overrides(self) -> dict[str, Any]:
    return {'vocab_size': self.vocab.size + self.num_sentinels}

  def corrupt_batch(self, rng: Array, tokens: Array, segment_ids: Array):
    """(inputs, input lengths, targets, target lengths, noise mask) for a batch [B, T]."""
    tokens, segment_ids = tokens[:, :self.raw_len], segment_ids[:, :self.raw_len]
    n = (segment_ids > 0).sum(axis=1)

    def one(key, row, count):
      mask = noise_mask(key, count, self.raw_len, self.noise_density, self.mean_span_length,
                        self.sequential)
      mask = mask & (count >= 2)
      return corrupt(row, mask, count, self.vocab.size, self.vocab.pad_id,
                     self.vocab.eos_id) + (mask,)

    return jax.vmap(one)(jax.random.split(rng, tokens.shape[0]), tokens, n)

  def prepare(self, rng: Array, batch: base.Batch, inputs: ModelInputs | None = None):
    inputs = base.base_inputs(batch) if inputs is None else inputs
    prefix, prefix_len, target, target_len, _ = self.corrupt_batch(rng, inputs.tokens,
                                                                    inputs.segment_ids)
    joined, targets = join(prefix, prefix_len, target, target_len, length=inputs.tokens.shape[1],
                           pad_id=self.vocab.pad_id, num_predict=self.max_target_len)
    return adopt(inputs, joined), targets

  def loss(self, outputs, targets):
    return base.token_cross_entropy(outputs.logits, targets['targets'], targets['weights'])


def fitting_length(seq_len: int, noise_density: float, mean_span_length: float,
                   sequential: bool) -> tuple[int, int, int]:
  """(raw_len, most target tokens, most spans): the longest raw length whose corrupted
  input plus target fits in seq_len for every real count n <= raw_len."""
  best = (0, 0, 0)
  worst_total, most_target, most_spans = 0, 0, 0
  for raw in range(2, seq_len + 1):
    noise, spans = span_counts(raw, noise_density, mean_span_length, sequential)
    worst_total = max(worst_total, raw + 2 * spans + 1)  # + 1: the target's EOS
    most_target, most_spans = max(most_target, noise + spans + 1), max(most_spans, spans)
    if worst_total > seq_len:
      break
    best = (raw, most_target, most_spans)
  return best


@register('span_corruption', defaults=DEFAULTS)
def make(settings: Mapping[str, Any] | None, *, vocab: Vocab, seq_len: int) -> SpanCorruption:
  """Validates config.span_corruption and builds the objective."""
  values = base.with_defaults('span_corruption', settings, DEFAULTS)
  density = float(values['noise_density'])
  if not 0.0 < density < 1.0:
    raise ValueError(f'config.span_corruption.noise_density must be in (0, 1), got {density}.')
  mean = float(values['mean_span_length'])
  if mean < 1.0:
    raise ValueError(f'config.span_corruption.mean_span_length must be >= 1, got {mean}.')
  sequential = values['sequential']
  if not isinstance(sequential, bool):
    raise ValueError(f'config.span_corruption.sequential must be True or False, got '
                     f'{sequential!r}.')
  raw_len, max_target, max_spans = fitting_length(seq_len, density, mean, sequential)
  if raw_len < 2:
    raise ValueError(f'config.seq_len={seq_len} is too short for span corruption: use at least 8.')
  return SpanCorruption(vocab=vocab, noise_density=density, mean_span_length=mean,
                        sequential=sequential, seq_len=seq_len, raw_len=raw_len,
                        max_target_len=max_target, num_sentinels=max_spans)
