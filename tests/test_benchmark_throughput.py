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
