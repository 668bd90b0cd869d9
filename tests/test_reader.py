"""The shared reader over every source and format: exact resume, sharding, fingerprints,
the exact evaluation pass, pre-tokenized shards, one document order for all formats, and
pair construction that is linear in the corpus."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import formats, pipeline, pretokenize, reader as reader_lib
from data import tokenizer as tokenizer_lib
from data.config import data_config
from data.tokens import EncodedDocuments
from tests import helpers
from tests.helpers import make_documents

FORMATS = formats.names()
SOURCES = ('builtin', 'text', 'tfds', 'pretokenized')
SEQ_LEN = 48


class TinyCorpus(tfds.core.GeneratorBasedBuilder):
  """A registered tfds dataset made offline, for the tfds source."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(make_documents(30, seed=3)),
            'validation': self._generate_examples(make_documents(6, seed=4))}

  def _generate_examples(self, texts):
    for index, text in enumerate(texts):
      yield index, {'text': text}


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp('reader_corpus')
  (folder / 'train.txt').write_text('\n\n'.join(make_documents(40)) + '\n')
  (folder / 'valid.txt').write_text('\n\n'.join(make_documents(9, seed=1)) + '\n')
  return folder


@pytest.fixture(scope='module')
def tokenizer(corpus_dir, shared_cache):
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)
    return tokenizer_lib.load_or_train(_config(corpus_dir, shared_cache, 'text'),
                                       str(corpus_dir / 'tok'), make_documents(200, seed=9))


def _config(corpus_dir, cache, source: str):
  config = data_config(320)
  config.update(source=source, data_dir=f'{cache}/tfds', builtin_max_files=12,
                train_files=str(corpus_dir / 'train.txt'),
                validation_files=str(corpus_dir / 'valid.txt'), tfds_name='tiny_corpus',
                pretokenized_dir=str(corpus_dir / 'pretok'), tokenizer_max_chars=200_000)
  return config


