"""Tests of the data layer: corpora, tokenizer and packing, on CPU and offline."""

from __future__ import annotations

import json
import os
import time

import ml_collections
import numpy as np
import pytest

from data import sources, tokenizer
from data.cache import CACHE_ENV
from data.sources.builtin import stdlib_files
from data.vocab import toy_vocab
from tests import helpers

BUILTIN_FILES = 40


def make_config(tmp_path, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      source='builtin', tfds_name='', text_field='text', data_dir=str(tmp_path / 'tfds'),
      train_files='', validation_files='', train_split='train', validation_split='validation',
      builtin_max_files=BUILTIN_FILES, min_doc_chars=200, tokenizer='', vocab_size=600,
      tokenizer_max_chars=300_000))
  config.update(overrides)
  return config


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
  monkeypatch.setenv(CACHE_ENV, str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def builtin(tmp_path_factory):
  """The builtin corpus of a few stdlib files: (config, train, validation)."""
  root = tmp_path_factory.mktemp('builtin')
  config = make_config(root)
  return config, sources.load_documents(config, 'train'), sources.load_documents(config, 'validation')


@pytest.fixture(scope='module')
def trained(builtin, tmp_path_factory):
  """A tokenizer trained on the builtin corpus: (config, workdir, tokenizer)."""
  config, train, _ = builtin
  workdir = tmp_path_factory.mktemp('workdir')
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(CACHE_ENV, str(workdir.parent / 'trained_cache'))
    return config, workdir, tokenizer.load_or_train(config, str(workdir), train)


# ---------------------------------------------------------------------------------------------
# Corpora.


def test_builtin_corpus_splits_are_non_empty_and_disjoint(builtin):
  _, train, validation = builtin
  train_texts, validation_texts = list(train), list(validation)
  assert len(train_texts) > 50 and len(validation_texts) >= 1
  assert all(isinstance(text, str) and len(text) >= 200 for text in train_texts)
  assert not set(train_texts) & set(validation_texts)
  assert train[-1] == train_texts[-1]
  with pytest.raises(IndexError):
    train[len(train)]


def test_builtin_corpus_is_deterministic_and_cached(builtin, tmp_path):
  config, train, validation = builtin
  other = make_config(tmp_path)  # Another data_dir: a second, independent build.
  assert list(sources.load_documents(other, 'train')) == list(train)
  assert list(sources.load_documents(other, 'validation')) == list(validation)
  dataset_dir = tmp_path / 'tfds' / 'stdlib_docstrings'
  before = {p: p.stat().st_mtime_ns for p in dataset_dir.rglob('*.array_record*')}
  start = time.perf_counter()
  assert len(sources.load_documents(other, 'train')) == len(train)
  assert time.perf_counter() - start < 2.0
  assert before and before == {p: p.stat().st_mtime_ns for p in dataset_dir.rglob('*.array_record*')}


def test_stdlib_files_skip_tests_and_site_packages():
  files = stdlib_files()
  assert len(files) > 300
  for path in files:
    parts = set(path.split(os.sep))
    assert not parts & {'site-packages', 'test', 'tests', 'idlelib', 'lib2to3'}
  assert stdlib_files(5) == files[:5]


def test_local_text_reads_both_formats_and_carves_validation(tmp_path):
  texts = [f'Document number {i} says {"word " * (i % 7)}.' for i in range(60)]
  (tmp_path / 'a.txt').write_text('\n\n  \n'.join(texts[:40]) + '\n')
  (tmp_path / 'b.jsonl').write_text(
      '\n'.join(json.dumps({'text': t, 'id': i}) for i, t in enumerate(texts[40:])) + '\n')
  config = make_config(tmp_path, source='text',
                       train_files=f'{tmp_path}/*.txt, {tmp_path}/*.jsonl')
  train = list(sources.load_documents(config, 'train'))
  validation = list(sources.load_documents(config, 'validation'))
  assert sorted(train + validation) == sorted(texts)
  assert validation and not set(train) & set(validation)
  # A validation file given explicitly is held out of a train glob that matches it too.
  config.validation_files = str(tmp_path / 'b.jsonl')
  assert sorted(sources.load_documents(config, 'train')) == sorted(texts[:40])
  assert sorted(sources.load_documents(config, 'validation')) == sorted(texts[40:])


def test_local_text_errors_name_the_setting(tmp_path):
  config = make_config(tmp_path, source='text', train_files=str(tmp_path / 'missing*.txt'))
  with pytest.raises(FileNotFoundError, match='config.data.train_files'):
    sources.load_documents(config, 'train')
  (tmp_path / 'c.jsonl').write_text('{"body": "no text field"}\n{"body": "again"}\n')
  config.train_files = str(tmp_path / 'c.jsonl')
  with pytest.raises(Exception, match='config.data.text_field'):
    sources.load_documents(config, 'train')


def test_unknown_tfds_name_is_a_one_line_error(tmp_path):
  config = make_config(tmp_path, source='tfds', tfds_name='no_such_dataset/1.0.0')
  with pytest.raises(ValueError) as error:
    sources.load_documents(config, 'train')
  message = str(error.value)
  assert '\n' not in message
  assert 'config.data.tfds_name' in message and 'tfds.list_builders()' in message
  assert not (tmp_path / 'tfds').exists()


def test_bad_source_and_split_are_errors(tmp_path):
  with pytest.raises(ValueError, match='config.data.source'):
    sources.load_documents(make_config(tmp_path, source='web'), 'train')
  with pytest.raises(ValueError, match='split'):
    sources.load_documents(make_config(tmp_path), 'test')


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def test_tokenizer_round_trips_and_has_special_ids(trained):
  _, workdir, tok = trained
  vocab = tok.vocab
  assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
  assert (vocab.cls_id, vocab.sep_id, vocab.mask_id) == (4, 5, 6)
  assert tok.size == vocab.size == 600
  assert vocab.is_special[:7].all() and vocab.is_special.sum() == 7  # Byte pieces are text.
  assert vocab.word_start.sum() > 50
  for text in ['Return the number of items.\n\n    >>> len(x)\n    3',
               '  two  spaces\tand a tab', 'naïve café — 日本語 😀 ﬁ']:
    ids = tok.encode(text)
    assert all(0 <= i < tok.size for i in ids)
    assert tok.decode(ids) == text
  assert tok.encode_batch(['a b', 'c']) == [tok.encode('a b'), tok.encode('c')]
  assert os.path.exists(workdir / 'tokenizer.model')
  # Pieces that spell only whitespace (never masked, as BERT's tokenizer drops whitespace).
  ids = tok.encode('one\n\ttwo  three')
  blank = [not tok.decode([i]).strip() for i in ids]
  assert any(blank) and [bool(vocab.is_whitespace[i]) for i in ids] == blank


def test_tokenizer_resumes_from_workdir(trained):
  config, workdir, tok = trained
  start = time.perf_counter()
  again = tokenizer.load_or_train(config, str(workdir), ['unrelated text'] * 10)
  assert time.perf_counter() - start < 1.0
  assert again.vocab == tok.vocab and again.path == str(workdir / 'tokenizer.model')


def test_second_training_call_uses_the_cache(tmp_path):
  config = make_config(tmp_path, builtin_max_files=0, vocab_size=400)
  texts = [f'Line {i}: the quick brown fox jumps over the lazy dog number {i % 13}.' * 3
           for i in range(400)]
  first = tokenizer.load_or_train(config, str(tmp_path / 'run1'), texts)
  cache_dir = tmp_path / 'cache' / 'tokenizers'
  (model,) = cache_dir.glob('*.model')
  mtime = model.stat().st_mtime_ns
  start = time.perf_counter()
  second = tokenizer.load_or_train(config, str(tmp_path / 'run2'), texts)
  assert time.perf_counter() - start < 0.5
  assert model.stat().st_mtime_ns == mtime
  assert second.vocab == first.vocab
  assert (tmp_path / 'run2' / 'tokenizer.model').read_bytes() == model.read_bytes()
  # Different text, different model.
  tokenizer.load_or_train(config, None, texts[::-1])
  assert len(list(cache_dir.glob('*.model'))) == 2


def test_missing_user_tokenizer_is_a_one_line_error(tmp_path):
  config = make_config(tmp_path, tokenizer=str(tmp_path / 'nope.model'))
  with pytest.raises(FileNotFoundError) as error:
    tokenizer.load_or_train(config, None, ['text'])
  assert 'config.data.tokenizer' in str(error.value) and '\n' not in str(error.value)


def test_user_tokenizer_is_loaded(trained, tmp_path):
  config, workdir, tok = trained
  user = make_config(tmp_path, tokenizer=str(workdir / 'tokenizer.model'))
  assert tokenizer.load_or_train(user, None, []).vocab == tok.vocab


# ---------------------------------------------------------------------------------------------
# Packing.

VOCAB = toy_vocab(64)


def toy_tokenize(text: str) -> list[int]:
  return [7 + ord(c) % 57 for c in text]


def toy_documents(count: int = 37) -> list[str]:
  rng = np.random.default_rng(0)
  return ['' if i % 11 == 5 else ''.join(chr(97 + j) for j in rng.integers(0, 26, rng.integers(1, 40)))
          for i in range(count)]


def packed(documents, **kwargs):
  settings = dict(seq_len=16, local_batch_size=3, seed=1, shuffle=True, repeat=False)
  settings.update(kwargs)
  return helpers.packed_iterator(documents, toy_tokenize, VOCAB, **settings)


def encoded(text: str) -> list[int]:
  return [VOCAB.bos_id] + toy_tokenize(text) + [VOCAB.eos_id]


def test_packing_keeps_every_token_once_in_order():
  documents = toy_documents()
  iterator = packed(documents, shuffle=False)
  batches = list(iterator)
  tokens = np.concatenate([b['tokens'].reshape(-1) for b in batches])
  segments = np.concatenate([b['segment_ids'].reshape(-1) for b in batches])
  expected = [t for text in documents if text for t in encoded(text)]
  assert tokens[segments > 0].tolist() == expected
  # Padding only at the very end of the pass.
  assert (segments[len(expected):] == 0).all() and (segments[:len(expected)] > 0).all()
  assert (tokens[len(expected):] == VOCAB.pad_id).all()
  assert iterator.stats == {'documents': 37, 'skipped_empty': documents.count('')} == {
      'documents': 37, 'skipped_empty': 3}
  for batch in batches:
    assert set(batch) == {'tokens', 'segment_ids', 'positions'}
    assert all(v.dtype == np.int32 and v.shape == (3, 16) for v in batch.values())


def test_packing_shuffled_pass_is_a_permutation_of_documents():
  documents = toy_documents()
  batches = list(packed(documents, shuffle=True))
  tokens = np.concatenate([b['tokens'][b['segment_ids'] > 0] for b in batches]).tolist()
  pieces, current = [], []
  for token in tokens:
    current.append(token)
    if token == VOCAB.eos_id:
      pieces.append(current)
      current = []
  assert sorted(pieces) == sorted(encoded(text) for text in documents if text)
  assert pieces != [encoded(text) for text in documents if text]


def test_segment_ids_and_positions():
  batches = list(packed(toy_documents(), seq_len=24))
  for batch in batches:
    for tokens, segments, positions in zip(batch['tokens'], batch['segment_ids'],
                                           batch['positions']):
      real = segments > 0
      assert segments[0] == 1 or not real.any()
      assert (np.diff(segments[real]) >= 0).all() and (np.diff(segments[real]) <= 1).all()
      for segment in np.unique(segments[real]):
        where = segments == segment
        assert positions[where].tolist() == list(range(where.sum()))
        assert where.nonzero()[0].tolist() == list(range(where.nonzero()[0][0],
                                                          where.nonzero()[0][-1] + 1))
      # A segment that does not start the window starts a document with bos.
      starts = np.flatnonzero(real & (positions == 0))
      assert all(tokens[i] == VOCAB.bos_id for i in starts if i > 0)
      assert (positions[~real] == 0).all()


def test_shards_partition_documents():
  documents = [f'document {i}' for i in range(50)]
  seen = []
  for index in range(3):
    texts = []
    iterator = helpers.packed_iterator(
        documents, lambda text, texts=texts: texts.append(text) or toy_tokenize(text), VOCAB,
        seq_len=16, local_batch_size=2, process_index=index, process_count=3, repeat=False)
    list(iterator)
    assert sorted(texts) == sorted(documents[index::3])
    seen.extend(texts)
  assert sorted(seen) == sorted(documents)


def test_order_depends_on_seed_and_epoch():
  documents = [f'doc {i}' for i in range(20)]

  def first_tokens(seed, batches):
    iterator = packed(documents, seed=seed, repeat=True, seq_len=8, local_batch_size=1)
    return [next(iterator)['tokens'].tolist() for _ in range(batches)]

  assert first_tokens(0, 30) == first_tokens(0, 30)
  assert first_tokens(0, 30) != first_tokens(1, 30)
  epoch_batches = sum(len(encoded(d)) for d in documents) // 8  # Documents 7..8 tokens long.
  run = first_tokens(0, 3 * epoch_batches)
  assert run[:epoch_batches] != run[epoch_batches:2 * epoch_batches]


def test_get_state_set_state_resumes_exactly():
  documents = toy_documents(23)
  original, state = helpers.check_exact_resume(
      lambda: packed(documents, repeat=True, seq_len=16, local_batch_size=2), skip=7,
      compare=40)
  assert original.get_state()['reader']['epoch'] >= 2  # the compared batches span several epochs
  with pytest.raises(ValueError, match='seed'):
    packed(documents, seed=2).set_state(state)


def test_finite_resume_and_end():
  documents = toy_documents()
  reference = list(packed(documents))
  iterator = packed(documents)
  head = [next(iterator) for _ in range(2)]
  fresh = packed(documents)
  fresh.set_state(iterator.get_state())
  tail = list(fresh)
  assert len(head) + len(tail) == len(reference)
  for got, want in zip(head + tail, reference):
    np.testing.assert_array_equal(got['tokens'], want['tokens'])
  with pytest.raises(StopIteration):
    next(fresh)


def test_packing_errors():
  with pytest.raises(ValueError, match='processes'):
    packed(['a'], process_index=1, process_count=2)
  with pytest.raises(ValueError, match='encodes to nothing'):
    next(packed(['', ''], repeat=True))


def test_packing_real_corpus(builtin, trained):
  _, train, _ = builtin
  _, _, tok = trained
  iterator = helpers.packed_iterator(train, tok.encode, tok.vocab, seq_len=128,
                                     local_batch_size=4, seed=0, shuffle=True, repeat=True)
  rows = [(tokens, segments) for _ in range(5) for tokens, segments in
          zip(*(lambda b: (b['tokens'], b['segment_ids']))(next(iterator)))]
  starts = [tokens[segments == 2] for tokens, segments in rows if (segments == 2).any()]
  assert starts and all(tokens[0] == tok.vocab.bos_id for tokens in starts)
  text = tok.decode(starts[0][1:])
  assert text and any(document.startswith(text) for document in train)


def test_packing_across_documents_makes_one_segment_per_window():
  """GPT-2 / RoBERTa FULL-SENTENCES packing: the same tokens in the same windows, but each
  window is one segment with positions 0..n-1 and its real-token count in `lengths`."""
  documents = toy_documents()
  per_document = list(packed(documents, shuffle=False))
  across = list(packed(documents, shuffle=False, attend_across_documents=True))
  assert len(across) == len(per_document)
  for a, b in zip(across, per_document):
    assert set(a) == {'tokens', 'segment_ids', 'positions', 'lengths'}
    np.testing.assert_array_equal(a['tokens'], b['tokens'])
    real = b['segment_ids'] > 0
    np.testing.assert_array_equal(a['segment_ids'], real.astype(np.int32))
    np.testing.assert_array_equal(a['lengths'], real.sum(axis=1))
    for row, length in zip(a['positions'], a['lengths']):
      assert row[:length].tolist() == list(range(length)) and not row[length:].any()
  assert (across[-1]['lengths'] < 16).any()  # the last, padded window
