"""Bad documents end to end: repaired or skipped, counted and logged; empty splits explained.

The corpus holds raw invalid UTF-8, NUL and other control characters, empty documents, a
malformed JSON line, one-sentence documents and a document a hundred windows long.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import train
from configs import bert
from data import sources, tokenizer as tokenizer_lib
from tests.helpers import packed_iterator, read_metrics, small_run_config

WORDS = ('river stone cloud garden window paper silver market letter engine forest bridge '
         'candle winter number travel orange quiet simple yellow').split()
GOOD = [f'The {a} met the {b} near the {c}. It was a {d} day. Then the {e} left.'
        for a, b, c, d, e in zip(WORDS, WORDS[5:], WORDS[10:], WORDS[15:], WORDS[3:])][:4]
LONG = ' '.join(WORDS[i * 7 % len(WORDS)] for i in range(3000))  # one run-on sentence

# What the corpus build should report for the files `write_corpus` makes.
TRAIN_CLEANING = {'documents': 14, 'skipped_empty': 3, 'skipped_bad_json': 1,
                  'invalid_utf8': 5, 'invalid_utf8_documents': 3,
                  'control_chars': 4, 'control_chars_documents': 1}
SINGLE_SENTENCE = 5  # four short documents and LONG


def write_corpus(folder) -> None:
  paragraphs = [text.encode() for text in GOOD] + [
      b'Bad bytes \xff\xfe here. And a broken \xc3\x28 pair.',  # 3 invalid sequences
      b'Nul\x00, bell\x07 and escape\x1b here.\x0cThe form feed broke the line.',  # 4 controls
      b'\x00\x01\x02',  # nothing left: an empty document
      *(f'Just one sentence number {i}'.encode() for i in range(4)),
      LONG.encode()]
  (folder / 'train.txt').write_bytes(b'\n\n'.join(paragraphs) + b'\n')
  lines = [b'{"text": ""}', b'{"text": "  \\n  "}',  # empty
           b'{"text": "A lone \\ud800 surrogate. It becomes U+FFFD."}',  # 1 invalid
           b'{"text": "A raw \xff byte. Replaced too."}',  # 1 invalid
           b'{"text": "The json line was fine. Another sentence."}',
           b'{"text": "cut off']  # malformed
  (folder / 'train.jsonl').write_bytes(b'\n'.join(lines))
  (folder / 'valid.txt').write_bytes(
      b'\n\n'.join([GOOD[0].encode(), GOOD[1].encode(), b'\x00\x00',
                    b'Valid one. Valid two.', b'Only one sentence']) + b'\n')
  (folder / 'blank.txt').write_bytes(b'\x00\n\n   \n\n\x07\x1b\n')


@pytest.fixture(autouse=True)
def private_cache(shared_cache, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', shared_cache)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp('bad_corpus')
  write_corpus(folder)
  return folder


def bert_config(cache, corpus, **overrides):
  settings = {'total_steps': 2, 'log_every': 1, 'eval_steps': 0, 'checkpoint_every': 100,
              'data.source': 'text',
              'data.train_files': f'{corpus}/train.*',
              'data.validation_files': f'{corpus}/valid.txt'}
  settings.update(overrides)
  return small_run_config(bert.get_config('tiny'), cache, **settings)


@pytest.mark.slow
def test_bad_documents_are_counted_and_logged(tmp_path, shared_cache, corpus, capsys):
  workdir = str(tmp_path / 'run')
  train.run(bert_config(shared_cache, corpus), workdir)
  output = capsys.readouterr().out

  with open(os.path.join(workdir, 'run.json'), encoding='utf-8') as f:
    assert json.load(f)['data'] == {'train': TRAIN_CLEANING}  # validation: only when evaluating
  assert ('Data: train 14 documents (3 empty documents skipped, 1 malformed JSON line skipped, '
          '5 invalid UTF-8 sequences replaced by U+FFFD in 3 documents, 4 control characters '
          'removed from 1 document)\n') in output

  trains = read_metrics(workdir)
  assert [(r['split'], r['step']) for r in trains] == [('train', 1), ('train', 2)]
  # One pass over the train documents makes at most 13 pairs, fewer than the 16 of two steps,
  # so by step 2 every document has been read and the one-sentence ones skipped and counted.
  last = trains[-1]
  assert last['data_documents'] >= TRAIN_CLEANING['documents']
  assert last['data_skipped_single_sentence'] >= SINGLE_SENTENCE
  assert last['data_pairs'] >= 16 and np.isfinite(last['loss'])
  assert f'{int(last["data_skipped_single_sentence"])} docs skipped | ' in output


def test_stored_documents_are_clean_and_long_ones_are_packed_whole(tmp_path, shared_cache,
                                                                   corpus):
  config = bert_config(shared_cache, corpus)
  documents = sources.load_documents(config.data, 'train')
  texts = list(documents)
  assert documents.cleaning == TRAIN_CLEANING and len(texts) == 14
  validation = sources.load_documents(config.data, 'validation')
  assert validation.cleaning == {'documents': 4, 'skipped_empty': 1}
  assert not any(c in text for text in texts for c in '\x00\x01\x07\x1b\x0c\ud800')
  assert sum(text.count('\ufffd') for text in texts) == 5
  assert 'escape here.\nThe form feed broke the line.' in ''.join(texts)
  tokenizer = tokenizer_lib.load_or_train(config.data, str(tmp_path), texts)
  iterator = packed_iterator(documents, tokenizer.encode, tokenizer.vocab, seq_len=64,
                             local_batch_size=4, shuffle=False, repeat=False)
  batches = list(iterator)
  tokens = np.concatenate([b['tokens'][b['segment_ids'] > 0] for b in batches]).tolist()
  vocab = tokenizer.vocab
  expected = [t for text in texts for t in [vocab.bos_id, *tokenizer.encode(text), vocab.eos_id]]
  assert tokens == expected  # nothing dropped or cut, the long document included
  assert len(tokenizer.encode(LONG)) > 20 * 64
  assert iterator.stats == {'documents': 14, 'skipped_empty': 0}


def test_empty_validation_split_is_one_line_unless_evaluation_is_off(tmp_path, shared_cache,
                                                                    corpus):
  config = bert_config(shared_cache, corpus, eval_steps=1,
                       **{'data.validation_files': f'{corpus}/blank.txt'})
  with pytest.raises(train.SetupError) as error:
    train.run(config, str(tmp_path / 'eval_on'))
  message = str(error.value)
  assert 'config.data.validation_files' in message and 'blank.txt' in message
  assert 'config.eval_steps=0' in message and '2 empty documents skipped' in message
  config.eval_steps = 0
  run = train.setup(config, str(tmp_path / 'eval_off'))  # trains without evaluation
  assert run.data_cleaning == {'train': TRAIN_CLEANING}


def test_empty_train_split_and_pairless_validation_are_one_line(tmp_path, shared_cache, corpus):
  config = bert_config(shared_cache, corpus, **{'data.train_files': f'{corpus}/blank.txt',
                                                'data.validation_files': ''})
  with pytest.raises(train.SetupError, match=r'config\.data\.train_files \(.*blank\.txt\) holds '
                     r'no non-empty documents \(2 empty documents skipped\)'):
    train.run(config, str(tmp_path / 'no_train'))
  # Sentence pairs from one-sentence documents only: no batch, said before compiling.
  (tmp_path / 'single.txt').write_text('One sentence only\n\nAnother lonely line\n')
  config = bert_config(shared_cache, corpus, eval_steps=1,
                       **{'data.validation_files': str(tmp_path / 'single.txt')})
  with pytest.raises(train.SetupError, match=r'validation split gives no batch.*two sentences.*'
                     r'config\.eval_steps=0'):
    train.run(config, str(tmp_path / 'no_pairs'))


def test_invalid_bytes_of_other_json_fields_are_not_counted_against_the_text(tmp_path):
  """Only the text field's invalid UTF-8 counts (a literal U+FFFD in it is not a repair)."""
  from data.sources import text as text_source  # pylint: disable=import-outside-toplevel
  path = tmp_path / 'records.jsonl'
  path.write_bytes(b'\n'.join([
      b'{"title": "caf\xe9 \xff", "text": "Clean text. Its title is broken."}',
      b'{"text": "Kept \xef\xbf\xbd literal and \xff\xfe raw.", "id": "\xc3\x28"}']))
  documents = list(text_source.read_local_documents(str(path)))
  assert [repairs['invalid_utf8'] for _, repairs in documents] == [0, 2]
  assert documents[1][0] == 'Kept \ufffd literal and \ufffd\ufffd raw.'
