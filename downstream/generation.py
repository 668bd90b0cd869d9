"""Text from a causal pretraining run: prompts in, continuations out, batched.

tools/generate.py is the command around these functions; models/decode.py is the compiled
decoding loop with the key/value cache.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

WIDTH_MULTIPLE = 16  # prompt widths round up to this, so similar prompts share one compilation


def read_prompts(prompts: Sequence[str], prompt_file: str | None) -> list[str]:
  """The --prompt values, then the non-empty lines of --prompt_file."""
  texts = list(prompts)
  if prompt_file:
    if not os.path.exists(prompt_file):
      raise ValueError(f'--prompt_file {prompt_file} does not exist.')
    with open(prompt_file, encoding='utf-8') as f:
      texts += [line.rstrip('\n') for line in f if line.strip()]
  if not texts:
    raise ValueError('No prompt: pass --prompt TEXT or --prompt_file FILE.')
  return texts


def load_run(workdir: str) -> Any:
  """The run's Experiment on this machine's devices, without data or parameters: enough to
  validate a request before restoring (and compiling) anything."""
  from training import experiment  # pylint: disable=import-outside-toplevel

  return experiment.build_local(workdir)


def encode_prompts(exp: Any, texts: Sequence[str]) -> list[list[int]]:
  """Each text as `[bos] + pieces`, the way training documents start."""
  return [[exp.tokenizer.vocab.bos_id] + exp.tokenizer.encode(text) for text in texts]


def check_causal(exp: Any) -> None:
  """Generation needs a model trained left to right; anything else is a one-line error."""
  import jax  # pylint: disable=import-outside-toplevel

  inputs, _ = jax.eval_shape(lambda key: exp.objective.prepare(key, exp.example_batch()),
                             jax.random.key(0))
  if not inputs.causal:
    raise ValueError(f'{exp.workdir} was pretrained with config.objective='
                     f'{exp.config.objective!r}, which is not a causal LM: generate from a '
                     "run with config.objective='clm'.")


def suppressed_ids(vocab: Any) -> list[int]:
  """The special ids a continuation never contains: all of them (pad, unk, bos, cls, sep,
  mask) but EOS, which ends a row."""
  return [i for i in range(vocab.size) if vocab.is_special[i] and i != vocab.eos_id]


def generate_texts(exp: Any, params: Any, texts: Sequence[str], *, max_new_tokens: int,
                   sampling: Any, seed: int = 0, batch_size: int = 8, use_cache: bool = True,
                   stop_at_eos: bool = True) -> tuple[list[str], dict[str, float]]:
  """(continuations, timing) for `texts` under the run `exp` (training/experiment.py).

  timing holds new_tokens, decode_seconds (compiled code only), compile_seconds and
  tokens_per_sec (new tokens per decode second).
  """
  import jax  # pylint: disable=import-outside-toplevel

  from models import decode  # pylint: disable=import-outside-toplevel

  vocab = exp.tokenizer.vocab
  prompts = encode_prompts(exp, texts)
  decode.check_lengths(exp.model_config, [len(p) for p in prompts], max_new_tokens)
  eos_id = vocab.eos_id if stop_at_eos else None
  fn = decode.make_generate_fn(exp.model_config, max_new_tokens=max_new_tokens,
                               sampling=sampling, eos_id=eos_id, pad_id=vocab.pad_id,
                               use_cache=use_cache, suppress_ids=suppressed_ids(vocab))
  compiled: dict[tuple[int, int], Callable[..., Any]] = {}
  outputs: list[str] = []
  timing = dict(new_tokens=0.0, decode_seconds=0.0, compile_seconds=0.0)
  rng = jax.random.key(seed)
  for first in range(0, len(prompts), batch_size):
    batch = prompts[first:first + batch_size]
    rows = len(batch)
    batch = batch + [batch[-1]] * (batch_size - rows)  # one batch shape for every call
    tokens, lengths = decode.left_pad(batch, vocab.pad_id, multiple=WIDTH_MULTIPLE)
    batch_rng = jax.random.fold_in(rng, first)
    if tokens.shape not in compiled:
      start = time.perf_counter()
      compiled[tokens.shape] = fn.lower(params, tokens, lengths, batch_rng).compile()
      timing['compile_seconds'] += time.perf_counter() - start
    start = time.perf_counter()
    result = jax.device_get(compiled[tokens.shape](params, tokens, lengths, batch_rng))
    timing['decode_seconds'] += time.perf_counter() - start
    for row in range(rows):
      timing['new_tokens'] += int(result.lengths[row])
      ids = decode.strip(result.tokens[row], result.lengths[row], eos_id)
      outputs.append(continuation(exp.tokenizer, batch[row], ids))
  timing['tokens_per_sec'] = timing['new_tokens'] / max(timing['decode_seconds'], 1e-9)
  return outputs, timing


def continuation(tokenizer: Any, prompt: Sequence[int], new_ids: Sequence[int]) -> str:
  """The text `new_ids` add to the prompt, decoded together with it (SentencePiece drops the
  leading space of a piece sequence decoded on its own)."""
  return tokenizer.decode(list(prompt) + list(new_ids))[len(tokenizer.decode(prompt)):]
