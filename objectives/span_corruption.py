"""T5 span corruption on the shared decoder-only model (UL2's R and X denoisers).

From the first `raw_len` tokens of a packed window (the n real ones), about
`noise_density * n` tokens in about `noise_density * n / mean_span_length` spans are drawn
with T5's `random_spans_noise_mask`: the noise and non-noise lengths are each a uniformly
random composition into that many positive parts, interleaved starting with non-noise. The
counts are T5's float32 arithmetic (`span_counts`), one table that both the host's planning
and the device read. The input replaces each span by a sentinel (the k-th span by sentinel
k) and ends with EOS; the target lists each sentinel followed by its span, then EOS (T5
appends EOS to both). As in UL2's decoder-only setting the two are joined into one sequence
(`prefix_lm.join`): the input is a bidirectional prefix, the target is generated causally and
carries the whole loss. The joined sequence holds n + 2 * spans + 2 tokens (`row_tokens`), so
`raw_len` is the largest length whose result always fits in `seq_len`; the window's later
tokens are not used. noise_density is at most 0.5: above it T5's mask merges spans and draws
fewer than it counts (27 counted, 20 drawn at 0.8/3 on 100 tokens).

With `sequential=True` the noise is one span at the end: a prefix LM whose prefix is a fixed
1 - noise_density of the tokens, with a sentinel. It is not UL2's S-denoiser, whose split is
uniform per example (`configs/span_corruption.py:ul2_s` trains `prefix_lm` for that).
Sentinels get ids of their own after the tokenizer's (`vocab.size + k`); the objective
enlarges the model's vocabulary to hold them. Like T5 (`reduce_concat_tokens`), the window's
documents are corrupted as one stream (the eos/bos between them are ordinary tokens to it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from data.vocab import Vocab
from models.transformer import ModelInputs
from objectives import base
from objectives.prefix_lm import adopt, join
from objectives.registry import register
from objectives.sections import SECTIONS

Array = jax.Array

DEFAULTS = SECTIONS['span_corruption']  # config.span_corruption: objectives/sections.py


def span_counts(n: Any, noise_density: float, mean_span_length: float,
                sequential: bool) -> tuple[np.ndarray, np.ndarray]:
  """(noise tokens, spans) for n real tokens (an int or an int array), as T5 counts them.

  T5's `random_spans_noise_mask` multiplies and divides in float32 and rounds half to even;
  this does the same in numpy, and both the host's planning (`fitting_length`) and the
  device's masks (`count_table`) read it, so the two never disagree (float64 gave 28 noise
  tokens in 9 spans for n = 190 at 0.15/3, float32 29 in 10). n < 2 has no noise. Spans are
  at most the non-noise tokens, since T5's mask puts a non-noise run before each span (a
  span beyond them merges with the next: T5 would draw fewer spans than it counts).
  """
  n = np.asarray(n, np.int64)
  noise = np.round(n.astype(np.float32) * np.float32(noise_density)).astype(np.int64)
  noise = np.clip(noise, 1, np.maximum(n - 1, 1))
  if sequential:
    spans = np.ones_like(noise)
  else:
    spans = np.round(noise.astype(np.float32) / np.float32(mean_span_length)).astype(np.int64)
    spans = np.clip(spans, 1, np.maximum(n - noise, 1))
  real = n >= 2
  return np.where(real, noise, 0), np.where(real, spans, 0)


def count_table(size: int, noise_density: float, mean_span_length: float,
                sequential: bool) -> tuple[np.ndarray, np.ndarray]:
  """int32 [size + 1] noise tokens and spans for every n in 0..size (`span_counts`), which
  the device indexes by each row's real count."""
  noise, spans = span_counts(np.arange(size + 1), noise_density, mean_span_length, sequential)
  return noise.astype(np.int32), spans.astype(np.int32)


def row_tokens(n: Any, spans: Any) -> Any:
  """Tokens of a corrupted row of n real tokens in that many spans: the input (non-noise
  tokens, a sentinel per span, EOS) plus the target (a sentinel before each span, EOS)."""
  return np.where(np.asarray(n) >= 2, np.asarray(n) + 2 * np.asarray(spans) + 2, n)


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
  """Bool [size]: the noise tokens among the first n positions (none where n < 2)."""
  noise_table, span_table = count_table(size, noise_density, mean_span_length, sequential)
  noise, spans = jnp.asarray(noise_table)[n], jnp.asarray(span_table)[n]
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
  noise mask. As in T5, a row with spans ends both its input and its target with `eos_id`;
  a row without (n < 2) is its tokens as they are, with no target."""
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
  has_spans = spans_len > 0
  eos = jnp.asarray(eos_id, tokens.dtype)
  input_len = keep.sum()
  inputs = inputs.at[jnp.where(has_spans, input_len, length)].set(eos, mode='drop')
  targets = targets.at[jnp.where(has_spans, spans_len, length)].set(eos, mode='drop')
  return inputs, input_len + has_spans, targets, spans_len + has_spans


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
  """Sentinel-marked spans in a bidirectional prefix, the spans generated causally after it."""

  vocab: Vocab
  noise_density: float
  mean_span_length: float
  sequential: bool
  seq_len: int
  raw_len: int  # window tokens used (row_tokens(n, spans) <= seq_len for every n <= raw_len)
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
  input plus target (`row_tokens`) fits in seq_len for every real count n <= raw_len, from
  the same counts the device uses (`span_counts`); raw_len < 2 when none fits."""
  n = np.arange(seq_len + 1)
  noise, spans = span_counts(n, noise_density, mean_span_length, sequential)
  fits = np.maximum.accumulate(row_tokens(n, spans)) <= seq_len
  raw_len = int(np.flatnonzero(fits)[-1])
  if raw_len < 2:
    return raw_len, 0, 0
  target = np.where(n >= 2, noise + spans + 1, 0)[:raw_len + 1]
  return raw_len, int(target.max()), int(spans[:raw_len + 1].max())


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
  if density > 0.5 and not sequential:
    raise ValueError(f'config.span_corruption.noise_density={density} is above 0.5: T5\'s mask '
                     'puts a non-noise run before every span, so spans would merge and fewer '
                     'than noise / mean_span_length would be drawn; use at most 0.5.')
  raw_len, max_target, max_spans = fitting_length(seq_len, density, mean, sequential)
  if raw_len < 2:
    raise ValueError(f'config.seq_len={seq_len} is too short for span corruption: use at least 6.')
  return SpanCorruption(vocab=vocab, noise_density=density, mean_span_length=mean,
                        sequential=sequential, seq_len=seq_len, raw_len=raw_len,
                        max_target_len=max_target, num_sentinels=max_spans)
