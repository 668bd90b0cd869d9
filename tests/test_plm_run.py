"""A short permutation-LM run on the builtin corpus through train.run: the loss falls."""

import math

import pytest

from tests import helpers
import train
from configs import plm


@pytest.mark.slow
def test_short_plm_run_lowers_the_loss(shared_cache, tmp_path, monkeypatch):
  monkeypatch.setenv(helpers.TEST_CACHE_ENV, shared_cache)
  config = helpers.small_run_config(
      plm.get_config('tiny'), shared_cache, total_steps=80, batch_size=16, log_every=20,
      eval_every=80, eval_steps=4, checkpoint_every=80, **{'mesh.data': -1})
  result = train.run(config, str(tmp_path))
  evals, trains = helpers.run_records(str(tmp_path))
  assert [r['step'] for r in evals] == [0, 80]
  assert all(math.isfinite(r['loss']) for r in evals + trains)
  assert evals[-1]['loss'] < evals[0]['loss'] - 1.0  # from about ln(600) = 6.4
  assert trains[-1]['loss'] < trains[0]['loss']
  # round(64 / 6) = 11 targets in each of the 16 windows of a step, none dropped.
  assert all(r['plm_predictions'] == 11 * 16 for r in evals + trains)
  assert result['train_loss'] == trains[-1]['loss']
