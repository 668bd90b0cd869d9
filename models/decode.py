"""Text generation from a causal Transformer: greedy, temperature, top-k and top-p sampling.

Prompts are LEFT-padded into one [batch, T] array, so every row's last prompt token sits at
slot T - 1 and every row writes its next token at the same slot; each row's positions still
start at 0 at its first real token and padding is never attended. One jitted function
prefills the prompts into a key/value cache, then runs a `jax.lax.while_loop` that feeds one
token per step: no recompilation per token and no re-running of the prefix. The loop ends
after `max_new_tokens` or once every row has produced `eos_id`. `use_cache=False` runs the
same loop but recomputes the whole fixed-size buffer every step: the baseline the cache is
measured against, and a check of it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from models.config import ModelConfig
from models.transformer import KVCache, ModelInputs, Transformer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen: temperature 0 is greedy (argmax); top_k 0 and top_p 1 are off."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not 0 <= self.temperature < float('inf'):  # NaN fails this too
      raise ValueError(f'temperature must be finite and >= 0 (0 = greedy), got '
                       f'{self.temperature}.')
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0 (0 = off), got {self.top_k}.')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1] (1 = off), got {self.top_p}.')

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


def filter_logits(logits: Array, sampling: Sampling) -> Array:
  """logits [..., vocab] divided by the temperature, with -inf outside the top-k and the nucleus.

  The nucleus is the smallest set of most likely tokens whose probability reaches top_p (after
  top-k); the most likely token always stays, so top_p near 0 keeps only it. Equal logits are
  ranked by token id, as argmax ranks them: exactly k tokens survive top-k and the nucleus
  is exactly the smallest set, so top_k=1 and a tiny top_p pick argmax's token even on ties.
  """
  logits = logits.astype(jnp.float32) / sampling.temperature
  vocab = logits.shape[-1]
  top_k = sampling.top_k if 0 < sampling.top_k < vocab else 0
  if not top_k and sampling.top_p >= 1.0:
    return logits
  flat = logits.reshape(-1, vocab)
  rows = jnp.arange(flat.shape[0])[:, None]
  if sampling.top_p < 1.0:
    order = jnp.argsort(-flat, axis=-1, stable=True)  # most likely first, ties by lower id
    ordered = jnp.take_along_axis(flat, order, axis=-1)
    rank = jnp.arange(vocab)[None]
    if top_k:
      ordered = jnp.where(rank < top_k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
    kept = (before < sampling.top_p) & (rank < (top_k or vocab))
    keep = jnp.zeros(flat.shape, bool).at[rows, order].set(kept)
  else:
    _, index = jax.lax.top_k(flat, top_k)  # ties: the lower id first
    keep = jnp.zeros(flat.shape, bool).at[rows, index].set(True)
  return jnp.where(keep, flat, -jnp.inf).reshape(logits.shape)


def sample_tokens(rng: Array, logits: Array, sampling: Sampling) -> Array:
  """One token id per row of logits [batch, vocab]."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, sampling), axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [batch, T] left-padded with pad_id, lengths [batch]); T rounds up to `multiple`
  so prompts of similar lengths share one compiled function."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError('Every prompt needs at least one token (start it with the BOS id).')
  lengths = np.array([len(p) for p in prompts], np.int32)
  width = -(-int(lengths.max()) // multiple) * multiple
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
  return tokens, lengths


@struct.dataclass
class Generation:
  """tokens [batch, max_new_tokens]: the new tokens, EOS included, pad_id after it;
  lengths [batch]: new tokens per row (EOS included); steps: tokens the loop produced per row
  (< max_new_tokens when every row stopped early); logits [batch, max_new_tokens, vocab]: the
  raw logits each token was chosen from (only with return_logits)."""

  tokens: Array
  lengths: Array
  steps: Array
  logits: Array | None = None


def _prompt_layout(tokens: Array, lengths: Array) -> tuple[Array, Array]:
  """(positions, segment_ids) of left-padded prompts: positions from 0 at the first real token."""
  width = tokens.shape[1]
  start = (width - lengths)[:, None]
  slots = jnp.arange(width)[None]
  return jnp.maximum(slots - start, 0).astype(jnp.int32), (slots >= start).astype(jnp.int32)


def _cached_model(model: Transformer, params, tokens: Array, lengths: Array, max_new: int):
  """(first logits [B, V], state, step(state, token [B], i) -> (logits, state)) with a KV cache."""
  batch, width = tokens.shape
  positions, segments = _prompt_layout(tokens, lengths)
  last = jnp.full((batch, 1), width - 1, jnp.int32)
  cache = KVCache.create(model.config, batch, width + max_new - 1)  # the last token is not read
  out = model.apply({'params': params}, ModelInputs(
      tokens=tokens, positions=positions, segment_ids=segments, predict_index=last,
      causal=True), cache=cache)

  def step(cache: KVCache, token: Array, i: Array):
    inputs = ModelInputs(tokens=token[:, None], positions=(lengths + i - 1)[:, None],
                         segment_ids=jnp.ones((batch, 1), jnp.int32), causal=True)
    out = model.apply({'params': params}, inputs, cache=cache)
    return out.logits[:, 0], out.cache

  return out.logits[:, 0], out.cache, step


def _recomputing_model(model: Transformer, params, tokens: Array, lengths: Array, max_new: int):
  """The same contract without a cache: every step runs the whole [B, T + max_new - 1] buffer
  (the last new token is never read back, so it needs no slot or position)."""
  batch, width = tokens.shape
  positions, segments = _prompt_layout(tokens, lengths)
  tail = jnp.arange(max_new - 1)[None]
  buffer = ModelInputs(
      tokens=jnp.pad(tokens, ((0, 0), (0, max_new - 1))),
      positions=jnp.concatenate([positions, lengths[:, None] + tail], axis=1).astype(jnp.int32),
      segment_ids=jnp.pad(segments, ((0, 0), (0, max_new - 1)), constant_values=1),
      causal=True)

  def logits_at(buffer: ModelInputs, slot):
    index = jnp.full((batch, 1), slot, jnp.int32)
    return model.apply({'params': params}, buffer.replace(predict_index=index)).logits[:, 0]

  def step(buffer: ModelInputs, token: Array, i: Array):
    slot = width + i - 1
    buffer = buffer.replace(tokens=jax.lax.dynamic_update_slice(
        buffer.tokens, token[:, None], (0, slot)))
    return logits_at(buffer, slot), buffer

  return logits_at(buffer, width - 1), buffer, step


def _generate(model: Transformer, params, tokens: Array, lengths: Array, rng: Array, *,
              max_new_tokens: int, sampling: Sampling, eos_id: int | None, pad_id: int,
              use_cache: bool, return_logits: bool, suppress_ids: tuple[int, ...]) -> Generation:
  batch = tokens.shape[0]
  start = _cached_model if use_cache else _recomputing_model
  logits, model_state, step = start(model, params, tokens, lengths, max_new_tokens)
  vocab = logits.shape[-1]

  def choose(carry, logits, i):
    out, done, count, all_logits = carry
    allowed = logits
    if suppress_ids:
      allowed = logits.at[:, jnp.asarray(suppress_ids, jnp.int32)].set(-jnp.inf)
    token = sample_tokens(jax.random.fold_in(rng, i), allowed, sampling)
    token = jnp.where(done, pad_id, token)
    out = out.at[:, i].set(token)
    count = count + (~done).astype(jnp.int32)
    if eos_id is not None:
      done = done | (token == eos_id)
    if return_logits:
      all_logits = all_logits.at[:, i].set(logits)
    return (out, done, count, all_logits), token

  carry = (jnp.full((batch, max_new_tokens), pad_id, jnp.int32), jnp.zeros((batch,), bool),
           jnp.zeros((batch,), jnp.int32),
           jnp.zeros((batch, max_new_tokens, vocab), jnp.float32) if return_logits else None)
  carry, token = choose(carry, logits, 0)

  def cond(loop):
    i, _, _, carry = loop
    return (i < max_new_tokens) & ~jnp.all(carry[1])

  def body(loop):
    i, model_state, token, carry = loop
    logits, model_state = step(model_state, token, i)
    carry, token = choose(carry, logits, i)
    return i + 1, model_state, token, carry

  steps, _, _, carry = jax.lax.while_loop(
      cond, body, (jnp.ones((), jnp.int32), model_state, token, carry))
  out, _, count, all_logits = carry
  return Generation(tokens=out, lengths=count, steps=steps, logits=all_logits)


def make_generate_fn(config: ModelConfig, *, max_new_tokens: int, sampling: Sampling = Sampling(),
                     eos_id: int | None = None, pad_id: int = 0, use_cache: bool = True,
                     return_logits: bool = False,
                     suppress_ids: Sequence[int] = ()) -> Callable[..., Generation]:
  """A jitted `fn(params, tokens [B, T] left-padded, lengths [B], rng) -> Generation`.

  It compiles once per prompt width T and batch size; every token of a call runs inside it.
  Tokens in `suppress_ids` are never chosen (greedy or sampled); the returned logits stay raw.
  """
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be at least 1, got {max_new_tokens}.')
  suppress_ids = tuple(sorted({int(i) for i in suppress_ids}))
  if any(not 0 <= i < config.vocab_size for i in suppress_ids):
    raise ValueError(f'suppress_ids must be token ids below the vocabulary size '
                     f'{config.vocab_size}, got {list(suppress_ids)}.')
  return jax.jit(functools.partial(
      _generate, Transformer(config), max_new_tokens=max_new_tokens, sampling=sampling,
      eos_id=eos_id, pad_id=pad_id, use_cache=use_cache, return_logits=return_logits,
      suppress_ids=suppress_ids))


def check_lengths(config: ModelConfig, lengths: np.ndarray, max_new_tokens: int) -> None:
  """Refuses, before compiling, positions that learned position embeddings do not have. The
  model reads the prompt and every new token but the last, which is never fed back."""
  longest = int(np.max(lengths)) + max_new_tokens - 1
  if config.position == 'learned' and longest > config.max_len:
    raise ValueError(f'A prompt of {int(np.max(lengths))} tokens plus max_new_tokens='
                     f'{max_new_tokens} needs {longest} positions but the model learned '
                     f'config.model.max_len={config.max_len}: shorten the prompt or max_new_tokens.')


def generate(config: ModelConfig, params, prompts: Sequence[Sequence[int]], rng: Array, *,
             max_new_tokens: int, sampling: Sampling = Sampling(), eos_id: int | None = None,
             pad_id: int = 0, use_cache: bool = True,
             suppress_ids: Sequence[int] = ()) -> list[list[int]]:
  """The new token ids of each prompt (without EOS and padding): a convenience over make_generate_fn."""
  tokens, lengths = left_pad(prompts, pad_id)
  check_lengths(config, lengths, max_new_tokens)
  fn = make_generate_fn(config, max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id,
                        pad_id=pad_id, use_cache=use_cache, suppress_ids=suppress_ids)
  result = jax.device_get(fn(params, tokens, lengths, rng))
  return [strip(row, length, eos_id) for row, length in zip(result.tokens, result.lengths)]


def strip(tokens: Sequence[int], length: int, eos_id: int | None) -> list[int]:
  """A row's first `length` new tokens without a final EOS."""
  row = [int(t) for t in tokens[:int(length)]]
  if eos_id is not None and row and row[-1] == eos_id:
    row = row[:-1]
  return row
