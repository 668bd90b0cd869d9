"""Batched reads of upcoming documents: the same documents, order and resume position as
reading one record per document, and a record source that maps indices across files."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import formats, pipeline, reader as reader_lib
from data.sources import store
from data.sources.documents import DocumentSource
from data.tokens import EncodedDocuments

from tests import helpers

WORDS = ('lantern harbor meadow copper violin thunder pebble saddle mirror canyon velvet '
         'orchard compass ember glacier'.split())
SEQ_LEN = 48
DOCUMENTS = 230  # a few prefetch windows per shard of 3, with a partial one at each end


def make_documents(count: int, seed: int) -> list[str]:
  """Documents of 1-6 sentences of 2-8 words each (some single-sentence ones, which pairs
  skip)."""
  rng = np.random.default_rng(seed)
  return [' '.join(' '.join(WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(2, 9)))
                   .capitalize() + '.' for _ in range(rng.integers(1, 7)))
          for _ in range(count)]


class OneAtATime:
  """Documents with no batched read: every document is its own record read."""

  def __init__(self, documents):
    self._documents = documents
    self.name = documents.name
    self.identity = documents.identity

  def __len__(self) -> int:
    return len(self._documents)

  def __getitem__(self, index: int) -> str:
    return self._documents[index]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """(config, train documents, tokenizer) of a text corpus built into array_record."""
  return helpers.text_corpus(tmp_path_factory.mktemp('batched_reads'), make_documents,
                             train=DOCUMENTS, validation=8, vocab_size=320, max_chars=100_000,
                             tokenizer_documents=300)


@pytest.fixture(autouse=True)
def small_prefetch_window(monkeypatch):
  """Windows of 32 documents, so a shard of 76 spans several (the default is 256)."""
  monkeypatch.setattr(reader_lib, 'PREFETCH_DOCUMENTS', 32)


@pytest.fixture
def record_reads(monkeypatch):
  """The sizes of the record source's reads, in order, as they happen."""
  sizes = []
  read = store.RecordSource.__getitems__
  monkeypatch.setattr(store.RecordSource, '__getitems__',
                      lambda self, indices: (sizes.append(len(indices)), read(self, indices))[1])
  return sizes


def _iterator(view, tokenizer, data_format: str, *, process_index: int = 1, seed: int = 4):
  fmt = formats.get(data_format)(tokenizer.vocab, SEQ_LEN, {'short_seq_prob': 0.1})
  return reader_lib.ExampleIterator(fmt, view, local_batch_size=4, process_index=process_index,
                                    process_count=3, seed=seed, shuffle=True)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


def test_document_source_reads_many_in_order(corpus):
  _, documents, _ = corpus
  indices = [int(i) for i in np.random.default_rng(0).permutation(len(documents))[:70]]
  assert documents.read(indices + [-1]) == [documents[i] for i in indices] + [documents[-1]]
  assert documents.read([]) == []
  with pytest.raises(IndexError):
    documents.read([0, len(documents)])


