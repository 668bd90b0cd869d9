"""The step benchmark on random tokens: it runs where only jax, flax, optax and ml_collections
are installed (no SentencePiece, tfds or array_record), and its figures agree with each other
and with the FLOP count (no timing is asserted)."""

import json
import os
import subprocess
import sys

import pytest

from configs import clm
from data.vocab import toy_vocab
from training import experiment, flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {'model.num_layers': 1, 'model.embed_dim': 32, 'model.mlp_dim': 64,
             'model.num_heads': 2, 'batch_size': 8, 'seq_len': 16}
# Imports the benchmark must not need: each one raises if anything asks for it.
BLOCKED = ('sentencepiece', 'tensorflow_datasets', 'array_record', 'tensorflow', 'grain')
RUNNER = '''
import runpy, sys
class Blocked:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in {blocked!r}:
      raise ImportError('the benchmark imported ' + name)
sys.meta_path.insert(0, Blocked())
sys.argv = ['throughput'] + {argv!r}
runpy.run_module('benchmarks.throughput', run_name='__main__')
'''


@pytest.mark.slow
def test_throughput_runs_without_the_data_stack_and_its_figures_agree(tmp_path):
  argv = ['--config', 'configs/clm.py:tiny', '--steps', '2', '--json'] + [
      f'--config.{key}={value}' for key, value in OVERRIDES.items()]
  result = subprocess.run(
      [sys.executable, '-c', RUNNER.format(blocked=BLOCKED, argv=argv)], cwd=REPO,
      capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  [line] = [line for line in result.stdout.splitlines() if line.startswith('{')]
  record = json.loads(line)
  assert (record['batch'], record['seq'], record['layers'], record['width']) == (8, 16, 1, 32)
  assert record['steps'] == 2 and record['platform'] == 'cpu'
  assert record['tokens_per_sec'] * record['step_time_ms'] / 1000 == pytest.approx(8 * 16)
  # TFLOP/s is the stated FLOP count per step over the step time.
  config = clm.get_config('tiny')
  for key, value in OVERRIDES.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  exp = experiment.build(config, str(tmp_path), data=False,
                         vocab=toy_vocab(config.model.vocab_size or config.data.vocab_size))
  per_step = 8 * flops.objective_flops_per_sequence(exp.objective, exp.model_config, 16)
  assert (record['tflops_per_sec'] * 1e12 * record['step_time_ms'] / 1000
          == pytest.approx(per_step, rel=1e-6))
  assert record['peak_memory_bytes'] is None  # the CPU allocator keeps no statistics


@pytest.mark.slow
def test_overhead_benchmark_prints_every_field_and_its_figures_agree(tmp_path):
  """One round of benchmarks.overhead on a 1-layer model: the framework, the project-model
  hand step and the minimal plain-JAX step, with ratios, rates and FLOPs that agree."""
  overrides = {**OVERRIDES, 'model.max_len': 16}
  argv = ['--config', 'configs/clm.py:tiny', '--steps', '1', '--rounds', '1', '--layouts',
          'scanned', '--peak_tflops', '2'] + [f'--config.{key}={value}'
                                              for key, value in overrides.items()]
  result = subprocess.run([sys.executable, '-m', 'benchmarks.overhead'] + argv, cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  [line] = [line for line in result.stdout.splitlines() if line.startswith('{')]
  record = json.loads(line)
  assert (record['batch'], record['seq_len'], record['layers']) == (8, 16, 'scanned')
  # The minimal model has exactly the project model's parameter count: 1 layer of width 32,
  # mlp 64, vocabulary 4000 (tied, plus its bias) and 16 learned positions.
  d, f, v = 32, 64, 4000
  layer = 2 * 2 * d + 3 * (d * d + d) + d * d + d + d * f + f + f * d + d
  assert record['parameters'] == {'framework': v * d + v + 16 * d + layer + 2 * d,
                                  'minimal': v * d + v + 16 * d + layer + 2 * d}
  config = clm.get_config('tiny')
  for key, value in overrides.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  exp = experiment.build(config, str(tmp_path), data=False, vocab=toy_vocab(v))
  per_step = 8 * flops.objective_flops_per_sequence(exp.objective, exp.model_config, 16)
  assert record['model_flops_per_step'] == pytest.approx(per_step)
  for name in ('framework', 'project_hand', 'minimal'):
    variant = record[name]
    assert set(variant) == {'step_ms', 'cpu_ms', 'first_step_s', 'rounds_ms', 'tokens_per_sec',
                            'tflops_per_sec', 'mfu'}
    assert variant['rounds_ms'] == [variant['step_ms']]
    assert variant['tokens_per_sec'] * variant['step_ms'] / 1000 == pytest.approx(8 * 16)
    assert variant['tflops_per_sec'] * variant['step_ms'] / 1000 == pytest.approx(per_step / 1e12)
    # --peak_tflops 2 per device, on every device of the mesh
    assert variant['mfu'] == pytest.approx(variant['tflops_per_sec'] / (2 * record['devices']))
  for name in ('project_hand', 'minimal'):
    assert record[f'ratio_to_{name}'] == pytest.approx(
        record['framework']['step_ms'] / record[name]['step_ms'])
    assert record[f'cpu_ratio_to_{name}'] == pytest.approx(
        record['framework']['cpu_ms'] / record[name]['cpu_ms'])
  assert len(record['load_average']) == 2
