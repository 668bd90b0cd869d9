"""A short BERT run (MLM + NSP on sentence pairs from the builtin corpus) through train.run.

NSP needs about a thousand tiny steps at lr 3e-4 before its eval accuracy leaves the majority
rate (README, "Running"), far beyond this test's budget, so the NSP checks here are that its
loss is finite, near ln 2 and evaluated; tests/test_nsp.py shows the head can fit real pairs.
"""

import math

from tests import conftest
import train
from configs import bert


def test_short_bert_run_lowers_mlm_loss_and_reports_nsp(shared_cache, tmp_path, monkeypatch):
  monkeypatch.setenv(conftest.TEST_CACHE_ENV, shared_cache)
  config = conftest.small_run_config(
      bert.get_config('tiny'), shared_cache, total_steps=100, batch_size=32, log_every=20,
      eval_every=100, eval_steps=4, checkpoint_every=100, **{'mesh.data': -1})
  result = train.run(config, str(tmp_path))
  evals, trains = conftest.run_records(str(tmp_path))
  assert [r['step'] for r in evals] == [0, 100]
  assert evals[-1]['mlm_loss'] < evals[0]['mlm_loss'] - 1.0
  assert trains[-1]['mlm_loss'] < trains[0]['mlm_loss']
  assert evals[-1]['mlm_accuracy'] > 0.05
  for record in evals + trains:
    assert math.isfinite(record['nsp_loss']) and abs(record['nsp_loss'] - math.log(2)) < 0.05
    assert 0.0 <= record['nsp_accuracy'] <= 1.0
  assert result['train_loss'] == trains[-1]['loss']
