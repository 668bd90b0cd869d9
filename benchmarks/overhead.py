"""The framework's step against two hand-written JAX steps: the project's model, and a
minimal plain-JAX Transformer.

  python -m benchmarks.overhead --config configs/clm.py:tiny --steps 10 --rounds 5

All three train on the same random tokens with the same optax chain (training/optim.py):
- `framework`: train.py's jitted step (objective prepare/loss, non-finite skipping, gradient
  norm, metric sums);
- `project_hand`: the project's Transformer with a twenty-line step: apply, mean next-token
  cross-entropy within documents, value_and_grad, optax update;
- `minimal`: a plain-JAX pre-LN Transformer of the same widths, parameter count and
  initialisation scale, `jax.nn.dot_product_attention(is_causal=True)` (attends across
  documents), full float32 logits, mean next-token cross-entropy over every position.
They are timed in turn, `--steps` steps each per round, so machine load hits all alike; the
medians over `--rounds` (wall and CPU time) and the ratios framework / reference are printed
per layer layout (`--layouts`: scanned, unrolled), with tokens/s, model TFLOP/s
(training/flops.py) and MFU where the device's peak is known (or `--peak_tflops` is given).
CLM only: it is the objective a hand-written step can match.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from benchmarks import random_step
from models.transformer import ModelInputs
from training import flops, optim

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clm.py:tiny', 'A CLM config.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per variant and round.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of the variants in turn; medians reported.')
_LAYOUTS = flags.DEFINE_list('layouts', ['scanned', 'unrolled'],
                             'Layer layouts to time: scanned (lax.scan), unrolled, or both.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s per device for MFU where the '
                           'device is not in training/flops.py (0: MFU only where known).')

VARIANTS = ('framework', 'project_hand', 'minimal')


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


def minimal_params(cfg, seq_len: int, rng: jax.Array) -> dict[str, Any]:
  """A pre-LN Transformer's parameters in plain arrays, shaped and initialised as the project's
  (normal(init_std) matrices and embeddings, zero biases, unit norm scales, tied embedding plus
  a vocabulary bias); layers stacked on a leading axis. Names end as optim.decay_mask expects."""
  d, h, k, f, v = cfg.embed_dim, cfg.num_heads, cfg.resolved_head_dim, cfg.mlp_dim, cfg.vocab_size
  n = cfg.num_layers
  keys = iter(jax.random.split(rng, 8))
  normal = lambda shape: cfg.init_std * jax.random.normal(next(keys), shape, jnp.float32)
  zeros, ones = (lambda shape: jnp.zeros(shape, jnp.float32)), (
      lambda shape: jnp.ones(shape, jnp.float32))
  layers = {
      'attn_norm_scale': ones((n, d)), 'attn_norm_bias': zeros((n, d)),
      'qkv_kernel': normal((n, 3, d, h, k)), 'qkv_bias': zeros((n, 3, h, k)),
      'out_kernel': normal((n, h, k, d)), 'out_bias': zeros((n, d)),
      'mlp_norm_scale': ones((n, d)), 'mlp_norm_bias': zeros((n, d)),
      'wi_kernel': normal((n, d, f)), 'wi_bias': zeros((n, f)),
      'wo_kernel': normal((n, f, d)), 'wo_bias': zeros((n, d)),
  }
  return {'token_embed': normal((v, d)), 'position_embed': normal((seq_len, d)),
          'layers': layers, 'final_norm_scale': ones((d,)), 'final_norm_bias': zeros((d,)),
          'lm_bias': zeros((v,))}


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def minimal_loss(params, tokens, *, eps: float, scan: bool) -> jax.Array:
  """Mean next-token cross-entropy of the minimal model over every position of `tokens`."""

  def layer(x, p):
    y = _layer_norm(x, p['attn_norm_scale'], p['attn_norm_bias'], eps)
    q, k, v = jnp.einsum('btd,cdhk->cbthk', y, p['qkv_kernel']) + p['qkv_bias'][:, None, None]
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x = x + jnp.einsum('bthk,hkd->btd', y, p['out_kernel']) + p['out_bias']
    y = _layer_norm(x, p['mlp_norm_scale'], p['mlp_norm_bias'], eps)
    y = jax.nn.gelu(y @ p['wi_kernel'] + p['wi_bias'])
    return x + y @ p['wo_kernel'] + p['wo_bias'], None

  x = params['token_embed'][tokens] + params['position_embed'][None, :tokens.shape[1]]
  if scan:
    x, _ = jax.lax.scan(layer, x, params['layers'])
  else:
    for i in range(params['layers']['wi_kernel'].shape[0]):
      x, _ = layer(x, jax.tree.map(lambda leaf, i=i: leaf[i], params['layers']))
  x = _layer_norm(x, params['final_norm_scale'], params['final_norm_bias'], eps)
  logits = x[:, :-1] @ params['token_embed'].T + params['lm_bias']
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def minimal_step(tx, *, eps: float, scan: bool):
  """(params, opt_state, tokens) -> (params, opt_state, loss), jitted with donation."""

  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(minimal_loss)(params, tokens, eps=eps, scan=scan)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def parameter_count(tree: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _timed(run: Callable[[], Any], steps: int, cpu: list[float] | None = None) -> float:
  """Wall seconds per step of `steps` calls; their CPU seconds per step appended to `cpu`."""
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    out = run()
  jax.block_until_ready(out)
  if cpu is not None:
    cpu.append((time.process_time() - start_cpu) / steps)
  return (time.perf_counter() - start) / steps


def benchmark(config, steps: int, rounds: int, peak_tflops: float = 0.0) -> dict[str, Any]:
  """Median step times of the three variants under `config`'s layer layout, their ratios,
  tokens/s, model TFLOP/s and MFU."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  if config.objective != 'clm':
    raise ValueError(f'benchmarks.overhead compares CLM steps only; got objective '
                     f'{config.objective!r}: use --config configs/clm.py:PRESET.')
  exp, state, framework, batch_sharding = random_step.compiled_train_step(config)
  cfg = exp.model_config
  tx = optim.make_optimizer(config.optimizer, config.total_steps)
  hand = hand_written_step(exp.model(), tx)
  minimal = minimal_step(tx, eps=cfg.layer_norm_eps, scan=cfg.scan_layers)
  minimal_tree = minimal_params(cfg, config.seq_len, jax.random.key(config.seed))
  # The project's model has the per-layer learned positions of max_len rows; the minimal one
  # as many rows as the window, so counts agree when max_len == seq_len (the tiny preset).
  holder = {'state': state, 'params': jax.tree.map(jnp.copy, state.params),
            'minimal': minimal_tree}
  holder['opt'], holder['minimal_opt'] = tx.init(holder['params']), tx.init(minimal_tree)
  vocab_size = config.model.vocab_size or config.data.vocab_size
  device_batch = jax.device_put(random_step.random_batch(
      exp.data_format, config.batch_size, config.seq_len, vocab_size, np.random.default_rng(0),
      config.data), batch_sharding)

  def run_framework():
    holder['state'], metrics = framework(holder['state'], device_batch)
    return metrics

  def run_project_hand():
    holder['params'], holder['opt'], loss = hand(
        holder['params'], holder['opt'], device_batch['tokens'], device_batch['positions'],
        device_batch['segment_ids'])
    return loss

  def run_minimal():
    holder['minimal'], holder['minimal_opt'], loss = minimal(
        holder['minimal'], holder['minimal_opt'], device_batch['tokens'])
    return loss

  runs = {'framework': run_framework, 'project_hand': run_project_hand, 'minimal': run_minimal}
  times = {name: [] for name in VARIANTS}
  cpu_times: dict[str, list[float]] = {name: [] for name in VARIANTS}
  with jax.set_mesh(exp.mesh), nn.logical_axis_rules(exp.rules):
    first = {name: _timed(run, 1) for name, run in runs.items()}
    # A second untimed call each: a hand-written step compiles again once its donated
    # inputs come back from the first call in the jitted outputs' layout.
    for run in runs.values():
      _timed(run, 1)
    for _ in range(rounds):
      for name, run in runs.items():
        times[name].append(_timed(run, steps, cpu_times[name]))
  step_s = {name: float(np.median(values)) for name, values in times.items()}
  tokens = config.batch_size * config.seq_len
  model_flops = config.batch_size * flops.objective_flops_per_sequence(
      exp.objective, cfg, config.seq_len)
  peak = flops.peak_flops_per_device() or (peak_tflops * 1e12 or None)
  result: dict[str, Any] = {
      'layers': 'scanned' if cfg.scan_layers else 'unrolled',
      'parameters': {'framework': parameter_count(state.params),
                     'minimal': parameter_count(minimal_tree)},
      'model_flops_per_step': model_flops}
  for name in VARIANTS:
    result[name] = {
        'step_ms': 1000 * step_s[name], 'first_step_s': first[name],
        # CPU time of every thread per step: on a CPU shared with other jobs, steadier than
        # the wall clock, which counts the time other jobs held the cores.
        'cpu_ms': 1000 * float(np.median(cpu_times[name])),
        'rounds_ms': [1000 * value for value in times[name]],
        'tokens_per_sec': tokens / step_s[name],
        'tflops_per_sec': model_flops / step_s[name] / 1e12,
        'mfu': None if peak is None else model_flops / step_s[name] / (peak * jax.device_count())}
  result['ratio_to_project_hand'] = step_s['framework'] / step_s['project_hand']
  result['ratio_to_minimal'] = step_s['framework'] / step_s['minimal']
  for name in ('project_hand', 'minimal'):
    result[f'cpu_ratio_to_{name}'] = result['framework']['cpu_ms'] / result[name]['cpu_ms']
  return result


def load_average() -> list[float] | None:
  try:
    return [round(value, 2) for value in __import__('os').getloadavg()]
  except OSError:
    return None


def main(argv):
  del argv
  config = _CONFIG.value
  for layout in _LAYOUTS.value:
    if layout not in ('scanned', 'unrolled'):
      raise app.UsageError(f'--layouts={layout!r}: use scanned, unrolled or both.')
  header = {'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
            'batch': config.batch_size, 'seq_len': config.seq_len,
            'steps': _STEPS.value, 'rounds': _ROUNDS.value}
  for layout in _LAYOUTS.value:
    config.model.scan_layers = layout == 'scanned'
    before = load_average()
    result = benchmark(config, _STEPS.value, _ROUNDS.value, _PEAK.value)
    print(json.dumps({**header, **result, 'load_average': [before, load_average()]}))


if __name__ == '__main__':
  app.run(main)
