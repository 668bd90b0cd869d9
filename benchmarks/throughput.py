"""Training-step throughput per objective on random tokens: tokens/s, step time and MFU.

  python -m benchmarks.throughput --config configs/clm.py:gpt2_small --steps 20
  python -m benchmarks.throughput --config configs/bert.py:bert_base --config.batch_size=64
  python -m benchmarks.throughput --config configs/clm.py:gpt2_small --json  # one JSON line

Random tokens and no host pipeline: this measures the jitted step alone. The FLOP count
includes only the logits each objective really computes; MFU uses the datasheet bf16 peak.
Peak device memory (bytes the allocator held at most, over the whole process) is reported
where the backend tracks it (GPU, TPU), not on CPU.
"""

from __future__ import annotations

import json
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from benchmarks.random_step import compiled_train_step, random_batch
from training import flops, loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/clm.py:tiny', 'Config to benchmark.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after one compile step).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line (with the run\'s shape, peak '
                          'device memory and versions) instead of the text line.')


def benchmark(config, steps: int) -> dict[str, float]:
  """Compiles the run's train step through the shared assembly and times it on random tokens."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  vocab_size = config.model.vocab_size or config.data.vocab_size
  exp, state, train_step, batch_sharding = compiled_train_step(config)
  objective, mesh, rules, model_config = exp.objective, exp.mesh, exp.rules, exp.model_config
  rng = np.random.default_rng(0)
  batches = [jax.device_put(random_batch(exp.data_format, config.batch_size, config.seq_len,
                                         vocab_size, rng, config.data), batch_sharding)
             for _ in range(2)]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    start = time.perf_counter()
    state, metrics = train_step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
      state, metrics = train_step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    step_time = (time.perf_counter() - start) / steps

  flops_per_step = config.batch_size * flops.objective_flops_per_sequence(
      objective, model_config, config.seq_len)
  peak = flops.peak_flops_per_device()
  result = {'tokens_per_sec': config.batch_size * config.seq_len / step_time,
            'step_time_ms': 1000 * step_time, 'compile_s': compile_seconds,
            'tflops_per_sec': flops_per_step / step_time / 1e12,
            'params_m': sum(x.size for x in jax.tree.leaves(state.params)) / 1e6}
  if peak:
    result['mfu'] = flops_per_step / step_time / (peak * jax.device_count())
  return result


def peak_memory_bytes(device: jax.Device | None = None) -> int | None:
  """The allocator's peak bytes in use on `device`, or None where it keeps no statistics."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-exception-caught
    return None
  peak = (stats or {}).get('peak_bytes_in_use')
  return None if peak is None else int(peak)


def json_record(config, result: dict[str, float], steps: int) -> dict:
  """`result` with the run's shape, device, peak memory and versions, for one JSON line."""
  import flax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  peak = peak_memory_bytes(device)
  return {'impl': 'ours', 'framework': 'jax',
          'objective': loop.describe_objective(config.objective),
          'batch': config.batch_size, 'seq': config.seq_len,
          'vocab': config.model.vocab_size or config.data.vocab_size,
          'layers': config.model.num_layers, 'width': config.model.embed_dim,
          'dtype': config.model.dtype, 'remat': config.model.remat, 'steps': steps, **result,
          'peak_memory_bytes': peak,
          'peak_memory_gib': None if peak is None else peak / 2**30,
          'device': device.device_kind, 'device_count': jax.device_count(),
          'platform': device.platform,
          'versions': {'jax': jax.__version__, 'flax': flax.__version__,
                       'python': platform.python_version()}}


def main(argv, objective: str | None = None):
  del argv
  config = _CONFIG.value
  from configs import base  # pylint: disable=import-outside-toplevel
  base.apply_objective(config, objective)  # e.g. --config.objective=mlm on configs/bert.py
  result = benchmark(config, _STEPS.value)
  if _JSON.value:
    print(json.dumps(json_record(config, result, _STEPS.value)), flush=True)
    return
  device = jax.devices()[0]
  peak = peak_memory_bytes(device)
  if peak is not None:
    result['peak_memory_gib'] = peak / 2**30
  print(f'{loop.describe_objective(config.objective)} | {device.device_kind} x{jax.device_count()} | batch '
        f'{config.batch_size} x seq {config.seq_len} | ' +
        ' | '.join(f'{k} {v:,.3f}' for k, v in result.items()))


if __name__ == '__main__':
  from tools import cli  # pylint: disable=g-import-not-at-top
  _argv, _objective = cli.take_objective(sys.argv)
  app.run(lambda argv: main(argv, _objective), argv=_argv)
