"""A BERT run (MLM + NSP on sentence pairs from the full builtin corpus) through train.py, long
enough for NSP to leave chance on held-out pairs.

NSP sits on a plateau for its first ~30k pairs at tiny sizes (README, "Running"), so this is the
suite's one long run: 900 steps of 64 pairs with a narrow pre-LN model, the cheapest setting
measured to leave the plateau. It runs as a subprocess with XLA's default optimisation (the
suite's fast-compile flags would double the step time) on a single CPU device.
"""

import os
import subprocess
import sys

from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 900
EVAL_STEPS = 16  # x 64 = 1024 validation pairs: chance accuracy has a standard error of 0.016
SETTINGS = {
    'total_steps': STEPS, 'batch_size': 64, 'seq_len': 64, 'log_every': 100,
    'eval_every': STEPS, 'eval_steps': EVAL_STEPS, 'checkpoint_every': STEPS,
    'optimizer.learning_rate': 1e-3, 'optimizer.end_learning_rate_ratio': 1.0,
    'model.norm': 'pre', 'model.max_len': 64,
    'model.embed_dim': 64, 'model.num_heads': 2, 'model.mlp_dim': 256,
}


def test_bert_run_lowers_both_losses_and_nsp_beats_chance(tmp_path):
  workdir = str(tmp_path / 'run')
  env = dict(os.environ, PRETRAINING_OBJECTIVES_CACHE=str(tmp_path / 'cache'),
             XLA_FLAGS='', JAX_PLATFORMS='cpu')
  done = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/bert.py:tiny', '--workdir', workdir] +
      [f'--config.{key}={value}' for key, value in SETTINGS.items()],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  evals, trains = conftest.run_records(workdir)
  first, last = evals[0], evals[-1]
  assert [first['step'], last['step']] == [0, STEPS]

  # Both losses fall, on held-out data and in training.
  assert last['mlm_loss'] < first['mlm_loss'] - 1.5
  assert trains[-1]['mlm_loss'] < trains[0]['mlm_loss']
  assert last['mlm_accuracy'] > 0.05
  assert last['nsp_loss'] < first['nsp_loss'] - 0.005
  assert trains[-1]['nsp_loss'] < trains[0]['nsp_loss'] - 0.02

  # NSP beats chance on 1024 validation pairs: the untrained model predicts one class, so its
  # accuracy and its complement bound the majority rate (about 0.51 here); the trained one
  # is 2.5 standard errors above that (p < 0.01 by chance).
  majority = max(first['nsp_accuracy'], 1.0 - first['nsp_accuracy'])
  assert majority < 0.55
  assert last['nsp_accuracy'] > majority + 0.04
  assert trains[-1]['nsp_accuracy'] > 0.55
