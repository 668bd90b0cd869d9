"""benchmarks/grain_pipeline.py (what benchmarks/grain_reader.py measures) builds the same
stream in grain as the project's reader: the same batches in document order (sharded), the
same tokens over a shuffled pass, and an exact resume from grain's JSON state. Skipped where grain is not installed (it is no dependency)."""

from __future__ import annotations

import collections
import json

import ml_collections
import numpy as np
import pytest

pytest.importorskip('grain')

# pylint: disable=wrong-import-position
from benchmarks import grain_pipeline as grain_reader
from data import formats
from data import tokenizer as tokenizer_lib
from data.config import data_config
from tests.helpers import make_documents

SEQ_LEN = 48
BATCH = 4


@pytest.fixture(scope='module')
def documents():
  return make_documents(40)


@pytest.fixture(scope='module')
def tokenizer(shared_cache, tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)
    return tokenizer_lib.load_or_train(data_config(320), str(tmp_path_factory.mktemp('tok')),
                                       make_documents(200, seed=9))


def _config():
  return ml_collections.ConfigDict({'seq_len': SEQ_LEN, 'seed': 0, 'data': data_config(320)})


def _grain(documents, tokenizer, data_format, **kwargs):
  return grain_reader.grain_iterator(_config(), data_format, documents, tokenizer,
                                     batch_size=BATCH, **kwargs)


def _project(documents, tokenizer, data_format, **kwargs):
  return grain_reader.project_iterator(_config(), data_format, documents, tokenizer,
                                       batch_size=BATCH, **kwargs)


@pytest.mark.parametrize('data_format', formats.names())
def test_document_order_gives_the_project_batches(documents, tokenizer, data_format):
  shard = dict(shuffle=False, process_index=1, process_count=3)
  ours = _project(documents, tokenizer, data_format, **shard)
  theirs = _grain(documents, tokenizer, data_format, **shard)
  for _ in range(12):  # several passes over the 13 documents of the shard
    want, got = next(ours), next(theirs)
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize('encode_batch', [0, 8])
def test_a_shuffled_pass_packs_the_same_tokens(documents, tokenizer, encode_batch):
  def tokens(batches):
    counts = collections.Counter()
    for batch in batches:
      counts.update(batch['tokens'][batch['segment_ids'] > 0].tolist())
    return counts

  ours = _project(documents, tokenizer, 'packed', repeat=False)
  theirs = _grain(documents, tokenizer, 'packed', repeat=False, encode_batch=encode_batch)
  assert tokens(theirs) == tokens(ours)
  ours, theirs = (_project(documents, tokenizer, 'packed'),
                  _grain(documents, tokenizer, 'packed', encode_batch=encode_batch))
  assert not grain_reader.same_batch(next(ours), next(theirs))  # grain's order is its own


@pytest.mark.parametrize('data_format', formats.names())
def test_grain_state_resumes_exactly(documents, tokenizer, data_format):
  original = _grain(documents, tokenizer, data_format)
  for _ in range(7):
    next(original)
  state = json.loads(json.dumps(original.get_state()))
  expected = [next(original) for _ in range(20)]  # past the end of the first pass
  restored = _grain(documents, tokenizer, data_format)
  restored.set_state(state)
  assert all(grain_reader.same_batch(next(restored), want) for want in expected)
