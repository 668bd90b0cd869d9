"""Sources and tokenizer settings: WikiText-style document splits, user symbols, line breaks
as word starts, SentencePiece errors in one line, and no reuse of a failed run's tokenizer.
Also the sentence-pair fidelity to BERT's builder: no document loses its last sentence, and
the one discovery rule of the registries (every module of a plugin folder but its helpers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data import discovery, formats, pipeline, reader as reader_lib
from data import tokenizer as tokenizer_lib
from data.config import data_config
from data.tokens import EncodedDocuments

WIKI = ''' = Valkyria Chronicles III = 

 Senjō no Valkyria 3 is a tactical role @-@ playing game . It was released in 2011 .

 = = Gameplay = = 

 The game <unk> the first two games . 

 = Tower Building = 

 The tower is tall . It is <unk> old .
'''
TEXTS = [f'Line {i}: the quick brown fox.\nThe lazy dog {i % 13} sleeps <unk> here.\n\tdone.'
         for i in range(300)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('PRETRAINING_OBJECTIVES_CACHE', str(tmp_path / 'cache'))


def _text_config(tmp_path, **overrides):
  config = data_config(400)
  config.update(source='text', data_dir=str(tmp_path / 'tfds'),
                train_files=str(tmp_path / 'wiki.train.txt'),
                validation_files=str(tmp_path / 'wiki.valid.txt'), **overrides)
  return config


@pytest.mark.parametrize('mode, expected', [
    ('blank_lines', 6), ('file', 1), ('heading', 2)])
@pytest.mark.parametrize('newline', ['\n', '\r\n'])
def test_local_text_document_modes(tmp_path, mode, expected, newline):
  (tmp_path / 'wiki.train.txt').write_bytes(WIKI.replace('\n', newline).encode())
  (tmp_path / 'wiki.valid.txt').write_bytes(WIKI.replace('\n', newline).encode())
  documents = list(pipeline.load_documents(_text_config(tmp_path, text_documents=mode), 'train'))
  assert len(documents) == expected
  documents = [document.replace('\r\n', '\n') for document in documents]
  if mode == 'heading':
    first, second = sorted(documents, key=len, reverse=True)
    assert first.startswith(' = Valkyria Chronicles III = ') and ' = = Gameplay = = ' in first
    assert second.startswith(' = Tower Building = ') and second.endswith('old .')
  if mode == 'file':
    assert documents == [WIKI.rstrip()]


def test_bad_document_mode_and_heading_are_one_line(tmp_path):
  (tmp_path / 'wiki.train.txt').write_text(WIKI)
  with pytest.raises(ValueError, match='config.data.text_documents'):
    pipeline.load_documents(_text_config(tmp_path, text_documents='pages'), 'train')
  with pytest.raises(ValueError, match='config.data.text_heading'):
    pipeline.load_documents(_text_config(tmp_path, text_documents='heading', text_heading='('),
                            'train')


def test_user_symbols_model_type_and_line_breaks(tmp_path):
  config = data_config(400)
  config.tokenizer_user_symbols = '<unk>'
  tok = tokenizer_lib.load_or_train(config, None, TEXTS)
  pieces = [tok._sp.IdToPiece(i) for i in tok.encode(TEXTS[5])]  # pylint: disable=protected-access
  assert '<unk>' in pieces and pieces.count('\n') == 2 and '\t' in pieces
  assert not any('\n' in p and p != '\n' for p in pieces)
  assert tok.decode(tok.encode(TEXTS[5])) == TEXTS[5]
  vocab = tok.vocab
  newline = tok.encode('\n')[-1]
  assert vocab.word_start[newline] and not vocab.is_special[newline]
  assert not vocab.is_special[tok._sp.PieceToId('<unk>')]  # pylint: disable=protected-access
  assert vocab.is_special[:7].all() and vocab.is_special.sum() == 7
  # The piece after a line break begins a new word: the line break starts it.
  ids = tok.encode('fox.\nThe')
  words = np.cumsum(vocab.word_start[ids])
  assert words[[tok._sp.IdToPiece(i) for i in ids].index('\n')] > words[0]  # pylint: disable=protected-access
  bpe = data_config(400)
  bpe.tokenizer_model_type = 'bpe'
  bpe_tok = tokenizer_lib.load_or_train(bpe, None, TEXTS)
  assert bpe_tok.decode(bpe_tok.encode(TEXTS[7])) == TEXTS[7]
  assert bpe_tok._sp.encode(TEXTS[7]) != tok._sp.encode(TEXTS[7])  # pylint: disable=protected-access
  bpe.tokenizer_model_type = 'wordpiece'
  with pytest.raises(ValueError, match='config.data.tokenizer_model_type'):
    tokenizer_lib.load_or_train(bpe, None, TEXTS)


def test_sentencepiece_errors_are_one_line(tmp_path):
  # 600 distinct characters, each as common as the others: more than 300 pieces can hold.
  texts = [''.join(chr(0x4e00 + (i * 7 + k) % 600) for k in range(600)) for i in range(20)]
  with pytest.raises(ValueError) as error:
    tokenizer_lib.load_or_train(data_config(300), None, texts)
  message = str(error.value)
  assert '\n' not in message and 'config.data.vocab_size=300' in message
  assert 'Vocabulary size is smaller than required_chars' in message


def test_failed_runs_tokenizer_is_not_reused_with_other_settings(tmp_path):
  workdir = tmp_path / 'run'
  first = tokenizer_lib.load_or_train(data_config(400), str(workdir), TEXTS)
  assert first.size <= 400
  # The run failed before its first checkpoint; the next one asks for another vocabulary.
  tokenizer_lib.load_or_train(data_config(420), str(workdir), TEXTS)
  assert json.loads((workdir / 'tokenizer.json').read_text())['vocab_size'] == 420
  retrained = tokenizer_lib.load_or_train(data_config(420), str(workdir), ['unrelated'] * 3)
  assert retrained.vocab.size > 7  # the same settings resume the run's model
  (workdir / 'checkpoints' / '100').mkdir(parents=True)
  with pytest.raises(ValueError, match=r"vocab_size 420 \(config: 400\)"):
    tokenizer_lib.load_or_train(data_config(400), str(workdir), TEXTS)


@pytest.mark.parametrize('data_format', ['sentence_pairs', 'sentence_order_pairs'])
def test_pairs_keep_every_documents_last_sentence(data_format):
  """Every sentence id below is unique; with pairs long enough that nothing is truncated, SOP
  uses every sentence of every multi-sentence document once, and NSP uses every sentence."""
  from data.vocab import toy_vocab  # pylint: disable=import-outside-toplevel

  vocab = toy_vocab(4000)
  rng = np.random.default_rng(0)
  documents, next_id = [], 7
  for _ in range(150):
    sentences = []
    for _ in range(int(rng.integers(2, 9))):
      length = int(rng.integers(1, 5))
      sentences.append(' '.join(str(next_id + k) for k in range(length)) + '.')
      next_id += length
    documents.append(' '.join(sentences))
  encode = lambda text: [int(w.rstrip('.')) for w in text.split()]
  fmt = formats.get(data_format)(vocab, 128, {'short_seq_prob': 0.3})
  iterator = reader_lib.ExampleIterator(fmt, EncodedDocuments(documents, encode),
                                        local_batch_size=16, repeat=False, shuffle=True)
  seen = []
  for batch in iterator:
    tokens = batch['tokens'][batch['segment_ids'] > 0]
    seen += [int(t) for t in tokens if t >= 7]
  counts = np.bincount(seen, minlength=next_id)[7:]
  if data_format == 'sentence_order_pairs':
    assert (counts == 1).all()  # each sentence exactly once
  else:  # true continuations once each; random segments may repeat a sentence
    assert (counts >= 1).all()
  assert abs(iterator.stats['random_next_fraction'] - 0.5) < 0.1


def test_a_read_only_cache_is_read_and_an_unbuilt_one_is_a_one_line_error(tmp_path, monkeypatch):
  (tmp_path / 'wiki.train.txt').write_text(WIKI * 3, encoding='utf-8')
  (tmp_path / 'wiki.valid.txt').write_text(WIKI, encoding='utf-8')
  config = _text_config(tmp_path)
  built = list(pipeline.load_documents(config, 'train'))

  import os  # pylint: disable=import-outside-toplevel
  from data.sources import store  # pylint: disable=import-outside-toplevel

  def read_only(*args, **kwargs):
    raise PermissionError(30, 'Read-only file system')

  monkeypatch.setattr(os, 'makedirs', read_only)  # as on a read-only mount (root ignores modes)
  monkeypatch.setattr(store, '_writable', lambda directory: False)
  assert list(pipeline.load_documents(config, 'train')) == built
  (tmp_path / 'other.txt').write_text(WIKI, encoding='utf-8')
  with pytest.raises(ValueError, match='not writable: set config.data.data_dir') as error:
    other = _text_config(tmp_path)
    other.train_files = str(tmp_path / 'other.txt')
    pipeline.load_documents(other, 'train')
  assert len(str(error.value).splitlines()) == 1


def test_an_unprepared_tfds_dataset_offline_fails_at_once(tmp_path, monkeypatch):
  from data.sources import tfds as tfds_source  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(tfds_source, '_online', lambda: False)
  config = data_config(400)
  config.update(source='tfds', tfds_name='lm1b', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='not prepared in .* cannot reach the internet'):
    pipeline.load_documents(config, 'train')


def test_held_out_documents_follow_their_text_not_their_path_or_position(tmp_path):
  """Without validation files, the same corpus in another directory holds out the same
  documents, a paragraph inserted in front moves none of the others, and copies of a document
  share its split."""
  paragraphs = [f'Paragraph {i} of the corpus. It says {i * 7 % 31} things.' for i in range(400)]
  paragraphs += [paragraphs[5]] * 3  # copies

  def held_out(folder, texts):
    folder.mkdir()
    (folder / 'corpus.txt').write_text('\n\n'.join(texts) + '\n')
    config = data_config(400)
    config.update(source='text', data_dir=str(tmp_path / f'tfds_{folder.name}'),
                  train_files=str(folder / 'corpus.txt'), validation_files='')
    train = list(pipeline.load_documents(config, 'train'))
    validation = list(pipeline.load_documents(config, 'validation'))
    assert sorted(train + validation) == sorted(texts)  # every document in one split
    assert validation.count(paragraphs[5]) in (0, 4)  # the document and its copies together
    return set(validation)

  first = held_out(tmp_path / 'here', paragraphs)
  assert 4 <= len(first) <= 24  # about 3% of 400
  assert held_out(tmp_path / 'elsewhere', paragraphs) == first
  opening = 'A new opening paragraph. It is first.'
  assert held_out(tmp_path / 'inserted', [opening] + paragraphs) - {opening} == first


def test_discovery_imports_every_module_of_the_folder_but_the_skipped(tmp_path, monkeypatch):
  package = tmp_path / 'plugins_under_test'
  package.mkdir()
  (package / '__init__.py').write_text('FOUND = []\n')
  for name in ('alpha', 'beta', 'helper'):
    (package / f'{name}.py').write_text(
        f'import plugins_under_test\nplugins_under_test.FOUND.append({name!r})\n')
  (package / 'nested').mkdir()
  (package / 'nested' / '__init__.py').write_text('raise ImportError("a subpackage is no plugin")\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  assert discovery.import_modules('plugins_under_test', skip=('helper',)) == ['alpha', 'beta']
  assert discovery.import_modules('plugins_under_test', skip=('helper',)) == ['alpha', 'beta']
  assert sys.modules['plugins_under_test'].FOUND == ['alpha', 'beta']  # each imported once
  for name in ('plugins_under_test', 'plugins_under_test.alpha', 'plugins_under_test.beta'):
    monkeypatch.delitem(sys.modules, name)


def test_every_plugin_file_is_found_and_configs_load_without_tfds_or_jax():
  code = ('import json, sys; from configs import bert, clm; bert.get_config(); clm.get_config(); '
          'from data import formats, sources; from downstream.tasks import registry as tasks; '
          'from launching import backends; '
          'print(json.dumps([sources.names(), formats.names(), backends.names(), tasks.names(), '
          '"tensorflow_datasets" in sys.modules, "jax" in sys.modules]))')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                          check=True)
  found_sources, found_formats, found_backends, found_tasks, tfds_loaded, jax_loaded = (
      json.loads(result.stdout))
  assert found_sources == ['builtin', 'pretokenized', 'text', 'tfds']
  assert found_formats == ['document_chunks', 'packed', 'sentence_order_pairs', 'sentence_pairs']
  assert found_backends == ['gke', 'local', 'slurm', 'tpu_vm']
  assert len(found_tasks) == 13 and {'local', 'glue/sst2', 'stdlib_qa'} <= set(found_tasks)
  assert not tfds_loaded and not jax_loaded
