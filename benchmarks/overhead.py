"""The framework's step against a minimal hand-written JAX step of the same model.

  python -m benchmarks.overhead --config configs/clm.py:tiny --steps 20

Both steps train the same Transformer (same config, parameters and AdamW) with causal-LM
cross-entropy on the same random tokens; the hand-written one is what a user would write in
twenty lines: apply, mean cross-entropy over next tokens, value_and_grad, optax update. The
framework's adds the objective's prepare/loss, non-finite step skipping, gradient norm and
metric sums. The two are timed alternately, so machine load hits both alike; the ratio is
the framework's overhead. CLM only: it is the objective a hand-written step can match exactly.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from benchmarks import random_step
from models.transformer import ModelInputs
from training import optim

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clm.py:tiny', 'A CLM config.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per variant (after one compile step).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds; the median is reported.')


def hand_written_step(model, tx):
  """(params, opt_state, tokens, positions, segments) -> (params, opt_state, loss)."""

  def loss_fn(params, tokens, positions, segments):
    inputs = ModelInputs(tokens=tokens, positions=positions, segment_ids=segments, causal=True)
    logits = model.apply({'params': params}, inputs).logits[:, :-1]
    weights = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1)

  def step(params, opt_state, tokens, positions, segments):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, positions, segments)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _timed(run, steps: int) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    out = run()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def benchmark(config, steps: int, rounds: int) -> dict[str, float]:
  """Median step times of the framework's and the hand-written step, and their ratio."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  if config.objective != 'clm':
    raise ValueError(f'benchmarks.overhead compares CLM steps only; got objective '
                     f'{config.objective!r}: use --config configs/clm.py:PRESET.')
  exp, state, framework, batch_sharding = random_step.compiled_train_step(config)
  tx = optim.make_optimizer(config.optimizer, config.total_steps)
  hand = hand_written_step(exp.model(), tx)
  params = jax.tree.map(jnp.copy, state.params)
  opt_state = tx.init(params)
  vocab_size = config.model.vocab_size or config.data.vocab_size
  device_batch = jax.device_put(random_step.random_batch(
      exp.data_format, config.batch_size, config.seq_len, vocab_size, np.random.default_rng(0),
      config.data), batch_sharding)

  times = {'framework': [], 'hand_written': []}
  holder = {'state': state, 'params': params, 'opt': opt_state}

  def run_framework():
    holder['state'], metrics = framework(holder['state'], device_batch)
    return metrics

  def run_hand():
    holder['params'], holder['opt'], loss = hand(
        holder['params'], holder['opt'], device_batch['tokens'], device_batch['positions'],
        device_batch['segment_ids'])
    return loss

  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
    compile_times = {'framework': _timed(run_framework, 1), 'hand_written': _timed(run_hand, 1)}
    # A second untimed call each: the hand-written step compiles again once its donated
    # inputs come back from the first call in the jitted outputs' layout.
    _timed(run_framework, 1), _timed(run_hand, 1)
    for _ in range(rounds):
      times['framework'].append(_timed(run_framework, steps))
      times['hand_written'].append(_timed(run_hand, steps))
  result = {f'{name}_step_ms': 1000 * float(np.median(values)) for name, values in times.items()}
  result.update({f'{name}_first_step_s': value for name, value in compile_times.items()})
  result['overhead'] = result['framework_step_ms'] / result['hand_written_step_ms']
  result['tokens_per_sec'] = config.batch_size * config.seq_len / result['framework_step_ms'] * 1e3
  return result


def main(argv):
  del argv
  config = _CONFIG.value
  result = benchmark(config, _STEPS.value, _ROUNDS.value)
  print(json.dumps({'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
                    'batch': config.batch_size, 'seq_len': config.seq_len,
                    'scan_layers': config.model.scan_layers, **result}, indent=1))


if __name__ == '__main__':
  app.run(main)
