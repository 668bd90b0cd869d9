"""Generation speed with and without the key/value cache, on random weights: new tokens/s.

  python -m benchmarks.generate --config configs/clm.py:tiny --max_new_tokens 256
  python -m benchmarks.generate --config configs/clm.py:small --batch 4 --output gen.json

Greedy decoding of `--batch` random prompts of `--prompt_len` tokens, EOS off so every row
makes all `--max_new_tokens`. Both variants run the same compiled loop (models/decode.py);
without the cache each step recomputes the whole fixed-size buffer. Compilation is timed
apart; each variant's time is the median of `--repeats` runs. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from models import decode
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clm.py:tiny', 'Model config to time.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Prompts decoded together.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Tokens per prompt.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 256, 'New tokens per prompt.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per variant (after compiling).')
_VARIANTS = flags.DEFINE_list('variants', ['cache', 'no_cache'], 'cache and/or no_cache.')
_OUTPUT = flags.DEFINE_string('output', None, 'Also write the JSON here.')


def model_config(config, prompt_len: int, max_new_tokens: int) -> ModelConfig:
  """The config's model with enough learned positions for prompt + new tokens."""
  values = dict(config.model)
  values['vocab_size'] = config.model.get('vocab_size') or config.data.vocab_size
  values['max_len'] = max(values.get('max_len', 0), prompt_len + max_new_tokens)
  return ModelConfig.from_config(values)


def time_variant(cfg: ModelConfig, params, tokens: np.ndarray, lengths: np.ndarray, *,
                 max_new_tokens: int, use_cache: bool, repeats: int) -> dict[str, float]:
  """Compile seconds, median run seconds and new tokens/s of one variant."""
  fn = decode.make_generate_fn(cfg, max_new_tokens=max_new_tokens, use_cache=use_cache)
  rng = jax.random.key(0)
  start = time.perf_counter()
  compiled = fn.lower(params, tokens, lengths, rng).compile()
  compile_seconds = time.perf_counter() - start
  seconds = []
  result = None
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(params, tokens, lengths, rng))
    seconds.append(time.perf_counter() - start)
  new_tokens = int(np.asarray(result.lengths).sum())
  median = statistics.median(seconds)
  return dict(compile_seconds=round(compile_seconds, 3), seconds=round(median, 4),
              new_tokens=new_tokens, tokens_per_sec=round(new_tokens / median, 1),
              first_row=[int(t) for t in np.asarray(result.tokens)[0, :8]])


def benchmark(config, *, batch: int, prompt_len: int, max_new_tokens: int, repeats: int,
              variants: list[str]) -> dict:
  cfg = model_config(config, prompt_len, max_new_tokens)
  example = ModelInputs(tokens=np.zeros((1, 8), np.int32), positions=np.zeros((1, 8), np.int32),
                        segment_ids=np.ones((1, 8), np.int32), causal=True)
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  params = jax.jit(lambda key: nn.unbox(Transformer(cfg).init(key, example)['params']))(
      jax.random.key(0))
  rng = np.random.default_rng(0)
  tokens = rng.integers(7, cfg.vocab_size, size=(batch, prompt_len), dtype=np.int32)
  lengths = np.full((batch,), prompt_len, np.int32)
  results = {}
  for variant in variants:
    if variant not in ('cache', 'no_cache'):
      raise ValueError(f'--variants takes cache and no_cache, got {variant!r}.')
    results[variant] = time_variant(cfg, params, tokens, lengths, max_new_tokens=max_new_tokens,
                                    use_cache=variant == 'cache', repeats=repeats)
  if len(results) == 2:
    same = results['cache']['first_row'] == results['no_cache']['first_row']
    results['speedup'] = round(results['cache']['tokens_per_sec'] /
                               results['no_cache']['tokens_per_sec'], 2)
    results['same_tokens'] = same
  return dict(
      model=dict(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads,
                 mlp_dim=cfg.mlp_dim, vocab_size=cfg.vocab_size, position=cfg.position,
                 dtype=cfg.dtype, params=cfg.param_count()),
      batch=batch, prompt_len=prompt_len, max_new_tokens=max_new_tokens, repeats=repeats,
      device=f'{jax.devices()[0].device_kind} x{jax.device_count()}',
      cpu_count=os.cpu_count(), machine=platform.machine(), results=results)


def main(argv):
  del argv
  report = benchmark(_CONFIG.value, batch=_BATCH.value, prompt_len=_PROMPT_LEN.value,
                     max_new_tokens=_MAX_NEW.value, repeats=_REPEATS.value,
                     variants=_VARIANTS.value)
  text = json.dumps(report, indent=1)
  print(text)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w', encoding='utf-8') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)
