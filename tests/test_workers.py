"""config.data.workers: text read and tokenized ahead in a background thread gives the same
batches, statistics and saved positions as one worker, per format and process shard, and a
position saved under any worker count restores the same next batches under any other."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import base
from data import formats, pipeline, reader as reader_lib
from data.tokens import AheadEncodedDocuments, EncodedDocuments
from training import checks

from tests import helpers

WORDS = 'amber falcon river quartz meadow lantern cobalt willow ember saddle'.split()
SEQ_LEN = 40
DOCUMENTS = 150  # a shard of 50 spans a few windows of 16


def make_documents(count: int, seed: int) -> list[str]:
  """Documents of 1-5 sentences of 2-7 words (single-sentence ones are skipped by pairs)."""
  rng = np.random.default_rng(seed)
  return [' '.join(' '.join(WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(2, 8)))
                   .capitalize() + '.' for _ in range(rng.integers(1, 6)))
          for _ in range(count)]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """(train documents from array_record, tokenizer) of a small text corpus."""
  _, documents, tokenizer = helpers.text_corpus(
      tmp_path_factory.mktemp('workers'), make_documents, train=DOCUMENTS, validation=6,
      vocab_size=300, max_chars=50_000, tokenizer_documents=200)
  return documents, tokenizer


@pytest.fixture(autouse=True)
def small_windows(monkeypatch):
  monkeypatch.setattr(reader_lib, 'PREFETCH_DOCUMENTS', 16)


def _iterator(corpus, data_format: str, workers: int):
  documents, tokenizer = corpus
  fmt = formats.get(data_format)(tokenizer.vocab, SEQ_LEN, {'short_seq_prob': 0.1})
  view = pipeline.tokenized_view(documents, tokenizer, workers, fmt.unit)
  return reader_lib.ExampleIterator(fmt, view, local_batch_size=3, process_index=1,
                                    process_count=3, seed=5, shuffle=True)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize('data_format', formats.names())
def test_worker_count_changes_no_batch_nor_position(corpus, data_format):
  """Two epochs of shard 1 of 3: the same batches, stats and states for 1, 2 and 3 workers."""
  runs, count = {}, None
  for workers in (1, 2, 3):
    iterator = _iterator(corpus, data_format, workers)
    assert isinstance(iterator.documents,
                      AheadEncodedDocuments if workers > 1 else EncodedDocuments)
    batches = [next(iterator) for _ in range(count or 10)]
    while count is None and iterator.reader.epoch < 1:  # into the second epoch
      batches.append(next(iterator))
    count = len(batches)
    runs[workers] = (batches, iterator.get_state(), dict(iterator.stats))
  for workers in (2, 3):
    for got, want in zip(runs[workers][0], runs[1][0]):
      _assert_same(got, want)
    assert runs[workers][1:] == runs[1][1:]


@pytest.mark.parametrize('data_format', formats.names())
def test_a_position_saved_under_any_worker_count_restores_under_any_other(corpus, data_format):
  saved = _iterator(corpus, data_format, workers=2)
  next(saved)
  # On to a position mid-window, with the next window already submitted to the background.
  while not (saved.reader.index % reader_lib.PREFETCH_DOCUMENTS
             and saved.documents._futures):  # pylint: disable=protected-access
    next(saved)
  state = json.loads(json.dumps(saved.get_state()))
  expected = [next(saved) for _ in range(20)]
  for workers in (1, 2, 3):
    restored = _iterator(corpus, data_format, workers)
    restored.set_state(state)
    for want in expected:
      _assert_same(next(restored), want)
  saved.set_state(state)  # rewound in place, as the prefetching feed does, holding stale windows
  for want in expected:
    _assert_same(next(saved), want)


def test_sentences_read_ahead_are_the_ones_encoded_one_at_a_time(corpus):
  """The background thread encodes every sentence of a window in one call; the ids equal
  one encode call per sentence."""
  documents, tokenizer = corpus
  ahead = pipeline.tokenized_view(documents, tokenizer, 2, 'sentences')
  plain = EncodedDocuments(documents, tokenizer.encode)
  ahead.prefetch(list(range(10, 42)))  # this window now, the next one in the background
  for index in range(10, 42):
    want = [np.asarray(ids) for ids in plain.sentences(index)]
    got = ahead.sentences(index)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)
  assert ahead.wants_prefetch()


@pytest.mark.parametrize('workers', [0, -1, 1.5, True, '2'])
def test_bad_worker_count_is_a_one_line_error(corpus, workers):
  documents, tokenizer = corpus
  with pytest.raises(ValueError, match=r'^config\.data\.workers must be a positive integer'):
    pipeline.tokenized_view(documents, tokenizer, workers)


def test_config_check_names_the_setting():
  config = base.get_config('clm', 'tiny')
  config.data.workers = 0
  with pytest.raises(ValueError, match=r'^config\.data\.workers must be >= 1, got 0\.$'):
    checks.check_ranges(config)
