"""Fine-tuning throughput per strategy: examples/s of the jitted step on random tokens.

  python -m benchmarks.finetune --config configs/clm.py:tiny --batch_size 32 --seq_len 128
  python -m benchmarks.finetune --config configs/bert.py:bert_base --strategies full,lora

The backbone is freshly initialised with the pretraining config's model (its vocabulary at
config.data.vocab_size); the head classifies into two labels. One compile step, then `--steps`
timed steps. Frozen parameters still run forward; what a strategy saves is the backward pass
into them and their optimizer state.
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from downstream import finetune, heads, strategies
from downstream.model import DownstreamModel
from models.config import ModelConfig
from models.transformer import ModelInputs, Transformer
from objectives import registry

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clm.py:tiny',
                                          'Pretraining config whose model is fine-tuned.')
_STRATEGIES = flags.DEFINE_list('strategies', list(strategies.NAMES), 'Strategies to time.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Examples per step.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 128, 'Tokens per example.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after one compile step).')


def model_config_of(config) -> tuple[ModelConfig, bool]:
  """The pretraining config's model and whether its objective is causal (clm)."""
  from data.vocab import toy_vocab  # pylint: disable=import-outside-toplevel

  vocab_size = int(config.data.vocab_size)
  objective = registry.build(config.objective, lambda name: config.get(name, {}),
                             vocab=toy_vocab(vocab_size), seq_len=config.seq_len)
  values = dict(config.model)
  values['vocab_size'] = vocab_size
  causal = 'clm' in (config.objective if isinstance(config.objective, str) else dict(config.objective))
  return ModelConfig.from_config(values, **objective.model_overrides()), causal


def benchmark(model_config: ModelConfig, causal: bool, names, batch_size: int, seq_len: int,
              steps: int) -> list[dict[str, float]]:
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(7, model_config.vocab_size, (batch_size, seq_len), np.int32),
           'positions': np.broadcast_to(np.arange(seq_len, dtype=np.int32),
                                        (batch_size, seq_len)).copy(),
           'segment_ids': np.ones((batch_size, seq_len), np.int32),
           'token_types': np.zeros((batch_size, seq_len), np.int32),
           'label': rng.integers(0, 2, (batch_size,), np.int32)}
  inputs = ModelInputs(tokens=jnp.asarray(batch['tokens'][:2]),
                       positions=jnp.asarray(batch['positions'][:2]),
                       segment_ids=jnp.asarray(batch['segment_ids'][:2]),
                       token_types=jnp.asarray(batch['token_types'][:2])
                       if model_config.num_token_types else None, causal=causal)
  backbone = jax.jit(lambda key: nn.unbox(Transformer(model_config).init(
      {'params': key, 'dropout': key}, inputs)['params']))(jax.random.key(0))
  rows = []
  for name in names:
    strategy = strategies.Strategy(name)
    model = DownstreamModel(model_config, 'classification', 2, causal,
                            heads.default_pooling(causal), 0.1, strategy.lora_scale)
    params = {'backbone': backbone, 'head': model.init_head(jax.random.key(1), batch)}
    params = strategy.add_params(jax.random.key(2), params,
                                 np.arange(7, model_config.vocab_size, dtype=np.int32))
    labels = strategy.labels(params)
    tx = strategies.make_optimizer(labels, lambda step: 1e-4, weight_decay=0.01,
                                   grad_clip_norm=1.0)
    opt_state = tx.init(params)
    step_fn = finetune.make_train_step(finetune.task_loss(model), tx, labels, 0)
    params, opt_state, loss = step_fn(params, opt_state, batch, 0)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for step in range(steps):
      params, opt_state, loss = step_fn(params, opt_state, batch, step + 1)
    jax.block_until_ready(loss)
    seconds = (time.perf_counter() - start) / steps
    rows.append({'strategy': name, 'trained_params': strategies.trained_count(params, labels),
                 'examples_per_sec': batch_size / seconds, 'step_ms': seconds * 1e3})
  return rows


def main(argv):
  del argv
  model_config, causal = model_config_of(_CONFIG.value)
  prompt = max(strategies.Strategy('prompt_tuning').prompt_length, 0)
  if model_config.position == 'learned' and _SEQ_LEN.value + prompt > model_config.max_len:
    raise app.UsageError(f'--seq_len {_SEQ_LEN.value} plus {prompt} soft-prompt vectors exceeds '
                         f'the model\'s {model_config.max_len} positions.')
  print(f'{jax.devices()[0].device_kind} | batch {_BATCH.value} x {_SEQ_LEN.value} | '
        f'{"causal" if causal else "bidirectional"}')
  print('| strategy | trained params | examples/s | step ms |')
  print('|---|---|---|---|')
  for row in benchmark(model_config, causal, _STRATEGIES.value, _BATCH.value, _SEQ_LEN.value,
                       _STEPS.value):
    print(f'| {row["strategy"]} | {row["trained_params"]:,} | {row["examples_per_sec"]:.1f} | '
          f'{row["step_ms"]:.1f} |')


if __name__ == '__main__':
  app.run(main)