@pytest.fixture(scope='module')
def documents(corpus_dir, shared_cache, tokenizer):
  """source name -> its train documents (the pretokenized ones made from the text source)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)
    loaded = {}
    for source in SOURCES:
      config = _config(corpus_dir, shared_cache, source)
      if source == 'pretokenized':
        pretokenize.write(_config(corpus_dir, shared_cache, 'text'), config.pretokenized_dir,
                          ['train', 'validation'], 3, tokenizer, pipeline.load_documents)
      loaded[source] = pipeline.load_documents(config, 'train')
    return loaded


def _iterator(documents, tokenizer, data_format, *, batch=4, repeat=True, shuffle=True,
              process_index=0, process_count=1, seed=0):
  fmt = formats.get(data_format)(tokenizer.vocab, SEQ_LEN, {'short_seq_prob': 0.1})
  return reader_lib.ExampleIterator(
      fmt, pipeline.tokenized_view(documents, tokenizer), local_batch_size=batch,
      process_index=process_index, process_count=process_count, seed=seed, shuffle=shuffle,
      repeat=repeat)


def _record_reads(iterator) -> list[int]:
  """Makes `iterator` log the documents its builder reads, in order; returns the log."""
  read, add = [], iterator.builder.add
  iterator.builder.add = lambda index, *args: (read.append(index), add(index, *args))[1]
  return read


@pytest.mark.parametrize('data_format', FORMATS)
@pytest.mark.parametrize('source', SOURCES)
def test_exact_resume(documents, tokenizer, source, data_format):
  docs = documents[source]
  assert len(docs) >= 6
  # 30 batches of 4 cross at least one pass over the shard (document chunks, a row per
  # chunk of 23 tokens, take more).
  compare = 120 if data_format == 'document_chunks' else 30
  original, state = helpers.check_exact_resume(
      lambda: _iterator(docs, tokenizer, data_format), skip=11, compare=compare)
  assert state['reader']['epoch'] < original.get_state()['reader']['epoch']


@pytest.mark.parametrize('data_format', FORMATS)
@pytest.mark.parametrize('source', SOURCES)
def test_processes_read_disjoint_documents_covering_the_split(documents, tokenizer, source,
                                                              data_format):
  docs = documents[source]
  reads = []
  for process in range(3):
    iterator = _iterator(docs, tokenizer, data_format, repeat=False, process_index=process,
                         process_count=3)
    reads.append(_record_reads(iterator))
    batches = list(iterator)
    assert batches and all(b['tokens'].shape == (4, SEQ_LEN) for b in batches)
  assert [len(r) for r in reads] == [len(range(p, len(docs), 3)) for p in range(3)]
  assert sorted(i for r in reads for i in r) == list(range(len(docs)))
  assert all(i % 3 == p for p, r in enumerate(reads) for i in r)


def test_formats_read_the_same_documents_in_the_same_order(documents, tokenizer):
  orders = []
  for data_format in FORMATS:
    iterator = _iterator(documents['text'], tokenizer, data_format, repeat=False)
    orders.append(_record_reads(iterator))
    list(iterator)
  assert orders[0] == orders[1] == orders[2]
  assert sorted(orders[0]) == list(range(len(documents['text']))) and orders[0] != sorted(orders[0])


@pytest.mark.parametrize('data_format', FORMATS)
def test_pretokenized_shards_give_the_on_the_fly_stream(documents, tokenizer, data_format):
  fly = _iterator(documents['text'], tokenizer, data_format, seed=5)
  stored = _iterator(documents['pretokenized'], tokenizer, data_format, seed=5)
  assert len(documents['pretokenized']) == len(documents['text'])
  for _ in range(25):  # more than a pass: random next segments, epochs and all
    want, got = next(fly), next(stored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert fly.stats == stored.stats
  # Same fingerprint too: a run may resume across the two paths.
  stored.set_state(json.loads(json.dumps(fly.get_state())))
  assert documents['pretokenized'][3] == documents['text'][3]


def test_pretokenized_shards_are_memory_mapped_ids_of_each_document_and_sentence(
    documents, tokenizer, corpus_dir):
  from data.formats.pairs import split_sentences  # pylint: disable=import-outside-toplevel
  from data.sources import pretokenized  # pylint: disable=import-outside-toplevel

  stored, texts = documents['pretokenized'], documents['text']
  metadata = pretokenized.read_metadata(str(corpus_dir / 'pretok'))
  shards = metadata['splits']['train']['shards']
  assert len(shards) == 3 and metadata['splits']['train']['documents'] == len(texts)
  tokens = np.load(pretokenized.array_path(str(corpus_dir / 'pretok'), shards[0], 'tokens'),
                   mmap_mode='r')
  assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16  # 320 pieces fit
  total = 0
  for index in range(len(texts)):
    want = tokenizer.encode(texts[index])
    got = stored.document(index)
    assert got.dtype == np.int32 and got.tolist() == list(want)
    sentences = split_sentences(texts[index])
    assert [s.tolist() for s in stored.sentences(index)] == [
        list(tokenizer.encode(s)) for s in sentences]
    total += len(want)
  assert metadata['splits']['train']['tokens'] == total


def test_pretokenized_shards_of_another_version_or_incomplete_are_refused(tmp_path, corpus_dir):
  import shutil  # pylint: disable=import-outside-toplevel
  from data.sources import pretokenized  # pylint: disable=import-outside-toplevel

  copy = tmp_path / 'pretok'
  shutil.copytree(corpus_dir / 'pretok', copy)
  config = data_config(320)
  config.update(source='pretokenized', pretokenized_dir=str(copy))
  metadata = json.loads((copy / 'metadata.json').read_text())
  shard = metadata['splits']['train']['shards'][1]
  (copy / f'{shard}.sentence_index.npy').unlink()
  with pytest.raises(ValueError, match=f'{shard}.sentence_index.npy is missing.*pretokenize'):
    pipeline.load_documents(config, 'train')
  (copy / 'metadata.json').write_text(json.dumps({**metadata, 'version': 1}))
  with pytest.raises(ValueError, match='version 1, this code reads version 2.*pretokenize') as error:
    pipeline.load_documents(config, 'train')
  assert '\n' not in str(error.value)
  # The shards' own tokenizer.model replaced (or lost): the fix is to write them again.
  copy = tmp_path / 'pretok_other_model'
  shutil.copytree(corpus_dir / 'pretok', copy)
  config.pretokenized_dir = str(copy)
  other = tokenizer_lib.load_or_train(data_config(330), None, make_documents(200, seed=9))
  shutil.copy(other.path, copy / 'tokenizer.model')
  stored = tokenizer_lib.load_or_train(config, None, [])
  with pytest.raises(ValueError, match=r'another tokenizer .*: write the shards again with '
                     r'tools/pretokenize.py\.$'):
    pipeline.tokenized_view(pipeline.load_documents(config, 'train'), stored)
  (copy / 'tokenizer.model').unlink()
  with pytest.raises(FileNotFoundError, match=r'^config.data.pretokenized_dir holds no '
                     r'tokenizer.model .*tools/pretokenize.py'):
    tokenizer_lib.load_or_train(config, None, [])
  assert pretokenized.token_dtype(65536) == np.uint16 and pretokenized.token_dtype(65537) == np.uint32


def test_changed_corpus_or_tokenizer_is_a_one_line_error(documents, tokenizer, corpus_dir,
                                                         shared_cache):
  texts = list(documents['text'])
  state = json.loads(json.dumps(_iterator(texts, tokenizer, 'packed').get_state()))
  for changed, what in ((texts[:-1], r'different corpus \(then 40 documents.*now 39'),
                        (['An edited document. Indeed.'] + texts[1:],
                         'different corpus')):
    with pytest.raises(ValueError, match=what) as error:
      _iterator(changed, tokenizer, 'packed').set_state(state)
    assert '\n' not in str(error.value) and 'config.data' in str(error.value)
  other = tokenizer_lib.load_or_train(data_config(330), None, make_documents(200, seed=9))
  with pytest.raises(ValueError, match='different tokenizer') as error:
    _iterator(texts, other, 'packed').set_state(state)
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='another tokenizer .*: leave config.data.tokenizer empty'):
    pipeline.tokenized_view(documents['pretokenized'], other)


@pytest.mark.parametrize('data_format', FORMATS)
def test_exact_pass_covers_every_example_once(corpus_dir, shared_cache, tokenizer, data_format):
  docs = pipeline.load_documents(_config(corpus_dir, shared_cache, 'text'), 'validation')
  fmt = formats.get(data_format)(tokenizer.vocab, SEQ_LEN, {'short_seq_prob': 0.1})
  view = EncodedDocuments(docs, tokenizer.encode)

  def rows(process_index, process_count, batch):
    iterator = reader_lib.ExactPassIterator(fmt, view, local_batch_size=batch,
                                            process_index=process_index,
                                            process_count=process_count, seed=0)
    batches = list(iterator)
    assert len(batches) == iterator.num_batches
    real = [{k: v[r] for k, v in b.items()} for b in batches for r in range(batch)]
    padding = [row for row in real if not row['segment_ids'].any()]
    assert all((row['tokens'] == tokenizer.vocab.pad_id).all() for row in padding)
    return [row for row in real if row['segment_ids'].any()], iterator

  whole, single = rows(0, 1, 5)
  # One pass over every document: each token of the split once (packed), or every pair.
  if data_format == 'packed':
    expected = sum(len(tokenizer.encode(text)) + 2 for text in docs)
    assert sum(int((row['segment_ids'] > 0).sum()) for row in whole) == expected
  assert len(whole) == single.total_examples
  parts = [rows(p, 3, 2) for p in range(3)]
  assert len({iterator.num_batches for _, iterator in parts}) == 1
  merged = [parts[i % 3][0][i // 3] for i in range(len(whole))]
  for got, want in zip(merged, whole):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert sum(len(r) for r, _ in parts) == len(whole)
  again, _ = rows(0, 1, 5)  # deterministic
  assert all((a['tokens'] == b['tokens']).all() for a, b in zip(again, whole))


def test_pair_construction_reads_each_document_a_bounded_number_of_times(tokenizer):
  """Linear in the corpus: one order per epoch, and a bounded number of document reads per
  document read (its own sentences plus at most one random document per pair)."""
  for count in (50, 400):
    texts = make_documents(count, seed=count)
    view = EncodedDocuments(texts, tokenizer.encode)
    reads = collections.Counter()
    sentences = view.sentences
    view.sentences = lambda index: (reads.update([index]), sentences(index))[1]
    fmt = formats.get('sentence_pairs')(tokenizer.vocab, SEQ_LEN, {})
    iterator = reader_lib.ExampleIterator(fmt, view, local_batch_size=8, repeat=False)
    orders = []
    order = iterator.reader.order
    iterator.reader.order = lambda: (orders.append(iterator.reader._order_epoch), order())[1]
    list(iterator)
    stats = iterator.stats
    assert sum(reads.values()) <= count + stats['random_next'] * 1.5
    assert len(set(orders)) == 2  # computed for epoch 0 once (-1 marks 'not yet')