@pytest.mark.parametrize('data_format', formats.names())
@pytest.mark.parametrize('process_index, seed', [(0, 0), (2, 7)])
def test_batched_reads_yield_the_documents_of_single_reads(corpus, record_reads, data_format,
                                                           process_index, seed):
  """A sharded, shuffled stream over several epochs is the same with batched reads (and with
  batched or single encoding) as with one record read per document."""
  _, documents, tokenizer = corpus
  views = {'single': EncodedDocuments(OneAtATime(documents), tokenizer.encode),
           'batched_reads': EncodedDocuments(documents, tokenizer.encode),
           'batched': pipeline.tokenized_view(documents, tokenizer)}
  streams, reads = {}, {}
  for name, view in views.items():
    iterator = _iterator(view, tokenizer, data_format, process_index=process_index, seed=seed)
    read_log, add = [], iterator.builder.add
    iterator.builder.add = lambda index, *args, log=read_log, add=add: (log.append(index),
                                                                        add(index, *args))[1]
    del record_reads[:]
    streams[name] = [next(iterator) for _ in range(60)]
    reads[name] = (read_log, dict(iterator.stats), iterator.get_state())
    epochs = iterator.reader.epoch + 1
    assert epochs >= 2
    if name == 'single':
      assert set(record_reads) == {1}
    else:  # the shard's documents in windows, a call each (NSP's random ones singly)
      windows = [size for size in record_reads if size > 1]
      assert max(windows) == reader_lib.PREFETCH_DOCUMENTS
      shard = len(iterator.reader.shard)
      assert len(windows) <= epochs * -(-shard // reader_lib.PREFETCH_DOCUMENTS)
      assert sum(windows) >= len(read_log) - epochs  # an epoch's last window may be one
  for name in ('batched_reads', 'batched'):
    assert reads[name] == reads['single']
    for got, want in zip(streams[name], streams['single']):
      _assert_same(got, want)


@pytest.mark.parametrize('data_format', formats.names())
def test_resume_mid_prefetch_window_gives_the_same_next_batch(corpus, data_format):
  _, documents, tokenizer = corpus
  make = lambda: _iterator(pipeline.tokenized_view(documents, tokenizer), tokenizer, data_format)
  original = make()
  for _ in range(3):
    next(original)
  # Documents read ahead of the position are held: a resume must not depend on them.
  assert original.reader.index % reader_lib.PREFETCH_DOCUMENTS
  assert not original.documents.wants_prefetch()
  state = json.loads(json.dumps(original.get_state()))
  expected = [next(original) for _ in range(40)]  # past the window and the epoch
  restored = make()
  restored.set_state(state)
  rewound = original  # rewound in place, as a prefetching feed does, holding a stale window
  rewound.set_state(state)
  for want in expected:
    _assert_same(next(restored), want)
  for want in expected:
    _assert_same(next(rewound), want)
  assert restored.get_state() == rewound.get_state()


def test_record_source_maps_indices_across_files(corpus, record_reads):
  """Two slices of the split's file, as tfds gives split slices and shards, read in one call
  per file and put back in the order asked."""
  config, documents, _ = corpus
  [path] = glob.glob(os.path.join(config.data_dir, '**', '*train.array_record*'), recursive=True)
  instruction = tfds.core.utils.shard_utils.FileInstruction
  source = store.RecordSource(
      [instruction(path, skip=3, take=10, examples_in_shard=DOCUMENTS),
       instruction(path, skip=200, take=25, examples_in_shard=DOCUMENTS)],
      tfds.features.FeaturesDict({'text': tfds.features.Text()}))
  expected = [documents[i] for i in list(range(3, 13)) + list(range(200, 225))]
  sliced = DocumentSource(source, 'text', 'two slices')
  assert len(sliced) == len(expected)
  order = [int(i) for i in np.random.default_rng(1).permutation(len(expected))]
  del record_reads[:]
  assert sliced.read(order) == [expected[i] for i in order]
  assert record_reads == [len(order)]
  assert [sliced[i] for i in (0, 9, 10, 34)] == [expected[i] for i in (0, 9, 10, 34)]
  with pytest.raises(IndexError):
    source[len(expected)]


def test_text_field_read_straight_from_the_example_equals_tfds_decoding(tmp_path):
  """A plain Text field is parsed from the stored example without tfds' decoding, and gives
  the same bytes for every record (non-ASCII, empty, multi-line); another field, or none, is
  decoded by tfds."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  def feature_dict():
    return {'text': tfds.features.Text(), 'title': tfds.features.Text(),
            'year': tfds.features.Scalar(np.int32)}
  features = tfds.features.FeaturesDict(feature_dict())
  texts = ['naïve café — 日本語 😀', '', 'two\n\nparagraphs\r\n', 'x' * 5000, 'plain']
  path = str(tmp_path / 'mixed.array_record-00000-of-00001')
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for year, text in enumerate(texts):
    writer.write(features.serialize_example({'text': text, 'title': text[::-1], 'year': year}))
  writer.close()
  instruction = tfds.core.utils.shard_utils.FileInstruction(
      path, skip=0, take=len(texts), examples_in_shard=len(texts))
  by_tfds = store.RecordSource([instruction], features).__getitems__(range(len(texts)))
  assert [example['text'] for example in by_tfds] == [text.encode() for text in texts]

  class NoDecoding(tfds.features.FeaturesDict):
    def deserialize_example_np(self, *args, **kwargs):
      raise AssertionError('the text field should not need tfds decoding')

  direct = store.RecordSource([instruction], NoDecoding(feature_dict()), 'text')
  assert direct.__getitems__(range(len(texts))) == [{'text': e['text']} for e in by_tfds]
  assert (DocumentSource(direct, 'text', 'mixed').read([4, 0, 1])
          == [texts[4], texts[0], texts[1]])
  # A field that is not plain text (and a missing one) is decoded whole, by tfds.
  for field in ('year', 'absent'):
    whole = store.RecordSource([instruction], features, field).__getitems__(range(len(texts)))
    assert [int(example['year']) for example in whole] == list(range(len(texts)))
    assert [example['title'] for example in whole] == [e['title'] for e in by_tfds]
